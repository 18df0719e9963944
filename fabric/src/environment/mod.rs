//! [`ClusterEnvironment`]: where the processes of a run are, and which one
//! this is.

/// Where the processes of a training run are and which rank this process
/// has, as Lightning's `ClusterEnvironment`.
///
/// Pass your own through `plugins` to run on a cluster fabric does not know:
///
/// ```
/// use fabric::ClusterEnvironment;
///
/// struct MyCluster;
///
/// impl ClusterEnvironment for MyCluster {
///     fn world_size(&self) -> usize { 1 }
///     fn global_rank(&self) -> usize { 0 }
/// }
///
/// let fabric = fabric::Fabric::builder().accelerator("cpu").plugin(MyCluster).build().unwrap();
/// assert_eq!(fabric.environment_name(), "MyCluster");
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a cluster environment",
    label = "this is passed as a plugin",
    note = "`plugins` takes cluster environments: implement `fabric::ClusterEnvironment` for `{Self}`"
)]
pub trait ClusterEnvironment: Send + 'static {
    /// A name for messages; the type's name by default.
    fn name(&self) -> &str {
        let full = std::any::type_name::<Self>();
        full.rsplit("::").next().unwrap_or(full)
    }

    /// Whether something outside fabric (a scheduler, `mpirun`, ...) starts
    /// the processes. `true` by default: a user's environment describes
    /// processes that already run.
    fn creates_processes_externally(&self) -> bool {
        true
    }

    /// How many processes take part, over all nodes.
    fn world_size(&self) -> usize;

    /// This process's rank among all processes, from 0.
    fn global_rank(&self) -> usize;

    /// This process's rank among the processes of its node; the global rank
    /// by default (one node).
    fn local_rank(&self) -> usize {
        self.global_rank()
    }

    /// This node's rank among the nodes; 0 by default (one node).
    fn node_rank(&self) -> usize {
        0
    }

    /// How many nodes take part, where the environment says; `None` when it
    /// does not (then `num_nodes` is not checked against it).
    fn num_nodes(&self) -> Option<usize> {
        None
    }
}

/// The environment of a single process started plainly, with no launcher:
/// world size 1, every rank 0.
#[derive(Debug, Clone, Default)]
pub struct SingleProcessEnvironment;

impl ClusterEnvironment for SingleProcessEnvironment {
    fn name(&self) -> &str {
        "single process"
    }
    fn creates_processes_externally(&self) -> bool {
        false
    }
    fn world_size(&self) -> usize {
        1
    }
    fn global_rank(&self) -> usize {
        0
    }
}

mod mpi;
mod slurm;
mod torchelastic;

pub use mpi::MpiEnvironment;
pub(crate) use slurm::requeue_job_id;
pub use slurm::{SlurmEnvironment, expand_hostlist};
pub use torchelastic::TorchElasticEnvironment;

/// Reads an environment variable as a number; `None` when unset, an error
/// naming the variable when set to something else.
pub(crate) fn env_number(environment: &str, name: &str) -> crate::Result<Option<usize>> {
    match std::env::var(name) {
        Ok(value) => value
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| crate::Error::ClusterEnvironment {
                environment: environment.to_owned(),
                message: format!("{name}={value:?} is not a non-negative integer"),
            }),
        Err(_) => Ok(None),
    }
}

/// Like [`env_number`], for a variable the environment cannot do without.
pub(crate) fn required_number(environment: &str, name: &str) -> crate::Result<usize> {
    env_number(environment, name)?.ok_or_else(|| crate::Error::ClusterEnvironment {
        environment: environment.to_owned(),
        message: format!("{name} is not set"),
    })
}

/// The cluster environment the process was started in, as Lightning picks
/// it: SLURM, then torchrun (torchelastic), then Open MPI (first for the
/// ranks fabric's own launcher starts); `None` for a process started
/// plainly.
pub fn detect() -> crate::Result<Option<Box<dyn ClusterEnvironment>>> {
    // The ranks fabric's launcher starts are Open MPI ranks; SLURM or
    // torchrun variables they inherited describe the process that launched
    // them.
    if crate::switches::launched() && MpiEnvironment::detect() {
        return Ok(Some(Box::new(MpiEnvironment::from_env()?)));
    }
    if SlurmEnvironment::detect() {
        return Ok(Some(Box::new(SlurmEnvironment::from_env()?)));
    }
    if TorchElasticEnvironment::detect() {
        return Ok(Some(Box::new(TorchElasticEnvironment::from_env()?)));
    }
    if MpiEnvironment::detect() {
        return Ok(Some(Box::new(MpiEnvironment::from_env()?)));
    }
    Ok(None)
}
