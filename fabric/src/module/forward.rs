//! [`Tensors`] and [`Forward`]: a set-up model's forward pass, whatever its
//! inputs and outputs.

use std::collections::BTreeMap;

use tch::nn::ModuleT;
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

/// A model's forward pass on `Args`, which
/// [`FabricModule::forward`](crate::FabricModule::forward) runs with the
/// run's precision (and under `dp` on every device).
///
/// Every tch model (`Module`, `ModuleT`) has it for one tensor, so
/// `model.forward(&xs)` works as before. A model with other inputs or
/// outputs implements it for the owned form of its arguments (see
/// [`Tensors::Owned`]); `train` is the set-up module's mode (dropout, batch
/// norm):
///
/// ```
/// use fabric::{Fabric, Forward};
/// use tch::{nn, Kind, Tensor};
///
/// /// Logits and an auxiliary score from features and a 0/1 mask.
/// struct Scorer { fc: nn::Linear }
///
/// impl Forward<(Tensor, Tensor, f64)> for Scorer {
///     type Output = (Tensor, Tensor);
///     fn call(&self, (xs, mask, temperature): (Tensor, Tensor, f64), train: bool) -> (Tensor, Tensor) {
///         let logits = xs.apply(&self.fc).dropout(0.1, train) / temperature;
///         let aux = (&logits * mask.unsqueeze(1)).sum(Kind::Float);
///         (logits, aux)
///     }
/// }
///
/// # fn main() -> fabric::Result<()> {
/// let mut fabric = Fabric::builder().accelerator("cpu").precision("bf16-true").build()?;
/// let mut vs = nn::VarStore::new(tch::Device::Cpu);
/// let model = fabric.setup_module_with(&mut vs, |p| Scorer { fc: nn::linear(p / "fc", 4, 2, Default::default()) })?;
/// let xs = Tensor::randn([8, 4], (Kind::Float, tch::Device::Cpu));
/// let mask = Tensor::ones([8], (Kind::Int64, tch::Device::Cpu));
/// // `xs` is cast to bf16 (the mask, an integer tensor, is not), the
/// // outputs come back as f32.
/// let (logits, aux) = model.forward((&xs, &mask, 2.0));
/// assert_eq!((logits.kind(), aux.kind()), (Kind::Float, Kind::Float));
/// # Ok(()) }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` has no forward pass taking `{Args}`",
    label = "the model cannot be called with these arguments",
    note = "a tch `Module` or `ModuleT` takes one tensor: call `model.forward(&xs)`",
    note = "for other arguments, implement `fabric::Forward<{Args}>` for `{Self}` (the arguments as the model receives them: owned tensors, plain values)"
)]
pub trait Forward<Args> {
    /// What the forward pass returns (tensors, plain values, and
    /// collections of them).
    type Output: Tensors<Owned = Self::Output>;

    /// Runs the model on `args`, in training mode if `train`.
    fn call(&self, args: Args, train: bool) -> Self::Output;
}

impl<M: ModuleT + ?Sized> Forward<Tensor> for M {
    type Output = Tensor;

    fn call(&self, xs: Tensor, train: bool) -> Tensor {
        self.forward_t(&xs, train)
    }
}

/// One tensor in a one-element tuple, for code generic over argument
/// tuples. (With two impls, a call with other arguments is reported by
/// `Forward`'s own message rather than as a type mismatch.)
impl<M: ModuleT + ?Sized> Forward<(Tensor,)> for M {
    type Output = Tensor;

    fn call(&self, (xs,): (Tensor,), train: bool) -> Tensor {
        self.forward_t(&xs, train)
    }
}
