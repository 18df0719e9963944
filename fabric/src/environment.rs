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
///     fn main_address(&self) -> String { "10.0.0.1".into() }
///     fn main_port(&self) -> u16 { 29500 }
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

    /// The address of the process with global rank 0.
    fn main_address(&self) -> String;

    /// The port the process with global rank 0 listens on.
    fn main_port(&self) -> u16;

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
}

/// The environment of a single process started plainly, with no launcher:
/// world size 1, every rank 0, main address `127.0.0.1`.
#[derive(Debug, Clone, Default)]
pub struct SingleProcessEnvironment;

impl ClusterEnvironment for SingleProcessEnvironment {
    fn name(&self) -> &str {
        "single process"
    }
    fn creates_processes_externally(&self) -> bool {
        false
    }
    fn main_address(&self) -> String {
        "127.0.0.1".into()
    }
    fn main_port(&self) -> u16 {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn global_rank(&self) -> usize {
        0
    }
}
