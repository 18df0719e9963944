//! [`Optimizer`]: named parameters, an [`Algorithm`] and the parameters'
//! states; what every algorithm shares.

use std::collections::{BTreeMap, BTreeSet};

use tch::{Device, Kind, Tensor};

use super::groups::{DEFAULT_GROUP, Group};
use super::rule::{Rule, pick};
use super::{Algorithm, ParamState, invalid};
use crate::error::Result;

/// An optimizer of fabric's: named parameters, an [`Algorithm`], and the
/// state tensors of every parameter. Built by [`Sgd::build`](super::Sgd::build),
/// [`Adam::build`](super::Adam::build) or
/// [`AdamW::new`](super::AdamW::new)`(..).build`, and set up with
/// [`Fabric::setup`](crate::Fabric::setup) like tch's optimizers.
///
/// Its parameters are in parameter [`groups`](Self::groups), each with its
/// own learning rate and weight decay (one group, `"default"`, unless built
/// with [`ParamGroup`](super::ParamGroup)s).
pub struct Optimizer {
    names: Vec<String>,
    params: Vec<Tensor>,
    algorithm: Algorithm,
    groups: Vec<Group>,
    states: Vec<ParamState>,
    fused: bool,
}

impl std::fmt::Debug for Optimizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Optimizer")
            .field("algorithm", &self.algorithm)
            .field("groups", &self.groups)
            .field("fused", &self.fused)
            .finish()
    }
}

impl Optimizer {
    /// An optimizer for `parameters`, after checking the hyperparameters,
    /// that no name is given twice and that every parameter is a
    /// floating-point tensor.
    pub(super) fn new(algorithm: Algorithm, parameters: Vec<(String, Tensor)>) -> Result<Self> {
        let members = (0..parameters.len()).collect();
        let group = Group {
            name: DEFAULT_GROUP.into(),
            algorithm,
            parameters: parameters.iter().map(|(n, _)| n.clone()).collect(),
            members,
        };
        Self::with_groups(algorithm, parameters, vec![group])
    }

    /// An optimizer for `parameters` in `groups` (which cover every
    /// parameter once), after the checks of [`new`](Self::new).
    pub(super) fn with_groups(
        algorithm: Algorithm,
        parameters: Vec<(String, Tensor)>,
        groups: Vec<Group>,
    ) -> Result<Self> {
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
            groups,
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

    /// The algorithm and the hyperparameters it was built with (each
    /// group's, with the group's learning rate and weight decay, are in
    /// [`groups`](Self::groups)).
    pub fn algorithm(&self) -> &Algorithm {
        &self.algorithm
    }

    /// The parameter groups, the one of the parameters no
    /// [`ParamGroup`](super::ParamGroup) selected (`"default"`) first.
    pub fn groups(&self) -> &[Group] {
        &self.groups
    }

    /// The learning rate of every group, in the order of
    /// [`groups`](Self::groups) (what a scheduler sets).
    pub fn lrs(&self) -> Vec<f64> {
        self.groups.iter().map(Group::lr).collect()
    }

    /// Sets the learning rate of every group, in the order of
    /// [`groups`](Self::groups); an error unless `lrs` has one finite
    /// learning rate >= 0 per group.
    pub fn set_lrs(&mut self, lrs: &[f64]) -> Result<()> {
        if let Some(bad) = lrs.iter().find(|lr| **lr < 0.0) {
            return Err(invalid(format!(
                "the learning rate {bad} is not accepted: learning rates are finite and >= 0"
            )));
        }
        self.set_scheduled_lrs(lrs)
    }

    /// Sets the learning rate of every group as a scheduler does: finite,
    /// and negative where PyTorch's formulas give a negative one (a linear
    /// one-cycle schedule's last step can).
    pub(crate) fn set_scheduled_lrs(&mut self, lrs: &[f64]) -> Result<()> {
        if lrs.len() != self.groups.len() {
            return Err(invalid(format!(
                "{} learning rates for {} parameter groups: give one per group",
                lrs.len(),
                self.groups.len()
            )));
        }
        if let Some(bad) = lrs.iter().find(|lr| !lr.is_finite()) {
            return Err(invalid(format!(
                "the learning rate {bad} is not accepted: learning rates are finite and >= 0"
            )));
        }
        for (group, &lr) in self.groups.iter_mut().zip(lrs) {
            group.algorithm.rule_mut().set_lr(lr);
        }
        Ok(())
    }

    /// Sets the momentum of every group (one per group, checked by the
    /// caller).
    pub(crate) fn set_momentums(&mut self, momentums: &[f64]) {
        for (group, &momentum) in self.groups.iter_mut().zip(momentums) {
            group.algorithm.rule_mut().set_momentum(momentum);
        }
    }

    /// `"sgd"`, `"adam"` or `"adamw"`.
    pub fn algorithm_name(&self) -> &'static str {
        self.algorithm.name()
    }

    /// The learning rate of the first group (the only one without
    /// [`ParamGroup`](super::ParamGroup)s).
    pub fn lr(&self) -> f64 {
        self.groups[0].lr()
    }

    /// Sets the learning rate of every group (as tch's `set_lr`); see
    /// [`set_lrs`](Self::set_lrs) for one per group.
    pub fn set_lr(&mut self, lr: f64) {
        for group in &mut self.groups {
            group.algorithm.rule_mut().set_lr(lr);
        }
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
        let grads = self
            .params
            .iter()
            .map(Tensor::f_grad)
            .collect::<std::result::Result<Vec<_>, _>>()?;
        for g in 0..self.groups.len() {
            let (rule, members) = (self.groups[g].algorithm, self.groups[g].members.clone());
            self.step_group(rule.rule(), &members, &grads)?;
        }
        Ok(())
    }

    /// Steps the parameters at `members` (increasing) with `rule`: grouped
    /// by (device, kind) for the fused kernels, the others one by one.
    fn step_group(&mut self, rule: &dyn Rule, members: &[usize], grads: &[Tensor]) -> Result<()> {
        let mut fused: Vec<((Device, Kind), Vec<usize>)> = Vec::new();
        let mut singles = Vec::new();
        for &i in members {
            let (param, grad) = (&self.params[i], &grads[i]);
            if !grad.defined() {
                continue;
            }
            let key = (param.device(), param.f_kind()?);
            if self.fused && fusable(key) && (grad.device(), grad.f_kind()?) == key {
                match fused.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, members)) => members.push(i),
                    None => fused.push((key, vec![i])),
                }
            } else {
                singles.push(i);
            }
        }
        for (_, members) in fused {
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
                &pick(grads, &members),
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

    /// Replaces the algorithm, the settings of each group (`groups`, one
    /// per group, checked by the caller) and the state of the parameters
    /// named in `states`; the others keep theirs.
    pub(crate) fn restore(
        &mut self,
        algorithm: Algorithm,
        groups: Vec<Algorithm>,
        states: BTreeMap<String, ParamState>,
    ) {
        self.algorithm = algorithm;
        for (group, settings) in self.groups.iter_mut().zip(groups) {
            group.algorithm = settings;
        }
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
