//! Parameter groups: [`ParamGroup`] (which parameters, with which learning
//! rate and weight decay), [`WithGroups`] (an algorithm's settings with its
//! groups, to build from) and [`Group`] (a group of a built optimizer).

use std::sync::Arc;

use tch::Tensor;
use tch::nn::VarStore;

use super::{Algorithm, Optimizer, invalid};
use crate::error::Result;
use crate::vars::sorted_trainable as named_trainables;

/// The name of the group of the parameters no [`ParamGroup`] selects.
pub const DEFAULT_GROUP: &str = "default";

type Select = Arc<dyn Fn(&str, &Tensor) -> bool + Send + Sync>;

/// A parameter group to build an optimizer with, as one of the dicts of
/// PyTorch's `param_groups`: the parameters it selects (by name and
/// tensor), and the learning rate and weight decay they get instead of the
/// optimizer's. Parameters that no group selects form the group
/// [`"default"`](DEFAULT_GROUP), first, with the optimizer's settings.
///
/// [`ParamGroup::no_weight_decay`] is the standard transformer recipe: no
/// weight decay on biases and on the weights of normalisation layers.
///
/// ```
/// use fabric::optim::{AdamW, ParamGroup};
/// use tch::nn;
///
/// # fn main() -> fabric::Result<()> {
/// let vs = nn::VarStore::new(tch::Device::Cpu);
/// let _body = nn::linear(vs.root() / "body", 4, 4, Default::default());
/// let _norm = nn::layer_norm(vs.root() / "norm", vec![4], Default::default());
/// let _head = nn::linear(vs.root() / "head", 4, 2, Default::default());
/// let opt = AdamW::new(1e-3)
///     .weight_decay(0.1)
///     .group(ParamGroup::no_weight_decay())
///     .group(ParamGroup::names("head", ["head.weight"]).lr(1e-2))
///     .build(&vs)?;
/// let groups = opt.groups();
/// assert_eq!(groups[0].name(), "default");
/// assert_eq!(groups[0].parameters(), ["body.weight"]);
/// assert_eq!(groups[1].parameters(), ["body.bias", "head.bias", "norm.bias", "norm.weight"]);
/// assert_eq!(groups[1].weight_decay(), 0.0);
/// assert_eq!((groups[2].lr(), groups[2].weight_decay()), (1e-2, 0.1));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ParamGroup {
    name: String,
    select: Select,
    /// Names `names` selects, for an error when one is not a parameter.
    listed: Vec<String>,
    lr: Option<f64>,
    weight_decay: Option<f64>,
}

impl std::fmt::Debug for ParamGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParamGroup")
            .field("name", &self.name)
            .field("lr", &self.lr)
            .field("weight_decay", &self.weight_decay)
            .finish()
    }
}

/// Whether a parameter is a bias or the weight of a normalisation layer,
/// the parameters that the standard transformer recipe does not decay: its
/// last name component is `bias`, or it has fewer than two dimensions
/// (the weights of layer, batch and group norms, and RMSNorm scales), as
/// in nanoGPT's `configure_optimizers`.
///
/// ```
/// use fabric::optim::is_bias_or_norm;
/// use tch::{Kind, Tensor};
///
/// let vector = Tensor::zeros([4], (Kind::Float, tch::Device::Cpu));
/// let matrix = Tensor::zeros([4, 4], (Kind::Float, tch::Device::Cpu));
/// assert!(is_bias_or_norm("ln.weight", &vector));
/// assert!(is_bias_or_norm("fc.bias", &vector));
/// assert!(!is_bias_or_norm("fc.weight", &matrix));
/// ```
pub fn is_bias_or_norm(name: &str, tensor: &Tensor) -> bool {
    name.rsplit('.').next() == Some("bias") || tensor.dim() < 2
}

impl ParamGroup {
    /// The group `name` of the parameters for which `select(name, tensor)`
    /// is true.
    pub fn new(
        name: impl Into<String>,
        select: impl Fn(&str, &Tensor) -> bool + Send + Sync + 'static,
    ) -> Self {
        ParamGroup {
            name: name.into(),
            select: Arc::new(select),
            listed: Vec::new(),
            lr: None,
            weight_decay: None,
        }
    }

    /// The group `name` of the parameters named in `names`; a name that is
    /// not a parameter is an error when the optimizer is built.
    pub fn names<S: Into<String>>(
        name: impl Into<String>,
        names: impl IntoIterator<Item = S>,
    ) -> Self {
        let listed: Vec<String> = names.into_iter().map(Into::into).collect();
        let selected = listed.clone();
        ParamGroup {
            listed,
            ..ParamGroup::new(name, move |n, _| selected.iter().any(|s| s == n))
        }
    }

    /// The group `"no_decay"` of the biases and the weights of
    /// normalisation layers ([`is_bias_or_norm`]), with no weight decay:
    /// the standard transformer recipe.
    pub fn no_weight_decay() -> Self {
        ParamGroup::new("no_decay", is_bias_or_norm).weight_decay(0.0)
    }

    /// The group's learning rate (the optimizer's by default).
    pub fn lr(mut self, lr: f64) -> Self {
        self.lr = Some(lr);
        self
    }

    /// The group's weight decay (the optimizer's by default).
    pub fn weight_decay(mut self, weight_decay: f64) -> Self {
        self.weight_decay = Some(weight_decay);
        self
    }

    /// The group's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// An algorithm's settings with parameter groups, made by the settings'
/// `group` method ([`Sgd::group`](super::Sgd::group),
/// [`Adam::group`](super::Adam::group)); see [`ParamGroup`].
#[derive(Debug, Clone)]
pub struct WithGroups {
    algorithm: Algorithm,
    groups: Vec<ParamGroup>,
}

impl WithGroups {
    pub(super) fn new(algorithm: Algorithm) -> Self {
        WithGroups {
            algorithm,
            groups: Vec::new(),
        }
    }

