//! [`Sgd`]: stochastic gradient descent with momentum, as `torch.optim.SGD`.

use serde::{Deserialize, Serialize};
use tch::Tensor;
use tch::nn::VarStore;

use super::{Algorithm, Optimizer, ParamState, invalid};
use crate::error::Result;
use crate::shim;

/// The settings of stochastic gradient descent, as `torch.optim.SGD`'s
/// (the defaults are PyTorch's); [`build`](Self::build) makes the
/// [`Optimizer`].
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

    /// Sets the momentum factor.
    pub fn momentum(mut self, momentum: f64) -> Self {
        self.momentum = momentum;
        self
    }

    /// Sets the dampening of the momentum.
    pub fn dampening(mut self, dampening: f64) -> Self {
        self.dampening = dampening;
        self
    }

    /// Sets the L2 penalty.
    pub fn weight_decay(mut self, weight_decay: f64) -> Self {
        self.weight_decay = weight_decay;
        self
    }

    /// Turns Nesterov momentum on or off.
    pub fn nesterov(mut self, nesterov: bool) -> Self {
        self.nesterov = nesterov;
        self
    }

    /// Maximises instead of minimising.
    pub fn maximize(mut self, maximize: bool) -> Self {
        self.maximize = maximize;
        self
    }

    /// An optimizer for the trainable variables of `vs`.
    pub fn build(self, vs: &VarStore) -> Result<Optimizer> {
        Optimizer::new(Algorithm::Sgd(self), super::named_trainables(vs))
    }

    /// An optimizer for the given named parameters.
    pub fn build_for(self, parameters: Vec<(String, Tensor)>) -> Result<Optimizer> {
        Optimizer::new(Algorithm::Sgd(self), parameters)
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let s = self;
        if !(s.lr >= 0.0 && s.momentum >= 0.0 && s.weight_decay >= 0.0 && s.dampening.is_finite()) {
            return Err(invalid(format!(
                "SGD needs lr >= 0, momentum >= 0 and weight_decay >= 0, got lr = {}, momentum = {}, weight_decay = {}",
                s.lr, s.momentum, s.weight_decay
            )));
        }
        if s.nesterov && (s.momentum <= 0.0 || s.dampening != 0.0) {
            return Err(invalid(
                "Nesterov momentum requires a momentum and zero dampening".into(),
            ));
        }
        Ok(())
    }

    /// The names of the state tensors each parameter has.
    pub(crate) fn state_names(&self) -> &'static [&'static str] {
        if self.momentum != 0.0 {
            &["momentum_buffer"]
        } else {
            &[]
        }
    }

    /// One fused step over parameters of one device and dtype.
    pub(crate) fn fused_step(
        &self,
        params: &[Tensor],
        grads: &[Tensor],
        states: &mut [&mut ParamState],
    ) -> Result<()> {
        if self.momentum == 0.0 {
            return shim::fused_sgd(params, grads, &[], self, false);
        }
        // The kernel takes one `is_first_step` for the whole list: parameters
        // stepping for the first time go in a call of their own.
        let (fresh, stepped): (Vec<usize>, Vec<usize>) =
            (0..params.len()).partition(|&i| !states[i].contains_key("momentum_buffer"));
        for (first, picked) in [(true, fresh), (false, stepped)] {
            if picked.is_empty() {
                continue;
            }
            let mut buffers = Vec::with_capacity(picked.len());
            for &i in &picked {
                if first {
                    let buffer = params[i].f_empty_like()?;
                    states[i].insert("momentum_buffer".into(), buffer);
                }
                buffers.push(states[i]["momentum_buffer"].shallow_clone());
            }
            let p: Vec<Tensor> = picked.iter().map(|&i| params[i].shallow_clone()).collect();
            let g: Vec<Tensor> = picked.iter().map(|&i| grads[i].shallow_clone()).collect();
            shim::fused_sgd(&p, &g, &buffers, self, first)?;
        }
        Ok(())
    }

    /// One step of one parameter with separate tensor operations.
    pub(crate) fn single_step(
        &self,
        param: &Tensor,
        grad: &Tensor,
        state: &mut ParamState,
    ) -> Result<()> {
        let mut d = if self.maximize {
            grad.f_neg()?
        } else {
            grad.shallow_clone()
        };
        if self.weight_decay != 0.0 {
            d = d.f_add(&param.f_mul_scalar(self.weight_decay)?)?;
        }
        if self.momentum != 0.0 {
            let buffer = match state.get_mut("momentum_buffer") {
                Some(buffer) => {
                    let _ = buffer.f_mul_scalar_(self.momentum)?;
                    let _ = buffer.f_add_(&d.f_mul_scalar(1.0 - self.dampening)?)?;
                    buffer.shallow_clone()
                }
                None => {
                    let buffer = d.f_detach_copy()?;
                    state.insert("momentum_buffer".into(), buffer.shallow_clone());
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
