//! Data sets: what a loader draws batches from.

use std::sync::{Mutex, PoisonError};

use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};

/// A data set that can hand out batches of samples by index.
///
/// Implement [`get_batch`](Self::get_batch) to build a whole batch at once:
/// for tensors that is one indexing operation per tensor instead of one per
/// sample, which is what makes small models fast.
///
/// A data set that is `Send + Sync` (with `Send` batches) can be shared by a
/// loader's worker threads ([`DataLoader::num_workers`](super::DataLoader::num_workers)),
/// which call `get_batch` concurrently; any data set loads on the thread
/// that iterates.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a data set",
    note = "implement `fabric::data::Dataset` for `{Self}`, or wrap tensors in `fabric::data::TensorDataset`"
)]
pub trait Dataset {
    /// What a batch is, such as `(Tensor, Tensor)`.
    type Batch;

    /// The number of samples.
    fn len(&self) -> usize;

    /// Whether there are no samples.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The batch made of the samples at `indices`, in that order.
    fn get_batch(&self, indices: &[usize]) -> Result<Self::Batch>;
}

/// Tensors that share their first dimension and are indexed together: a
/// tensor, a tuple of up to four, or a vector.
pub trait Tensors: Sized {
    /// The tensors, in order.
    fn tensors(&self) -> Vec<&Tensor>;

    /// Every tensor indexed along its first dimension by `index`.
    fn select(&self, index: &Tensor) -> Result<Self>;
}

impl Tensors for Tensor {
    fn tensors(&self) -> Vec<&Tensor> {
        vec![self]
    }
    fn select(&self, index: &Tensor) -> Result<Self> {
        Ok(self.f_index_select(0, index)?)
    }
}

impl Tensors for Vec<Tensor> {
    fn tensors(&self) -> Vec<&Tensor> {
        self.iter().collect()
    }
    fn select(&self, index: &Tensor) -> Result<Self> {
        self.iter()
            .map(|t| Ok(t.f_index_select(0, index)?))
            .collect()
    }
}

macro_rules! tensor_tuples {
    ($(($($t:ident $i:tt),+)),*) => {$(
        impl Tensors for ($($t,)+) {
            fn tensors(&self) -> Vec<&Tensor> {
                vec![$(&self.$i),+]
            }
            fn select(&self, index: &Tensor) -> Result<Self> {
                Ok(($(self.$i.f_index_select(0, index)?,)+))
            }
        }
    )*};
}
tensor_tuples!((Tensor 0, Tensor 1), (Tensor 0, Tensor 1, Tensor 2), (Tensor 0, Tensor 1, Tensor 2, Tensor 3));

