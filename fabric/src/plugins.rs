//! [`Plugin`]: what `plugins` accepts.

use crate::environment::ClusterEnvironment;
use crate::precision::{BitsandbytesPrecision, MixedPrecision, PrecisionPlugin, TruePrecision};

/// A plugin passed through `plugins`, as in Lightning's
/// `Fabric(plugins=[MyCluster()])`.
///
/// Any [`ClusterEnvironment`] converts into a plugin, so a user's own
/// environment is passed as it is: `builder.plugin(MyCluster::new())`. The
/// built-in precision plugins convert too; a precision plugin of your own
/// goes through [`Plugin::precision`].
#[non_exhaustive]
pub enum Plugin {
    /// Where the processes of a run are and which rank this one is.
    ClusterEnvironment(Box<dyn ClusterEnvironment>),
    /// How the run handles numeric precision (instead of `precision`).
    Precision(Box<dyn PrecisionPlugin>),
}

impl Plugin {
    /// A precision plugin, to pass instead of the `precision` option.
    pub fn precision(plugin: impl PrecisionPlugin) -> Self {
        Plugin::Precision(Box::new(plugin))
    }
}

impl<T: ClusterEnvironment> From<T> for Plugin {
    fn from(environment: T) -> Self {
        Plugin::ClusterEnvironment(Box::new(environment))
    }
}

impl From<TruePrecision> for Plugin {
    fn from(plugin: TruePrecision) -> Self {
        Plugin::precision(plugin)
    }
}

impl From<MixedPrecision> for Plugin {
    fn from(plugin: MixedPrecision) -> Self {
        Plugin::precision(plugin)
    }
}

impl From<BitsandbytesPrecision> for Plugin {
    fn from(plugin: BitsandbytesPrecision) -> Self {
        Plugin::precision(plugin)
    }
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Plugin::ClusterEnvironment(env) => f
                .debug_tuple("ClusterEnvironment")
                .field(&env.name())
                .finish(),
            Plugin::Precision(precision) => {
                f.debug_tuple("Precision").field(&precision.name()).finish()
            }
        }
    }
}
