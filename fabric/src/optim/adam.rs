//! [`Adam`] and [`AdamW`]: adaptive moment estimation, as `torch.optim.Adam`
//! and `torch.optim.AdamW`.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::rule::{Rule, state_list};
use super::{ParamState, invalid};
use crate::error::Result;
use crate::shim::{self, FusedAdam};

/// The names of Adam's state tensors (PyTorch's), `max_exp_avg_sq` with
/// amsgrad only.
const STATE: [&str; 4] = ["step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"];

/// The settings of Adam, as `torch.optim.Adam`'s (the defaults are
/// PyTorch's); with [`decoupled_weight_decay`](Self::decoupled_weight_decay)
/// it is AdamW (see [`AdamW`]). [`build`](Self::build) makes the
/// [`Optimizer`](super::Optimizer).
///
/// The state a checkpoint saves is PyTorch's: `step` (a float32 scalar),
/// `exp_avg`, `exp_avg_sq`, and `max_exp_avg_sq` with `amsgrad`.
///
/// ```
/// use fabric::optim::Adam;
/// use tch::nn;
///
/// # fn main() -> fabric::Result<()> {
/// let vs = nn::VarStore::new(tch::Device::Cpu);
/// let _layer = nn::linear(vs.root() / "layer", 4, 2, Default::default());
/// let opt = Adam::new(1e-3).betas(0.9, 0.99).amsgrad(true).build(&vs)?;
/// assert_eq!(opt.lr(), 1e-3);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Adam {
    /// The learning rate (1e-3).
    pub lr: f64,
    /// The decay rates of the first and second moment estimates (0.9, 0.999).
    pub betas: (f64, f64),
    /// Added to the denominator for numerical stability (1e-8).
    pub eps: f64,
    /// The weight decay (0 for Adam, 0.01 for AdamW).
    pub weight_decay: f64,
    /// The AMSGrad variant (false).
    pub amsgrad: bool,
    /// Maximises the objective instead of minimising it (false).
    pub maximize: bool,
    /// Decays the weights directly (`p *= 1 - lr * weight_decay`, AdamW)
    /// rather than adding an L2 penalty to the gradient (Adam).
    pub decoupled_weight_decay: bool,
}

/// AdamW: [`Adam`] with decoupled weight decay, as `torch.optim.AdamW`
/// (weight decay 0.01 by default).
///
/// ```
/// use fabric::optim::AdamW;
/// use tch::nn;
///
/// # fn main() -> fabric::Result<()> {
/// let vs = nn::VarStore::new(tch::Device::Cpu);
/// let _layer = nn::linear(vs.root(), 4, 2, Default::default());
/// let opt = AdamW::new(3e-4).weight_decay(0.05).build(&vs)?;
/// assert_eq!(opt.algorithm_name(), "adamw");
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy)]
pub struct AdamW;

impl AdamW {
    /// AdamW's settings with learning rate `lr`.
    #[allow(clippy::new_ret_no_self)]
    pub fn new(lr: f64) -> Adam {
        Adam {
            weight_decay: 0.01,
            decoupled_weight_decay: true,
            ..Adam::new(lr)
        }
    }
}

impl Adam {
    /// Adam with learning rate `lr`.
    pub fn new(lr: f64) -> Self {
        Adam {
            lr,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
            amsgrad: false,
            maximize: false,
            decoupled_weight_decay: false,
        }
    }

    /// Sets the decay rates of the moment estimates.
    pub fn betas(mut self, beta1: f64, beta2: f64) -> Self {
        self.betas = (beta1, beta2);
        self
    }

    setters! {
        /// Sets the term added to the denominator.
        eps: f64;
        /// Sets the weight decay.
        weight_decay: f64;
        /// Turns AMSGrad on or off.
        amsgrad: bool;
        /// Maximises instead of minimising.
        maximize: bool;
        /// Decoupled weight decay (AdamW) or an L2 penalty (Adam).
        decoupled_weight_decay: bool;
    }

    /// Creates the state tensors a parameter lacks (all of them at its first
    /// step), as PyTorch does: `step` a float32 zero on the parameter's
    /// device, the moments zero.
    fn init_state(&self, param: &Tensor, state: &mut ParamState) -> Result<()> {
        for &name in self.state_names() {
            if !state.contains_key(name) {
                let tensor = if name == "step" {
                    Tensor::f_zeros([], (Kind::Float, param.device()))?
                } else {
                    param.f_zeros_like()?
                };
                state.insert(name.into(), tensor);
            }
        }
        Ok(())
    }