/// Samples held in tensors whose first dimension indexes the samples, as
/// PyTorch's `TensorDataset`: batches are the same tensors indexed by the
/// batch's sample indices.
///
/// The tensors are behind a lock, since a loader's worker threads
/// ([`DataLoader::num_workers`](super::DataLoader::num_workers)) make batches
/// from the same data set as the thread that owns it: batches are made one
/// at a time, and the tensors themselves are reachable only through `&mut`
/// ([`tensors`](Self::tensors)) or by value ([`into_tensors`](Self::into_tensors)).
/// So any [`Tensors`] type, even one with interior mutability, is safe to
/// share between threads:
///
/// ```
/// use std::cell::Cell;
/// use fabric::data::{Dataset, TensorDataset, Tensors};
/// use tch::{Device, Kind, Tensor};
///
/// /// Tensors that count how often they were indexed.
/// struct Counted { x: Tensor, selections: Cell<u64> }
///
/// impl Tensors for Counted {
///     fn tensors(&self) -> Vec<&Tensor> {
///         vec![&self.x]
///     }
///     fn select(&self, index: &Tensor) -> fabric::Result<Self> {
///         self.selections.set(self.selections.get() + 1);
///         Ok(Counted { x: self.x.f_index_select(0, index)?, selections: Cell::new(0) })
///     }
/// }
///
/// let x = Tensor::arange(8, (Kind::Float, Device::Cpu));
/// let mut dataset = TensorDataset::new(Counted { x, selections: Cell::new(0) }).unwrap();
/// std::thread::scope(|s| {
///     for _ in 0..4 {
///         s.spawn(|| for _ in 0..100 { dataset.get_batch(&[1, 2]).unwrap(); });
///     }
/// });
/// assert_eq!(dataset.tensors().selections.get(), 400);
/// ```
///
/// Reaching the tensors from two threads at once does not compile:
///
/// ```compile_fail,E0499
/// use std::cell::Cell;
/// use fabric::data::{TensorDataset, Tensors};
/// use tch::{Device, Kind, Tensor};
///
/// struct Counted { x: Tensor, reads: Cell<u64> }
///
/// impl Tensors for Counted {
///     fn tensors(&self) -> Vec<&Tensor> {
///         self.reads.set(self.reads.get() + 1); // a data race if two threads get here
///         vec![&self.x]
///     }
///     fn select(&self, index: &Tensor) -> fabric::Result<Self> {
///         Ok(Counted { x: self.x.f_index_select(0, index)?, reads: Cell::new(0) })
///     }
/// }
///
/// let x = Tensor::arange(8, (Kind::Float, Device::Cpu));
/// let mut dataset = TensorDataset::new(Counted { x, reads: Cell::new(0) }).unwrap();
/// std::thread::scope(|s| {
///     s.spawn(|| dataset.tensors().tensors().len());
///     s.spawn(|| dataset.tensors().tensors().len());
/// });
/// ```
#[derive(Debug)]
pub struct TensorDataset<T> {
    tensors: Mutex<T>,
    len: usize,
    device: Device,
}

impl<T: Tensors> TensorDataset<T> {
    /// Wraps tensors that all have the same, non-zero number of dimensions
    /// and the same first dimension, on the same device.
    pub fn new(tensors: T) -> Result<Self> {
        let all = tensors.tensors();
        let Some(first) = all.first() else {
            return Err(Error::Data(
                "a TensorDataset needs at least one tensor".into(),
            ));
        };
        if first.dim() == 0 {
            return Err(Error::Data("a TensorDataset's tensors need a first dimension indexing the samples; tensor 0 is a scalar".into()));
        }
        let len = first.size()[0];
        let device = first.device();
        for (i, t) in all.iter().enumerate().skip(1) {
            if t.dim() == 0 || t.size()[0] != len {
                return Err(Error::Data(format!(
                    "a TensorDataset's tensors must share their first dimension: tensor 0 has shape {:?}, tensor {i} has shape {:?}",
                    first.size(),
                    t.size()
                )));
            }
            if t.device() != device {
                return Err(Error::Data(format!(
                    "a TensorDataset's tensors must be on one device: tensor 0 is on {device:?}, tensor {i} on {:?}",
                    t.device()
                )));
            }
        }
        let len =
            usize::try_from(len).map_err(|_| Error::Data("negative first dimension".into()))?;
        Ok(TensorDataset {
            tensors: Mutex::new(tensors),
            len,
            device,
        })
    }

    /// The wrapped tensors (`&mut`: no other thread makes a batch from them
    /// meanwhile).
    pub fn tensors(&mut self) -> &T {
        // A panic while the lock was held (in a `Tensors::select`) left
        // the tensors as they were: they are only ever read.
        self.tensors
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The wrapped tensors, by value.
    pub fn into_tensors(self) -> T {
        self.tensors
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl<T: Tensors> Dataset for TensorDataset<T> {
    type Batch = T;

    fn len(&self) -> usize {
        self.len
    }

    fn get_batch(&self, indices: &[usize]) -> Result<T> {
        let mut index = Vec::with_capacity(indices.len());
        for &i in indices {
            if i >= self.len {
                return Err(Error::Data(format!(
                    "sample index {i} is out of range for a data set of {} samples",
                    self.len
                )));
            }
            index.push(i as i64);
        }
        let index = Tensor::f_from_slice(&index)?.f_to_device(self.device)?;
        debug_assert_eq!(index.kind(), Kind::Int64);
        self.tensors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .select(&index)
    }
}
