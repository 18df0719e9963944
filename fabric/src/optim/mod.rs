//! fabric's own optimizers, whose state is reachable and checkpointed:
//! [`Sgd`], [`Adam`] and [`AdamW`], matching `torch.optim`.
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

mod adam;
mod sgd;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

pub use adam::{Adam, AdamW};
pub use sgd::Sgd;

use crate::error::{Error, Result};

/// The state tensors of one parameter, by PyTorch's names (`momentum_buffer`;
/// `step`, `exp_avg`, `exp_avg_sq`, `max_exp_avg_sq`). Empty until the
/// parameter's first step.
pub type ParamState = BTreeMap<String, Tensor>;

/// An optimization algorithm and its hyperparameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "algorithm", rename_all = "lowercase")]
pub enum Algorithm {
    /// Stochastic gradient descent.
    Sgd(Sgd),
    /// Adam, or AdamW with decoupled weight decay.
    Adam(Adam),
}

impl Algorithm {
    /// `"sgd"`, `"adam"` or `"adamw"`.
    pub fn name(&self) -> &'static str {
        match self {
            Algorithm::Sgd(_) => "sgd",
            Algorithm::Adam(a) if a.decoupled_weight_decay => "adamw",
            Algorithm::Adam(_) => "adam",
        }
    }

    /// The learning rate.
    pub fn lr(&self) -> f64 {
        match self {
            Algorithm::Sgd(s) => s.lr,
            Algorithm::Adam(a) => a.lr,
        }
    }

    fn set_lr(&mut self, lr: f64) {
        match self {
            Algorithm::Sgd(s) => s.lr = lr,
            Algorithm::Adam(a) => a.lr = lr,
        }
    }

    fn validate(&self) -> Result<()> {
        match self {
            Algorithm::Sgd(s) => s.validate(),
            Algorithm::Adam(a) => a.validate(),
        }
    }

    /// The names of the state tensors a parameter has after its first step.
    pub fn state_names(&self) -> &'static [&'static str] {
        match self {
            Algorithm::Sgd(s) => s.state_names(),
            Algorithm::Adam(a) => a.state_names(),
        }
    }
}

fn invalid(message: String) -> Error {
    Error::InvalidArgument(message)
}

/// The trainable variables of `vs` with their names, sorted by name.
fn named_trainables(vs: &VarStore) -> Vec<(String, Tensor)> {
    let mut named: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .filter(|(_, t)| t.requires_grad())
        .collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    named
}

/// An optimizer of fabric's: named parameters, an [`Algorithm`], and the
/// state tensors of every parameter. Built by [`Sgd::build`],
/// [`Adam::build`] or [`AdamW::new`]`(..).build`, and set up with
/// [`Fabric::setup`](crate::Fabric::setup) like tch's optimizers.
pub struct Optimizer {
    names: Vec<String>,
    params: Vec<Tensor>,
    algorithm: Algorithm,
    states: Vec<ParamState>,
    fused: bool,
}

impl std::fmt::Debug for Optimizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Optimizer")
            .field("algorithm", &self.algorithm)
            .field("parameters", &self.names)
            .field("fused", &self.fused)
            .finish()
    }
}

impl Optimizer {
    fn new(algorithm: Algorithm, parameters: Vec<(String, Tensor)>) -> Result<Self> {
        algorithm.validate()?;
        let mut names = Vec::with_capacity(parameters.len());
        let mut params = Vec::with_capacity(parameters.len());
        for (name, tensor) in parameters {
            if names.contains(&name) {
                return Err(invalid(format!(
                    "the parameter name `{name}` is given twice"
                )));
            }
            if !tensor.is_floating_point() {
                return Err(invalid(format!(
                    "the parameter `{name}` is not a floating-point tensor ({:?})",
                    tensor.kind()
                )));
            }
            names.push(name);
            params.push(tensor);
        }
        let states = (0..params.len()).map(|_| ParamState::new()).collect();
        Ok(Optimizer {
            names,
            params,
            algorithm,
            states,
            fused: true,
        })
    }

    /// Whether steps use ATen's fused kernels where they apply (CPU and CUDA
    /// tensors of kind f32, f64, f16 and bf16); true by default. Both paths
    /// give the same results up to rounding.
    pub fn fused(mut self, fused: bool) -> Self {
        self.fused = fused;
        self
    }

