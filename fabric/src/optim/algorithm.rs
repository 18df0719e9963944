//! [`Algorithm`]: the optimization algorithms fabric has, in one list.

use serde::{Deserialize, Serialize};
use tch::Tensor;
use tch::nn::VarStore;

use super::groups::{ParamGroup, WithGroups};
use super::optimizer::Optimizer;
use super::rule::Rule;
use super::{Adam, Sgd};
use crate::error::Result;
use crate::vars::sorted_trainable as named_trainables;

/// Declares [`Algorithm`] from the list of rule types, with the one
/// dispatch from an algorithm to its [`Rule`], and each rule type's
/// `build` and `build_for`.
macro_rules! algorithms {
    ($($(#[$doc:meta])* $variant:ident($rule:ident),)*) => {
        /// An optimization algorithm and its hyperparameters, as an
        /// [`Optimizer`] steps with them and as a checkpoint records them
        /// (`{"algorithm": "adam", "lr": 0.001, ...}`).
        #[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
        #[serde(tag = "algorithm", rename_all = "lowercase")]
        pub enum Algorithm {
            $($(#[$doc])* $variant($rule),)*
        }

        impl Algorithm {
            /// The algorithm's rule.
            pub(super) fn rule(&self) -> &dyn Rule {
                match self {
                    $(Algorithm::$variant(rule) => rule,)*
                }
            }

            /// The algorithm's rule, mutably.
            pub(super) fn rule_mut(&mut self) -> &mut dyn Rule {
                match self {
                    $(Algorithm::$variant(rule) => rule,)*
                }
            }
        }

        $(
            impl From<$rule> for Algorithm {
                fn from(rule: $rule) -> Self {
                    Algorithm::$variant(rule)
                }
            }

            impl $rule {
                /// An optimizer for the trainable variables of `vs`, in the
                /// order of their names; an error if these settings are out
                /// of range.
                pub fn build(self, vs: &VarStore) -> Result<Optimizer> {
                    Optimizer::new(self.into(), named_trainables(vs))
                }

                /// An optimizer for the given named parameters; an error if
                /// these settings are out of range, a name is given twice or
                /// a parameter is not a floating-point tensor.
                pub fn build_for(self, parameters: Vec<(String, Tensor)>) -> Result<Optimizer> {
                    Optimizer::new(self.into(), parameters)
                }

                /// These settings with a parameter group, whose parameters
                /// get its learning rate and weight decay; add more with
                /// [`WithGroups::group`], then `build`. See [`ParamGroup`].
                pub fn group(self, group: ParamGroup) -> WithGroups {
                    WithGroups::new(self.into()).group(group)
                }
            }
        )*
    };
}

algorithms! {
    /// Stochastic gradient descent.
    Sgd(Sgd),
    /// Adam, or AdamW with decoupled weight decay.
    Adam(Adam),
}

impl Algorithm {
    /// `"sgd"`, `"adam"` or `"adamw"`.
    pub fn name(&self) -> &'static str {
        self.rule().name()
    }

    /// The learning rate.
    pub fn lr(&self) -> f64 {
        self.rule().lr()
    }

    /// The names of the state tensors a parameter has after its first step.
    pub fn state_names(&self) -> &'static [&'static str] {
        self.rule().state_names()
    }

    /// Checks the hyperparameters: an error says which are out of range and
    /// what is accepted.
    pub(crate) fn validate(&self) -> Result<()> {
        self.rule().validate()
    }

    /// These settings with the learning rate `lr`.
    pub(crate) fn with_lr(mut self, lr: f64) -> Self {
        self.rule_mut().set_lr(lr);
        self
    }
}
