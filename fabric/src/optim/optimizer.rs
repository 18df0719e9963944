//! [`Optimizer`]: named parameters, an [`Algorithm`] and the parameters'
//! states; what every algorithm shares.

use std::collections::{BTreeMap, BTreeSet};

use tch::{Device, Kind, Tensor};

use super::rule::pick;
use super::{Algorithm, ParamState, invalid};
use crate::error::Result;

/// An optimizer of fabric's: named parameters, an [`Algorithm`], and the
/// state tensors of every parameter. Built by [`Sgd::build`](super::Sgd::build),
/// [`Adam::build`](super::Adam::build) or
/// [`AdamW::new`](super::AdamW::new)`(..).build`, and set up with
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
    /// An optimizer for `parameters`, after checking the hyperparameters,
    /// that no name is given twice and that every parameter is a
    /// floating-point tensor.
    pub(super) fn new(algorithm: Algorithm, parameters: Vec<(String, Tensor)>) -> Result<Self> {
        algorithm.validate()?;
        let mut seen = BTreeSet::new();
        for (name, tensor) in &parameters {
            if !seen.insert(name.as_str()) {
                return Err(invalid(format!(
                    "the parameter name `{name}` is given twice"
                )));
            }
            if !tensor.f_is_floating_point()? {
                return Err(invalid(format!(
                    "the parameter `{name}` is not a floating-point tensor ({:?})",
                    tensor.f_kind()?
                )));
            }
        }
        let (names, params): (Vec<String>, Vec<Tensor>) = parameters.into_iter().unzip();
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
        self.algorithm.rule_mut().set_lr(lr);
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
        let rule = self.algorithm.rule();
        let grads = self
            .params
            .iter()
            .map(Tensor::f_grad)
            .collect::<std::result::Result<Vec<_>, _>>()?;
        // Parameters grouped by (device, kind) for the fused kernels, the
        // others one by one.
        let mut groups: Vec<((Device, Kind), Vec<usize>)> = Vec::new();
        let mut singles = Vec::new();
        for (i, (param, grad)) in self.params.iter().zip(&grads).enumerate() {
            if !grad.defined() {
                continue;
            }
            let key = (param.device(), param.f_kind()?);
            if self.fused && fusable(key) && (grad.device(), grad.f_kind()?) == key {
                match groups.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, members)) => members.push(i),
                    None => groups.push((key, vec![i])),
                }
            } else {
                singles.push(i);
            }
        }
        for (_, members) in groups {
            // `members` is in increasing order.
            let mut states: Vec<&mut ParamState> = self
                .states
                .iter_mut()
                .enumerate()
                .filter(|(i, _)| members.binary_search(i).is_ok())
                .map(|(_, state)| state)
                .collect();
            rule.fused_step(
                &pick(&self.params, &members),
                &pick(&grads, &members),
                &mut states,
            )?;
        }
        for i in singles {
            rule.step(&self.params[i], &grads[i], &mut self.states[i])?;
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

/// Whether ATen's fused optimizer kernels take tensors of this device and
/// kind.
fn fusable((device, kind): (Device, Kind)) -> bool {
    matches!(device, Device::Cpu | Device::Cuda(_))
        && matches!(
            kind,
            Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16
        )
}
