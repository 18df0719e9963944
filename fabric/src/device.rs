//! [`ToDevice`]: moving tensors and collections of them to a device.

use tch::{Device, TchError, Tensor};

/// Data that can be moved to a device: tensors, and tuples, vectors, arrays
/// and options of them, as Lightning's `move_data_to_device`.
///
/// ```
/// use fabric::ToDevice;
/// use tch::{Device, TchError, Tensor};
///
/// let (x, y) = (Tensor::zeros([2], (tch::Kind::Float, Device::Cpu)), Tensor::from(1i64));
/// let (x, _y) = (x, y).to_device(Device::Cpu);
/// assert_eq!(x.device(), Device::Cpu);
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be moved to a device",
    note = "`ToDevice` is implemented for `Tensor` and for tuples, vectors, arrays and options of it"
)]
pub trait ToDevice: Sized {
    /// The same data on `device`; already there, it is returned as is. An
    /// error from libtorch (a CUDA device out of memory) is an `Err`.
    fn try_to_device(self, device: Device) -> Result<Self, TchError>;

    /// [`try_to_device`](Self::try_to_device), panicking on libtorch's
    /// error as tch's own `Tensor::to_device` does.
    fn to_device(self, device: Device) -> Self {
        self.try_to_device(device)
            .unwrap_or_else(|e| panic!("moving data to {device:?}: {e}"))
    }
}

impl ToDevice for Tensor {
    fn try_to_device(self, device: Device) -> Result<Self, TchError> {
        if self.device() == device {
            Ok(self)
        } else {
            self.f_to_device(device)
        }
    }
}

impl<T: ToDevice> ToDevice for Vec<T> {
    fn try_to_device(self, device: Device) -> Result<Self, TchError> {
        self.into_iter().map(|t| t.try_to_device(device)).collect()
    }
}

impl<T: ToDevice, const N: usize> ToDevice for [T; N] {
    fn try_to_device(self, device: Device) -> Result<Self, TchError> {
        let moved: Vec<T> = self
            .into_iter()
            .map(|t| t.try_to_device(device))
            .collect::<Result<_, _>>()?;
        Ok(moved
            .try_into()
            .unwrap_or_else(|_| unreachable!("N elements in, N out")))
    }
}

impl<T: ToDevice> ToDevice for Option<T> {
    fn try_to_device(self, device: Device) -> Result<Self, TchError> {
        self.map(|t| t.try_to_device(device)).transpose()
    }
}

macro_rules! tuples {
    ($(($($name:ident),+)),*) => {$(
        impl<$($name: ToDevice),+> ToDevice for ($($name,)+) {
            #[allow(non_snake_case)]
            fn try_to_device(self, device: Device) -> Result<Self, TchError> {
                let ($($name,)+) = self;
                Ok(($($name.try_to_device(device)?,)+))
            }
        }
    )*};
}
tuples!((A), (A, B), (A, B, C), (A, B, C, D), (A, B, C, D, E));
