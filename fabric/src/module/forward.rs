//! [`Forward`]: a set-up model's forward pass, whatever its inputs and
//! outputs ([`Tensors`]).

use tch::Tensor;
use tch::nn::ModuleT;

use crate::tensors::Tensors;

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
