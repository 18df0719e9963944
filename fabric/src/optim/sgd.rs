//! [`Sgd`]: stochastic gradient descent with momentum, as `torch.optim.SGD`.

use serde::{Deserialize, Serialize};
use tch::Tensor;

use super::rule::{Rule, pick};
use super::{ParamState, invalid};
use crate::error::Result;
use crate::shim::{self, FusedSgd};

/// The name of SGD's state tensor (PyTorch's).
const MOMENTUM_BUFFER: &str = "momentum_buffer";

/// The settings of stochastic gradient descent, as `torch.optim.SGD`'s
/// (the defaults are PyTorch's); [`build`](Self::build) makes the
/// [`Optimizer`](super::Optimizer).
///
/// For each parameter `p` with gradient `g`: `g += weight_decay * p`; with
/// momentum, `buf = g` at the first step and `buf = momentum * buf + (1 -
/// dampening) * g` after, and `g = g + momentum * buf` (Nesterov) or `g =
/// buf`; then `p -= lr * g`. The momentum buffers are the state a checkpoint
/// saves (`momentum_buffer`, PyTorch's name).
///
/// ```
/// use fabric::optim::Sgd;
/// use tch::nn;
///
/// # fn main() -> fabric::Result<()> {
/// let vs = nn::VarStore::new(tch::Device::Cpu);
/// let _layer = nn::linear(vs.root() / "layer", 4, 2, Default::default());
/// let opt = Sgd::new(0.1).momentum(0.9).nesterov(true).weight_decay(1e-4).build(&vs)?;
/// assert_eq!(opt.parameter_names(), ["layer.bias", "layer.weight"]);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Sgd {
    /// The learning rate.
    pub lr: f64,
    /// The momentum factor (0).
    pub momentum: f64,
    /// How much of the gradient is dampened in the momentum buffer (0).
    pub dampening: f64,
    /// The L2 penalty added to the gradient (0).
    pub weight_decay: f64,
    /// Nesterov momentum (false); needs a momentum and no dampening.
    pub nesterov: bool,
    /// Maximises the objective instead of minimising it (false).
    pub maximize: bool,
}

impl Sgd {
    /// Plain SGD with learning rate `lr`.
    pub fn new(lr: f64) -> Self {
        Sgd {
            lr,
            momentum: 0.0,
            dampening: 0.0,
            weight_decay: 0.0,
            nesterov: false,
            maximize: false,
        }
    }

    setters! {
        /// Sets the momentum factor.
        momentum: f64;
        /// Sets the dampening of the momentum.
        dampening: f64;
        /// Sets the L2 penalty.
        weight_decay: f64;
        /// Turns Nesterov momentum on or off.
        nesterov: bool;
        /// Maximises instead of minimising.
        maximize: bool;
    }

    /// The fused kernel's arguments.
    fn kernel(&self, is_first_step: bool) -> FusedSgd {
        FusedSgd {
            lr: self.lr,
            momentum: self.momentum,
            dampening: self.dampening,
            weight_decay: self.weight_decay,
            nesterov: self.nesterov,
            maximize: self.maximize,
            is_first_step,
        }
    }
}

impl Rule for Sgd {
    fn name(&self) -> &'static str {
        "sgd"
    }

    fn lr(&self) -> f64 {
        self.lr
    }

    fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }

    fn weight_decay(&self) -> f64 {
        self.weight_decay
    }

    fn set_weight_decay(&mut self, weight_decay: f64) {
        self.weight_decay = weight_decay;
    }

    fn momentum(&self) -> f64 {
        self.momentum
    }

    fn set_momentum(&mut self, momentum: f64) {
        self.momentum = momentum;
    }

    fn validate(&self) -> Result<()> {
        let s = self;
        if !(s.lr >= 0.0 && s.momentum >= 0.0 && s.weight_decay >= 0.0 && s.dampening.is_finite()) {
            return Err(invalid(format!(
                "SGD needs lr >= 0, momentum >= 0, weight_decay >= 0 and a finite dampening, got lr = {}, momentum = {}, weight_decay = {}, dampening = {}",
                s.lr, s.momentum, s.weight_decay, s.dampening
            )));
        }
        if s.nesterov && (s.momentum <= 0.0 || s.dampening != 0.0) {
            return Err(invalid(
                "Nesterov momentum requires a momentum and zero dampening".into(),
            ));
        }
        Ok(())
    }

    fn state_names(&self) -> &'static [&'static str] {
        if self.momentum != 0.0 {
            &[MOMENTUM_BUFFER]
        } else {
            &[]
        }
    }

    fn fused_step(
        &self,
        params: &[Tensor],
        grads: &[Tensor],
        states: &mut [&mut ParamState],
    ) -> Result<()> {
        if self.momentum == 0.0 {
            return shim::fused_sgd(params, grads, &[], self.kernel(false));
        }
        // The kernel takes one `is_first_step` for the whole list: parameters
        // stepping for the first time go in a call of their own, with new
        // buffers that the kernel fills with their gradients (kept once it
        // has).
        let (fresh, stepped): (Vec<usize>, Vec<usize>) =
            (0..params.len()).partition(|&i| !states[i].contains_key(MOMENTUM_BUFFER));
        for (first, picked) in [(true, fresh), (false, stepped)] {
            if picked.is_empty() {
                continue;
            }
            let buffers = picked
                .iter()
                .map(|&i| match states[i].get(MOMENTUM_BUFFER) {
                    Some(buffer) => Ok(buffer.shallow_clone()),
                    None => params[i].f_empty_like(),
                })
                .collect::<std::result::Result<Vec<_>, _>>()?;
            shim::fused_sgd(
                &pick(params, &picked),
                &pick(grads, &picked),
                &buffers,
                self.kernel(first),
            )?;
            if first {
                for (&i, buffer) in picked.iter().zip(buffers) {
                    states[i].insert(MOMENTUM_BUFFER.into(), buffer);
                }
            }
        }
        Ok(())
    }

    fn step(&self, param: &Tensor, grad: &Tensor, state: &mut ParamState) -> Result<()> {
        let mut d = if self.maximize {
            grad.f_neg()?
        } else {
            grad.shallow_clone()
        };
        if self.weight_decay != 0.0 {
            d = d.f_add(&param.f_mul_scalar(self.weight_decay)?)?;
        }
        if self.momentum != 0.0 {
            let buffer = match state.get_mut(MOMENTUM_BUFFER) {
                Some(buffer) => {
                    let _ = buffer.f_mul_scalar_(self.momentum)?;
                    let _ = buffer.f_add_(&d.f_mul_scalar(1.0 - self.dampening)?)?;
                    buffer.shallow_clone()
                }
                None => {
                    let buffer = d.f_detach_copy()?;
                    state.insert(MOMENTUM_BUFFER.into(), buffer.shallow_clone());
                    buffer
                }
            };
            d = if self.nesterov {
                d.f_add(&buffer.f_mul_scalar(self.momentum)?)?
            } else {
                buffer
            };
        }
        let _ = param.shallow_clone().f_sub_(&d.f_mul_scalar(self.lr)?)?;
        Ok(())
    }
}
