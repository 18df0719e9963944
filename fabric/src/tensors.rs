//! [`Tensors`]: what goes into and comes out of a set-up model's forward
//! pass (tensors, plain values and collections of them), gone through
//! tensor by tensor.

use std::collections::BTreeMap;

use tch::{Device, Kind, Tensor};

use crate::error::Result;

/// A forward pass's inputs or outputs: tensors, plain values, and tuples,
/// arrays, vectors, options and ordered maps of them, as PyTorch's pytrees.
///
/// [`FabricModule::forward`](crate::FabricModule::forward) goes through
/// every tensor of its arguments (to cast floating-point ones to the run's
/// precision, and under `dp` to split them between the devices) and of the
/// model's outputs (to convert them back, and under `dp` to gather them on
/// the first device). Plain values (`bool`, integers, floats, `()`, `char`,
/// `&str`, `String`, `Kind`, `Device`) are passed through untouched, cloned
/// for each device under `dp`.
///
/// Arguments may hold references (`&Tensor`, `(&Tensor, &Tensor)`): the
/// model receives their [`Owned`](Self::Owned) form, with owned tensors
/// (the cast copies, or shallow clones of the caller's tensors).
///
/// A struct or enum of tensors of your own derives it, each field going
/// through its own implementation (`#[tensors(skip)]` clones a field
/// instead):
///
/// ```
/// use fabric::Tensors;
/// use tch::Tensor;
///
/// #[derive(Tensors)]
/// struct Batch { images: Tensor, labels: Tensor, augment: bool }
/// ```
///
/// or implements it by hand, with one method that rebuilds it from `f`
/// applied to each tensor, always in the same order:
///
/// ```
/// use fabric::Tensors;
/// use tch::{Kind, Tensor};
///
/// struct Batch { images: Tensor, labels: Tensor, augment: bool }
///
/// impl Tensors for Batch {
///     type Owned = Batch;
///     fn map_tensors(&self, f: &mut dyn FnMut(&Tensor) -> fabric::Result<Tensor>) -> fabric::Result<Batch> {
///         Ok(Batch { images: f(&self.images)?, labels: f(&self.labels)?, augment: self.augment })
///     }
/// }
///
/// let batch = Batch { images: Tensor::zeros([2, 3], (Kind::Double, tch::Device::Cpu)), labels: Tensor::from_slice(&[1i64, 0]), augment: true };
/// let cast = batch.map_tensors(&mut |t| Ok(t.to_kind(Kind::Float))).unwrap();
/// assert_eq!(cast.images.kind(), Kind::Float);
/// assert!(cast.augment);
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot go into or out of a set-up model's forward pass",
    label = "not made of tensors and plain values",
    note = "`fabric::Tensors` is implemented for `Tensor`, `&Tensor`, plain values (`bool`, integers, floats, `()`, `&str`, `String`, `Kind`, `Device`), and tuples (up to 8), arrays, `Vec`, `Option` and `BTreeMap` of them",
    note = "for a struct or enum of your own, add `#[derive(fabric::Tensors)]` to `{Self}`"
)]
pub trait Tensors {
    /// The same data with owned tensors: what the model receives for these
    /// arguments (`Tensor` for `&Tensor`); `Self` for data that owns its
    /// tensors.
    type Owned: Tensors<Owned = Self::Owned>;

    /// The same data with `f` applied to each tensor, in a fixed order
    /// (the same on every call), and plain values cloned. The first error
    /// of `f` is returned.
    fn map_tensors(&self, f: &mut dyn FnMut(&Tensor) -> Result<Tensor>) -> Result<Self::Owned>;

    /// Calls `f` on each tensor, in the order of
    /// [`map_tensors`](Self::map_tensors).
    fn for_each_tensor(&self, f: &mut dyn FnMut(&Tensor)) {
        let _ = self.map_tensors(&mut |t| {
            f(t);
            Ok(t.shallow_clone())
        });
    }
}

impl Tensors for Tensor {
    type Owned = Tensor;

    fn map_tensors(&self, f: &mut dyn FnMut(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
        f(self)
    }

    fn for_each_tensor(&self, f: &mut dyn FnMut(&Tensor)) {
        f(self)
    }
}

impl<T: Tensors + ?Sized> Tensors for &T {
    type Owned = T::Owned;

    fn map_tensors(&self, f: &mut dyn FnMut(&Tensor) -> Result<Tensor>) -> Result<T::Owned> {
        (**self).map_tensors(f)
    }