    /// The fused kernel's arguments.
    fn kernel(&self) -> FusedAdam {
        FusedAdam {
            lr: self.lr,
            beta1: self.betas.0,
            beta2: self.betas.1,
            eps: self.eps,
            weight_decay: self.weight_decay,
            amsgrad: self.amsgrad,
            maximize: self.maximize,
            decoupled_weight_decay: self.decoupled_weight_decay,
        }
    }
}

impl Rule for Adam {
    fn name(&self) -> &'static str {
        if self.decoupled_weight_decay {
            "adamw"
        } else {
            "adam"
        }
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
        self.betas.0
    }

    fn set_momentum(&mut self, momentum: f64) {
        self.betas.0 = momentum;
    }

    fn validate(&self) -> Result<()> {
        let (b1, b2) = self.betas;
        let valid = self.lr >= 0.0
            && self.eps >= 0.0
            && (0.0..1.0).contains(&b1)
            && (0.0..1.0).contains(&b2)
            && self.weight_decay >= 0.0;
        if !valid {
            return Err(invalid(format!(
                "Adam needs lr >= 0, eps >= 0, 0 <= betas < 1 and weight_decay >= 0, got {self:?}"
            )));
        }
        Ok(())
    }

    fn state_names(&self) -> &'static [&'static str] {
        if self.amsgrad { &STATE } else { &STATE[..3] }
    }

    fn fused_step(
        &self,
        params: &[Tensor],
        grads: &[Tensor],
        states: &mut [&mut ParamState],
    ) -> Result<()> {
        for (param, state) in params.iter().zip(states.iter_mut()) {
            self.init_state(param, state)?;
        }
        let [steps, exp_avgs, exp_avg_sqs, max_exp_avg_sqs] =
            STATE.map(|name| state_list(states, name));
        shim::fused_adam(
            params,
            grads,
            &exp_avgs,
            &exp_avg_sqs,
            if self.amsgrad { &max_exp_avg_sqs } else { &[] },
            &steps,
            self.kernel(),
        )
    }

    /// In `torch.optim.Adam`'s single-tensor order.
    fn step(&self, param: &Tensor, grad: &Tensor, state: &mut ParamState) -> Result<()> {
        self.init_state(param, state)?;
        let (beta1, beta2) = self.betas;
        let mut param = param.shallow_clone();
        let mut grad = if self.maximize {
            grad.f_neg()?
        } else {
            grad.shallow_clone()
        };
        let step_tensor = state["step"].shallow_clone();
        let _ = step_tensor.shallow_clone().f_add_scalar_(1.0)?;
        let step = step_tensor.f_double_value(&[])?;
        if self.weight_decay != 0.0 {
            if self.decoupled_weight_decay {
                let _ = param.f_mul_scalar_(1.0 - self.lr * self.weight_decay)?;
            } else {
                grad = grad.f_add(&param.f_mul_scalar(self.weight_decay)?)?;
            }
        }
        let mut exp_avg = state["exp_avg"].shallow_clone();
        let mut exp_avg_sq = state["exp_avg_sq"].shallow_clone();
        let _ = exp_avg.f_lerp_(&grad, 1.0 - beta1)?;
        let _ = exp_avg_sq.f_mul_scalar_(beta2)?;
        let _ = exp_avg_sq.f_addcmul_(&grad, &grad.f_mul_scalar(1.0 - beta2)?)?;
        let bias_correction1 = 1.0 - beta1.powf(step);
        let bias_correction2 = 1.0 - beta2.powf(step);
        let step_size = self.lr / bias_correction1;
        let bias_correction2_sqrt = bias_correction2.sqrt();
        let second = if self.amsgrad {
            let max = state["max_exp_avg_sq"].shallow_clone();
            let _ = max.f_maximum_out(&max, &exp_avg_sq)?;
            max
        } else {
            exp_avg_sq
        };
        let mut denom = second.f_sqrt()?.f_div_scalar(bias_correction2_sqrt)?;
        let _ = denom.f_add_scalar_(self.eps)?;
        let _ = param.f_addcdiv_(&exp_avg.f_mul_scalar(-step_size)?, &denom)?;
        Ok(())
    }
}
