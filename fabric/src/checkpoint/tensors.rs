//! tch tensors to and from safetensors files.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use safetensors::{Dtype, SafeTensors, View};
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};

/// A tensor's bytes on the CPU, contiguous, little-endian.
pub(crate) struct HostTensor {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl View for &HostTensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// The safetensors dtype of a tch kind.
pub(crate) fn dtype_of(kind: Kind) -> Option<Dtype> {
    Some(match kind {
        Kind::Bool => Dtype::BOOL,
        Kind::Uint8 => Dtype::U8,
        Kind::Int8 => Dtype::I8,
        Kind::Int16 => Dtype::I16,
        Kind::Int => Dtype::I32,
        Kind::Int64 => Dtype::I64,
        Kind::Half => Dtype::F16,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Float => Dtype::F32,
        Kind::Double => Dtype::F64,
        _ => return None,
    })
}

/// The tch kind of a safetensors dtype.
pub(crate) fn kind_of(dtype: Dtype) -> Option<Kind> {
    Some(match dtype {
        Dtype::BOOL => Kind::Bool,
        Dtype::U8 => Kind::Uint8,
        Dtype::I8 => Kind::Int8,
        Dtype::I16 => Kind::Int16,
        Dtype::I32 => Kind::Int,
        Dtype::I64 => Kind::Int64,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F32 => Kind::Float,
        Dtype::F64 => Kind::Double,
        _ => return None,
    })
}

/// Copies `tensor` to the host.
pub(crate) fn to_host(name: &str, tensor: &Tensor) -> Result<HostTensor> {
    let dtype = dtype_of(tensor.kind()).ok_or_else(|| {
        Error::InvalidArgument(format!(
            "`{name}` has kind {:?}, which safetensors cannot hold",
            tensor.kind()
        ))
    })?;
    let host = tensor
        .f_detach()?
        .f_to_device(Device::Cpu)?
        .f_contiguous()?;
    let numel = host.numel();
    let mut data = vec![0u8; numel * dtype.bitsize() / 8];
    host.f_copy_data_u8(&mut data, numel)?;
    let shape = host.size().iter().map(|&d| d as usize).collect();
    Ok(HostTensor { dtype, shape, data })
}

/// A safetensors file's bytes holding `tensors`, with `{"format": "pt"}` as
/// metadata (what `safetensors.torch.save_file` writes).
pub(crate) fn serialize(tensors: &BTreeMap<String, HostTensor>) -> Result<Vec<u8>> {
    let metadata = HashMap::from([("format".to_owned(), "pt".to_owned())]);
    safetensors::serialize(tensors.iter(), Some(metadata))
        .map_err(|e| Error::InvalidArgument(format!("safetensors: {e}")))
}

/// A tensor read from a file: its kind, shape and bytes.
#[derive(Debug)]
pub(crate) struct FileTensor<'a> {
    pub kind: Kind,
    pub shape: Vec<i64>,
    pub data: &'a [u8],
}

impl FileTensor<'_> {
    /// A tensor with this content on `device`.
    pub(crate) fn to_tensor(&self, device: Device) -> Result<Tensor> {
        Ok(Tensor::f_from_data_size(self.data, &self.shape, self.kind)?.f_to_device(device)?)
    }
}

/// The tensors of a safetensors file, by name; an error string says why
/// the bytes are not a readable safetensors file.
pub(crate) fn parse(bytes: &[u8]) -> std::result::Result<BTreeMap<String, FileTensor<'_>>, String> {
    let file = SafeTensors::deserialize(bytes).map_err(|e| e.to_string())?;
    let mut tensors = BTreeMap::new();
    for (name, view) in file.tensors() {
        let kind = kind_of(view.dtype()).ok_or_else(|| {
            format!(
                "`{name}` has dtype {:?}, which fabric does not load",
                view.dtype()
            )
        })?;
        let shape = view.shape().iter().map(|&d| d as i64).collect();
        tensors.insert(
            name,
            FileTensor {
                kind,
                shape,
                data: view.data(),
            },
        );
    }
    Ok(tensors)
}
