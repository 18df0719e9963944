//! [`Plugin`]: what `plugins` accepts.

use crate::environment::ClusterEnvironment;

/// A plugin passed through `plugins`, as in Lightning's
/// `Fabric(plugins=[MyCluster()])`.
///
/// Any [`ClusterEnvironment`] converts into a plugin, so a user's own
/// environment is passed as it is: `builder.plugin(MyCluster::new())`.
#[non_exhaustive]
pub enum Plugin {
    /// Where the processes of a run are and which rank this one is.
    ClusterEnvironment(Box<dyn ClusterEnvironment>),
}

impl<T: ClusterEnvironment> From<T> for Plugin {
    fn from(environment: T) -> Self {
        Plugin::ClusterEnvironment(Box::new(environment))
    }
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Plugin::ClusterEnvironment(env) => f
                .debug_tuple("ClusterEnvironment")
                .field(&env.name())
                .finish(),
        }
    }
}