    /// The algorithm and its hyperparameters.
    pub fn algorithm(&self) -> &Algorithm {
        &self.algorithm
    }

    /// `"sgd"`, `"adam"` or `"adamw"`.
    pub fn algorithm_name(&self) -> &'static str {
        self.algorithm.name()
    }

    /// The learning rate.
    pub fn lr(&self) -> f64 {
        self.algorithm.lr()
    }

    /// Sets the learning rate (for a schedule).
    pub fn set_lr(&mut self, lr: f64) {
        self.algorithm.set_lr(lr);
    }

    /// The parameters, in the order of [`parameter_names`](Self::parameter_names).
    pub fn parameters(&self) -> &[Tensor] {
        &self.params
    }

    /// The parameters' names (their `VarStore` paths, sorted, when built from
    /// a `VarStore`).
    pub fn parameter_names(&self) -> &[String] {
        &self.names
    }

    /// The state tensors of the parameter `name` (empty before its first
    /// step), or `None` when this optimizer has no such parameter.
    pub fn state(&self, name: &str) -> Option<&ParamState> {
        let index = self.names.iter().position(|n| n == name)?;
        Some(&self.states[index])
    }

    /// Sets the gradient of every parameter to zero.
    pub fn zero_grad(&mut self) {
        for param in &self.params {
            let mut grad = param.grad();
            if grad.defined() {
                let _ = grad.zero_();
            }
        }
    }

    /// Updates every parameter that has a gradient; parameters without one
    /// are skipped, as in PyTorch.
    pub fn step(&mut self) -> Result<()> {
        tch::no_grad(|| self.step_inner())
    }

    fn step_inner(&mut self) -> Result<()> {
        let grads: Vec<Tensor> = self.params.iter().map(Tensor::grad).collect();
        // Parameters grouped by (device, kind) for the fused kernels, the
        // others one by one.
        let mut groups: Vec<((Device, Kind), Vec<usize>)> = Vec::new();
        let mut singles = Vec::new();
        for (i, grad) in grads.iter().enumerate() {
            if !grad.defined() {
                continue;
            }
            let key = (self.params[i].device(), self.params[i].kind());
            if self.fused && fusable(key) && grad.kind() == key.1 && grad.device() == key.0 {
                match groups.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, members)) => members.push(i),
                    None => groups.push((key, vec![i])),
                }
            } else {
                singles.push(i);
            }
        }
        for (_, members) in groups {
            let params: Vec<Tensor> = members
                .iter()
                .map(|&i| self.params[i].shallow_clone())
                .collect();
            let group_grads: Vec<Tensor> =
                members.iter().map(|&i| grads[i].shallow_clone()).collect();
            let mut states: Vec<&mut ParamState> = self
                .states
                .iter_mut()
                .enumerate()
                .filter(|(i, _)| members.contains(i))
                .map(|(_, s)| s)
                .collect();
            match &self.algorithm {
                Algorithm::Sgd(s) => s.fused_step(&params, &group_grads, &mut states)?,
                Algorithm::Adam(a) => a.fused_step(&params, &group_grads, &mut states)?,
            }
        }
        for i in singles {
            let (param, grad, state) = (&self.params[i], &grads[i], &mut self.states[i]);
            match &self.algorithm {
                Algorithm::Sgd(s) => s.single_step(param, grad, state)?,
                Algorithm::Adam(a) => a.single_step(param, grad, state)?,
            }
        }
        Ok(())
    }

    /// Every state tensor: (parameter name, state name, tensor).
    pub(crate) fn state_tensors(&self) -> Vec<(&str, &str, &Tensor)> {
        let mut all = Vec::new();
        for (name, state) in self.names.iter().zip(&self.states) {
            for (key, tensor) in state {
                all.push((name.as_str(), key.as_str(), tensor));
            }
        }
        all
    }

    /// Replaces the algorithm and the state of the parameters named in
    /// `states` (checked by the caller); the others keep theirs.
    pub(crate) fn restore(&mut self, algorithm: Algorithm, states: BTreeMap<String, ParamState>) {
        self.algorithm = algorithm;
        for (name, state) in states {
            if let Some(index) = self.names.iter().position(|n| *n == name) {
                self.states[index] = state;
            }
        }
    }
}

fn fusable((device, kind): (Device, Kind)) -> bool {
    matches!(device, Device::Cpu | Device::Cuda(_))
        && matches!(
            kind,
            Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16
        )
}
