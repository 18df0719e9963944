//! [`PinMemory`]: batches in page-locked host memory, for fast copies to a
//! CUDA device.

use tch::{Device, TchError, Tensor};

/// Batches that can be put in page-locked ("pinned") host memory, as
/// PyTorch's `pin_memory=True`: a copy from pinned memory to a CUDA device
/// is faster, and does not make the host wait. Implemented for `Tensor` and
/// for tuples, vectors, arrays and options of it, as
/// [`ToDevice`](crate::ToDevice) is; for a batch type of your own, pin each
/// of its tensors.
///
/// [`DataLoader::pin_memory`](super::DataLoader::pin_memory) needs it.
///
/// ```
/// use fabric::data::PinMemory;
/// use tch::{Device, TchError, Tensor};
///
/// struct Images { pixels: Tensor, labels: Tensor }
///
/// impl PinMemory for Images {
///     fn try_pin_memory(self, device: Device) -> Result<Self, TchError> {
///         Ok(Images { pixels: self.pixels.try_pin_memory(device)?, labels: self.labels.try_pin_memory(device)? })
///     }
///     fn try_to_device_non_blocking(self, device: Device) -> Result<Self, TchError> {
///         Ok(Images {
///             pixels: self.pixels.try_to_device_non_blocking(device)?,
///             labels: self.labels.try_to_device_non_blocking(device)?,
///         })
///     }
/// }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be pinned in host memory",
    note = "`PinMemory` is implemented for `Tensor` and for tuples, vectors, arrays and options of it; implement it for `{Self}` by pinning each tensor"
)]
pub trait PinMemory: Sized {
    /// The same data in page-locked host memory, for copies to `device` (a
    /// CUDA device). Tensors that are not on the CPU are returned as they
    /// are; those on the CPU are copied, even if already pinned. libtorch fails when it has no CUDA backend: fabric calls this
    /// only for loaders whose run is on a CUDA device.
    fn try_pin_memory(self, device: Device) -> Result<Self, TchError>;

    /// The same data on `device`, copied without making the host wait when
    /// the data is pinned (`non_blocking`, as Lightning moves batches to
    /// CUDA devices); already there, it is returned as is.
    fn try_to_device_non_blocking(self, device: Device) -> Result<Self, TchError>;
}

impl PinMemory for Tensor {
    fn try_pin_memory(self, device: Device) -> Result<Self, TchError> {
        if self.device() == Device::Cpu {
            // `pin_memory` itself warns that its device argument is
            // deprecated, and tch always passes one; `_pin_memory` is the
            // operation it runs on a tensor not pinned yet.
            self.f_internal_pin_memory(device)
        } else {
            Ok(self)
        }
    }

    fn try_to_device_non_blocking(self, device: Device) -> Result<Self, TchError> {
        if self.device() == device {
            Ok(self)
        } else {
            self.f_to_device_(device, self.kind(), true, false)
        }
    }
}

impl<T: PinMemory> PinMemory for Vec<T> {
    fn try_pin_memory(self, device: Device) -> Result<Self, TchError> {
        self.into_iter().map(|t| t.try_pin_memory(device)).collect()
    }

    fn try_to_device_non_blocking(self, device: Device) -> Result<Self, TchError> {
        self.into_iter()
            .map(|t| t.try_to_device_non_blocking(device))
            .collect()
    }
}

impl<T: PinMemory, const N: usize> PinMemory for [T; N] {
    fn try_pin_memory(self, device: Device) -> Result<Self, TchError> {
        Vec::from(self).try_pin_memory(device).map(into_array)
    }

    fn try_to_device_non_blocking(self, device: Device) -> Result<Self, TchError> {
        Vec::from(self)
            .try_to_device_non_blocking(device)
            .map(into_array)
    }
}

fn into_array<T, const N: usize>(items: Vec<T>) -> [T; N] {
    items
        .try_into()
        .unwrap_or_else(|_| unreachable!("N elements in, N out"))
}

impl<T: PinMemory> PinMemory for Option<T> {
    fn try_pin_memory(self, device: Device) -> Result<Self, TchError> {
        self.map(|t| t.try_pin_memory(device)).transpose()
    }

    fn try_to_device_non_blocking(self, device: Device) -> Result<Self, TchError> {
        self.map(|t| t.try_to_device_non_blocking(device))
            .transpose()
    }
}

macro_rules! tuples {
    ($(($($name:ident),+)),*) => {$(
        impl<$($name: PinMemory),+> PinMemory for ($($name,)+) {
            #[allow(non_snake_case)]
            fn try_pin_memory(self, device: Device) -> Result<Self, TchError> {
                let ($($name,)+) = self;
                Ok(($($name.try_pin_memory(device)?,)+))
            }

            #[allow(non_snake_case)]
            fn try_to_device_non_blocking(self, device: Device) -> Result<Self, TchError> {
                let ($($name,)+) = self;
                Ok(($($name.try_to_device_non_blocking(device)?,)+))
            }
        }
    )*};
}
tuples!((A), (A, B), (A, B, C), (A, B, C, D), (A, B, C, D, E));
