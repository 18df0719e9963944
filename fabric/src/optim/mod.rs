//! fabric's own optimizers, whose state is reachable and checkpointed:
//! [`Sgd`], [`Adam`] and [`AdamW`], matching `torch.optim`; their
//! parameter groups ([`ParamGroup`]: a learning rate and weight decay of
//! their own, as `torch.optim`'s `param_groups`), and learning-rate
//! schedulers ([`LrScheduler`], matching `torch.optim.lr_scheduler`).
//!
//! tch's `nn::Optimizer` keeps its state inside libtorch where it cannot be
//! read, so a run resumed from a checkpoint restarts its momentum buffers
//! and moment estimates from zero. fabric's [`Optimizer`] keeps them as
//! tensors: [`Fabric::save`](crate::Fabric::save) writes them and
//! [`Fabric::load`](crate::Fabric::load) restores them, so that N steps, a
//! save, a load and M steps give the same parameters, bit for bit, as N + M
//! steps.
//!
//! On CPU and CUDA tensors of a floating-point kind, a step runs ATen's fused
//! kernels (`_fused_sgd_`, `_fused_adam_`, `_fused_adamw_`), one call per
//! device and dtype, which measure several times faster than one tensor
//! operation at a time (see the README); elsewhere, or with
//! [`Optimizer::fused(false)`](Optimizer::fused), it runs the separate tensor
//! operations of `torch.optim`'s single-tensor implementation.
//!
//! ```
//! use fabric::Fabric;
//! use fabric::optim::AdamW;
//! use tch::{nn, Kind, Tensor};
//!
//! # fn main() -> fabric::Result<()> {
//! let mut fabric = Fabric::builder().accelerator("cpu").build()?;
//! let mut vs = nn::VarStore::new(tch::Device::Cpu);
//! let net = nn::linear(vs.root(), 3, 1, Default::default());
//! let opt = AdamW::new(1e-2).build(&vs)?;
//! let (model, mut opt) = fabric.setup(&mut vs, net, opt)?;
//! let x = Tensor::ones([8, 3], (Kind::Float, tch::Device::Cpu));
//! opt.zero_grad();
//! let loss = model.forward(&x).pow_tensor_scalar(2).mean(None);
//! fabric.backward(&loss)?;
//! opt.step()?;
//! let state = opt.optimizer().unwrap().state("weight").unwrap();
//! assert_eq!(state["step"].double_value(&[]), 1.0);
//! # Ok(()) }
//! ```

/// Builder methods that set one field each, `field(mut self, value) -> Self`,
/// for the settings types.
macro_rules! setters {
    ($($(#[$doc:meta])* $field:ident: $ty:ty;)*) => {
        $(
            $(#[$doc])*
            pub fn $field(mut self, $field: $ty) -> Self {
                self.$field = $field;
                self
            }
        )*
    };
}

mod adam;
mod algorithm;
mod groups;
mod optimizer;
mod rule;
mod scheduler;
mod sgd;
mod slot;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use tch::Tensor;

pub use adam::{Adam, AdamW};
pub use algorithm::Algorithm;
pub use groups::{DEFAULT_GROUP, Group, ParamGroup, WithGroups, is_bias_or_norm};
pub use optimizer::Optimizer;
pub(crate) use scheduler::SchedulerState;
pub use scheduler::{Anneal, LrScheduler, OneCycle, Schedule};
pub use sgd::Sgd;
pub use slot::OptimizerSlot;

use crate::error::Error;

/// The state tensors of one parameter, by PyTorch's names (`momentum_buffer`;
/// `step`, `exp_avg`, `exp_avg_sq`, `max_exp_avg_sq`). Empty until the
/// parameter's first step.
pub type ParamState = BTreeMap<String, Tensor>;

fn invalid(message: String) -> Error {
    Error::InvalidArgument(message)
}
