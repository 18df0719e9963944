//! [`ToDevice`]: moving tensors and collections of them to a device.

use tch::{Device, Tensor};

/// Data that can be moved to a device: tensors, and tuples, vectors, arrays
/// and options of them, as Lightning's `move_data_to_device`.
///
/// ```
/// use fabric::ToDevice;
/// use tch::{Device, Tensor};
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
    /// The same data on `device`; already there, it is returned as is.
    fn to_device(self, device: Device) -> Self;
}

impl ToDevice for Tensor {
    fn to_device(self, device: Device) -> Self {
        if self.device() == device {
            self
        } else {
            Tensor::to_device(&self, device)
        }
    }
}

impl<T: ToDevice> ToDevice for Vec<T> {
    fn to_device(self, device: Device) -> Self {
        self.into_iter().map(|t| t.to_device(device)).collect()
    }
}

impl<T: ToDevice, const N: usize> ToDevice for [T; N] {
    fn to_device(self, device: Device) -> Self {
        self.map(|t| t.to_device(device))
    }
}

impl<T: ToDevice> ToDevice for Option<T> {
    fn to_device(self, device: Device) -> Self {
        self.map(|t| t.to_device(device))
    }
}

macro_rules! tuples {
    ($(($($name:ident),+)),*) => {$(
        impl<$($name: ToDevice),+> ToDevice for ($($name,)+) {
            #[allow(non_snake_case)]
            fn to_device(self, device: Device) -> Self {
                let ($($name,)+) = self;
                ($($name.to_device(device),)+)
            }
        }
    )*};
}
tuples!((A), (A, B), (A, B, C), (A, B, C, D), (A, B, C, D, E));
