//! [`Rule`]: what one optimization algorithm adds to the shared
//! [`Optimizer`](super::Optimizer).

use tch::Tensor;

use super::ParamState;
use crate::error::Result;

/// An optimization algorithm's part of an optimizer: its hyperparameters
/// (the fields of the implementing type, which are also what a checkpoint
/// records of it through serde, in [`Algorithm`](super::Algorithm)), the
/// state it keeps per parameter, and its update of one parameter or of a
/// group of them.
///
/// The [`Optimizer`](super::Optimizer) does the rest once for every
/// algorithm: building and checking the parameters, grouping them by
/// device and dtype, storing the states, and the checkpoint hooks. An
/// algorithm is added by implementing this trait and naming its type in
/// `algorithms!` (algorithm.rs).
pub(crate) trait Rule {
    /// The algorithm's name: `"sgd"`, `"adam"`, `"adamw"`.
    fn name(&self) -> &'static str;

    /// The learning rate.
    fn lr(&self) -> f64;

    /// Sets the learning rate.
    fn set_lr(&mut self, lr: f64);

    /// The weight decay.
    fn weight_decay(&self) -> f64;

    /// Sets the weight decay (of a parameter group).
    fn set_weight_decay(&mut self, weight_decay: f64);

    /// The momentum one-cycle schedules cycle: SGD's momentum, Adam's
    /// first beta.
    fn momentum(&self) -> f64;

    /// Sets that momentum.
    fn set_momentum(&mut self, momentum: f64);

    /// Checks the hyperparameters: an error says which are out of range and
    /// what is accepted.
    fn validate(&self) -> Result<()>;

    /// The names of the state tensors a parameter has after its first step
    /// (PyTorch's names).
    fn state_names(&self) -> &'static [&'static str];

    /// Updates `param` from `grad` with separate tensor operations (any
    /// device and floating-point dtype), creating its `state` at its first
    /// step.
    fn step(&self, param: &Tensor, grad: &Tensor, state: &mut ParamState) -> Result<()>;

    /// Updates `params` from `grads`, all of one device and dtype that
    /// ATen's fused kernels take (CPU or CUDA; f32, f64, f16, bf16), with
    /// `states[i]` the state of `params[i]`; the result equals that of
    /// [`step`](Self::step) on each, up to rounding.
    fn fused_step(
        &self,
        params: &[Tensor],
        grads: &[Tensor],
        states: &mut [&mut ParamState],
    ) -> Result<()>;
}

/// The state tensors called `name` of `states`, in order, skipping the
/// states without one: the tensor lists of a fused kernel.
pub(crate) fn state_list(states: &[&mut ParamState], name: &str) -> Vec<Tensor> {
    states
        .iter()
        .filter_map(|state| state.get(name).map(Tensor::shallow_clone))
        .collect()
}

/// The tensors of `tensors` at `indices`, as a tensor list of a fused kernel.
pub(crate) fn pick(tensors: &[Tensor], indices: &[usize]) -> Vec<Tensor> {
    indices
        .iter()
        .map(|&i| tensors[i].shallow_clone())
        .collect()
}