    /// Adds a group.
    pub fn group(mut self, group: ParamGroup) -> Self {
        self.groups.push(group);
        self
    }

    /// An optimizer for the trainable variables of `vs`, in the order of
    /// their names; an error if a group selects no parameter, a parameter
    /// is in two groups, two groups have the same name, or a group's
    /// settings are out of range.
    pub fn build(self, vs: &VarStore) -> Result<Optimizer> {
        self.build_for(named_trainables(vs))
    }

    /// An optimizer for the given named parameters, with the errors of
    /// [`build`](Self::build) and those of the settings' `build_for`.
    pub fn build_for(self, parameters: Vec<(String, Tensor)>) -> Result<Optimizer> {
        let groups = assign(&self.algorithm, &self.groups, &parameters)?;
        Optimizer::with_groups(self.algorithm, parameters, groups)
    }
}

/// A parameter group of an [`Optimizer`]: its name, its settings (the
/// optimizer's with the group's learning rate and weight decay) and its
/// parameters. [`Optimizer::groups`] lists them.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub(super) name: String,
    pub(super) algorithm: Algorithm,
    pub(super) parameters: Vec<String>,
    /// The indices of `parameters` in the optimizer's parameters, increasing.
    pub(super) members: Vec<usize>,
}

impl Group {
    /// The group's name: [`"default"`](DEFAULT_GROUP) for the parameters no
    /// [`ParamGroup`] selected.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The algorithm and the settings this group steps with.
    pub fn algorithm(&self) -> &Algorithm {
        &self.algorithm
    }

    /// The group's learning rate.
    pub fn lr(&self) -> f64 {
        self.algorithm.lr()
    }

    /// The group's weight decay.
    pub fn weight_decay(&self) -> f64 {
        self.algorithm.rule().weight_decay()
    }

    /// The group's momentum: SGD's momentum, Adam's first beta (what a
    /// [`OneCycle`](super::OneCycle) schedule cycles).
    pub fn momentum(&self) -> f64 {
        self.algorithm.rule().momentum()
    }

    /// The names of the group's parameters, in the optimizer's order.
    pub fn parameters(&self) -> &[String] {
        &self.parameters
    }
}

/// The groups of `parameters` under `algorithm`: the default group first
/// (left out when empty, unless it is the only one), then `groups` in
/// order.
fn assign(
    algorithm: &Algorithm,
    groups: &[ParamGroup],
    parameters: &[(String, Tensor)],
) -> Result<Vec<Group>> {
    for (i, group) in groups.iter().enumerate() {
        if group.name == DEFAULT_GROUP || group.name.is_empty() {
            return Err(invalid(format!(
                "a parameter group cannot be named `{}`: `{DEFAULT_GROUP}` holds the parameters no group selects; give it another, non-empty name",
                group.name
            )));
        }
        if groups[..i].iter().any(|g| g.name == group.name) {
            return Err(invalid(format!(
                "two parameter groups are named `{}`: give each its own name",
                group.name
            )));
        }
        if let Some(missing) = group
            .listed
            .iter()
            .find(|n| !parameters.iter().any(|(p, _)| p == *n))
        {
            return Err(invalid(format!(
                "parameter group `{}` names `{missing}`, which is not a parameter of this optimizer (they are: {})",
                group.name,
                names(parameters.iter().map(|(n, _)| n.as_str()))
            )));
        }
    }
    let mut owner: Vec<Option<usize>> = vec![None; parameters.len()];
    for (g, group) in groups.iter().enumerate() {
        for (i, (name, tensor)) in parameters.iter().enumerate() {
            if !(group.select)(name, tensor) {
                continue;
            }
            if let Some(first) = owner[i] {
                return Err(invalid(format!(
                    "the parameter `{name}` is in the parameter groups `{}` and `{}`: a parameter belongs to one group (make the selections disjoint)",
                    groups[first].name, group.name
                )));
            }
            owner[i] = Some(g);
        }
    }
    let mut built = Vec::new();
    let default: Vec<usize> = (0..parameters.len())
        .filter(|&i| owner[i].is_none())
        .collect();
    if !default.is_empty() || groups.is_empty() {
        built.push(group(DEFAULT_GROUP, *algorithm, default, parameters));
    }
    for (g, spec) in groups.iter().enumerate() {
        let members: Vec<usize> = (0..parameters.len())
            .filter(|&i| owner[i] == Some(g))
            .collect();
        if members.is_empty() {
            return Err(invalid(format!(
                "parameter group `{}` selects no parameter; the parameters are: {}",
                spec.name,
                names(parameters.iter().map(|(n, _)| n.as_str()))
            )));
        }
        let mut settings = *algorithm;
        if let Some(lr) = spec.lr {
            settings.rule_mut().set_lr(lr);
        }
        if let Some(weight_decay) = spec.weight_decay {
            settings.rule_mut().set_weight_decay(weight_decay);
        }
        settings
            .validate()
            .map_err(|e| invalid(format!("parameter group `{}`: {e}", spec.name)))?;
        built.push(group(&spec.name, settings, members, parameters));
    }
    Ok(built)
}

fn group(
    name: &str,
    algorithm: Algorithm,
    members: Vec<usize>,
    parameters: &[(String, Tensor)],
) -> Group {
    Group {
        name: name.to_owned(),
        algorithm,
        parameters: members.iter().map(|&i| parameters[i].0.clone()).collect(),
        members,
    }
}

/// `a, b, c`, or `none` for no names.
fn names<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let all: Vec<&str> = names.collect();
    if all.is_empty() {
        "none".into()
    } else {
        all.join(", ")
    }
}