    fn for_each_tensor(&self, f: &mut dyn FnMut(&Tensor)) {
        (**self).for_each_tensor(f)
    }
}

macro_rules! plain {
    ($($t:ty),* $(,)?) => {$(
        impl Tensors for $t {
            type Owned = $t;

            fn map_tensors(&self, _f: &mut dyn FnMut(&Tensor) -> Result<Tensor>) -> Result<$t> {
                Ok(self.clone())
            }

            fn for_each_tensor(&self, _f: &mut dyn FnMut(&Tensor)) {}
        }
    )*};
}
plain!(
    (),
    bool,
    char,
    i8,
    i16,
    i32,
    i64,
    i128,
    isize,
    u8,
    u16,
    u32,
    u64,
    u128,
    usize,
    f32,
    f64,
    String,
    Kind,
    Device,
);

impl<'a> Tensors for &'a str {
    type Owned = &'a str;

    fn map_tensors(&self, _f: &mut dyn FnMut(&Tensor) -> Result<Tensor>) -> Result<&'a str> {
        Ok(self)
    }

    fn for_each_tensor(&self, _f: &mut dyn FnMut(&Tensor)) {}
}

impl<T: Tensors> Tensors for Vec<T> {
    type Owned = Vec<T::Owned>;

    fn map_tensors(&self, f: &mut dyn FnMut(&Tensor) -> Result<Tensor>) -> Result<Self::Owned> {
        self.iter().map(|t| t.map_tensors(f)).collect()
    }

    fn for_each_tensor(&self, f: &mut dyn FnMut(&Tensor)) {
        self.iter().for_each(|t| t.for_each_tensor(f))
    }
}

impl<T: Tensors, const N: usize> Tensors for [T; N] {
    type Owned = [T::Owned; N];

    fn map_tensors(&self, f: &mut dyn FnMut(&Tensor) -> Result<Tensor>) -> Result<Self::Owned> {
        let items: Vec<T::Owned> = self
            .iter()
            .map(|t| t.map_tensors(f))
            .collect::<Result<_>>()?;
        Ok(items
            .try_into()
            .unwrap_or_else(|_| unreachable!("N elements in, N out")))
    }

    fn for_each_tensor(&self, f: &mut dyn FnMut(&Tensor)) {
        self.iter().for_each(|t| t.for_each_tensor(f))
    }
}

impl<T: Tensors> Tensors for [T] {
    type Owned = Vec<T::Owned>;

    fn map_tensors(&self, f: &mut dyn FnMut(&Tensor) -> Result<Tensor>) -> Result<Self::Owned> {
        self.iter().map(|t| t.map_tensors(f)).collect()
    }

    fn for_each_tensor(&self, f: &mut dyn FnMut(&Tensor)) {
        self.iter().for_each(|t| t.for_each_tensor(f))
    }
}

impl<T: Tensors> Tensors for Option<T> {
    type Owned = Option<T::Owned>;

    fn map_tensors(&self, f: &mut dyn FnMut(&Tensor) -> Result<Tensor>) -> Result<Self::Owned> {
        self.as_ref().map(|t| t.map_tensors(f)).transpose()
    }

    fn for_each_tensor(&self, f: &mut dyn FnMut(&Tensor)) {
        if let Some(t) = self {
            t.for_each_tensor(f)
        }
    }
}

impl<K: Ord + Clone, T: Tensors> Tensors for BTreeMap<K, T> {
    type Owned = BTreeMap<K, T::Owned>;

    fn map_tensors(&self, f: &mut dyn FnMut(&Tensor) -> Result<Tensor>) -> Result<Self::Owned> {
        self.iter()
            .map(|(k, t)| Ok((k.clone(), t.map_tensors(f)?)))
            .collect()
    }

    fn for_each_tensor(&self, f: &mut dyn FnMut(&Tensor)) {
        self.values().for_each(|t| t.for_each_tensor(f))
    }
}

macro_rules! tuples {
    ($(($($name:ident),+)),*) => {$(
        impl<$($name: Tensors),+> Tensors for ($($name,)+) {
            type Owned = ($($name::Owned,)+);

            #[allow(non_snake_case)]
            fn map_tensors(&self, f: &mut dyn FnMut(&Tensor) -> Result<Tensor>) -> Result<Self::Owned> {
                let ($($name,)+) = self;
                Ok(($($name.map_tensors(f)?,)+))
            }

            #[allow(non_snake_case)]
            fn for_each_tensor(&self, f: &mut dyn FnMut(&Tensor)) {
                let ($($name,)+) = self;
                $($name.for_each_tensor(f);)+
            }
        }
    )*};
}
tuples!(
    (A),
    (A, B),
    (A, B, C),
    (A, B, C, D),
    (A, B, C, D, E),
    (A, B, C, D, E, F),
    (A, B, C, D, E, F, G),
    (A, B, C, D, E, F, G, H)
);
