//! The connector: Lightning's `_Connector`, resolution in one place and
//! nothing else. Checked options, the cluster environment and facts about
//! the machine go in; the accelerator, this process's devices, the strategy
//! object, the precision plugin and the launch plan come out. It starts,
//! joins and allocates nothing, and asks the machine only through
//! [`Machine`], so every rule is a unit test (`connector/tests.rs`).

use fabric_options::{Accelerator, Devices, Options};
use tch::Device;

use crate::accelerator::{self, ResolvedAccelerator};
use crate::collectives;
use crate::environment::{ClusterEnvironment, SingleProcessEnvironment};
use crate::error::{Error, Result};
use crate::machine::Machine;
use crate::precision::{self, PrecisionPlugin};
use crate::strategy::{self, ProcessModel, Strategy};

#[cfg(test)]
mod tests;

/// How many processes per core fabric's own launcher starts at most: more
/// only thrash (and `mpirun` spins for ever trying to start 100000).
pub(crate) const MAX_PROCESSES_PER_CORE: usize = 32;

/// What the builder hands the connector.
pub(crate) struct Request {
    /// The options, parsed and checked.
    pub(crate) options: Options,
    /// Whether `num_nodes` was given (it is checked against the cluster
    /// environment only then).
    pub(crate) num_nodes_given: bool,
    /// A strategy object given instead of a name.
    pub(crate) strategy: Option<Box<dyn Strategy>>,
    /// A precision plugin given instead of `precision`.
    pub(crate) precision: Option<Box<dyn PrecisionPlugin>>,
    /// The cluster environment given, or detected; `None` for a process
    /// started plainly.
    pub(crate) environment: Option<Box<dyn ClusterEnvironment>>,
    /// Whether fabric's launcher started this process (as a rank).
    pub(crate) launched: bool,
    /// Whether this process is a `ddp_spawn` worker.
    pub(crate) spawn_worker: bool,
    /// `dp` over these devices, repeats allowed (tests of `dp` without
    /// GPUs).
    pub(crate) simulated_dp: Option<Vec<Device>>,
}

/// What the connector resolved.
pub(crate) struct Connection {
    pub(crate) accelerator: ResolvedAccelerator,
    /// The devices of this process: one, or under `dp` several.
    pub(crate) devices: Vec<Device>,
    pub(crate) strategy: Box<dyn Strategy>,
    pub(crate) precision: Box<dyn PrecisionPlugin>,
    pub(crate) environment: Box<dyn ClusterEnvironment>,
    /// The nodes of the run: the environment's count, or `num_nodes`.
    pub(crate) num_nodes: usize,
    /// Whether /dev/shm has room for the shared-memory all-reduce window of
    /// a run of several processes on one machine.
    pub(crate) shared_memory_room: bool,
    pub(crate) plan: Plan,
    /// Things worth saying that are not errors (oversubscribed cores).
    pub(crate) warnings: Vec<String>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("accelerator", &self.accelerator)
            .field("devices", &self.devices)
            .field("strategy", &self.strategy.name())
            .field("precision", &self.precision.name())
            .field("environment", &self.environment.name())
            .field("plan", &self.plan)
            .finish()
    }
}

/// What happens next in this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Plan {
    /// This process trains: alone, or as a rank of a run that exists.
    Train,
    /// This process starts `processes` ranks on this machine (fabric's
    /// launcher) and does not train itself.
    Start {
        processes: usize,
        /// Whether the ranks run a function (`ddp_spawn`) rather than the
        /// program.
        spawn: bool,
        /// Whether the ranks run on CUDA devices (NCCL on their library
        /// path).
        cuda: bool,
    },
}

fn environment_error(env: &dyn ClusterEnvironment, message: String) -> Error {
    Error::ClusterEnvironment {
        environment: env.name().to_owned(),
        message,
    }
}

/// The error of a build without the `mpi` feature asked for `processes`
/// processes under `strategy` (a built-in one; a strategy of the user's
/// own may bring its own transport), said before any rank starts.
fn without_mpi(strategy: &str, processes: usize) -> Error {
    Error::FeatureDisabled {
        feature: "mpi",
        needed_by: format!(
            "\"{strategy}\" over {processes} processes (fabric's collectives between processes run on Open MPI, which also starts NCCL's)"
        ),
    }
}

/// Resolves `request` on `machine`.
pub(crate) fn connect(request: Request, machine: &dyn Machine) -> Result<Connection> {
    let Request {
        options,
        num_nodes_given,
        strategy: strategy_object,
        precision: precision_plugin,
        environment,
        launched,
        spawn_worker,
        simulated_dp,
    } = request;
    // A cluster environment (given or detected) made this process: it
    // decides how many processes there are.
    let in_cluster = environment.is_some();
    let environment = environment.unwrap_or_else(|| Box::new(SingleProcessEnvironment));
    validate_environment(&*environment)?;
    let world = environment.world_size();

    // `devices = 0`/`None` mean the CPU (the seed's documented default), so
    // with `accelerator = "auto"` they pick the CPU even where CUDA is.
    let accelerator = if options.devices == Devices::Cpu && options.accelerator == Accelerator::Auto
    {
        ResolvedAccelerator::Cpu
    } else {
        accelerator::resolve(options.accelerator, machine)?
    };
    let mut devices = accelerator::select_devices(accelerator, &options.devices, machine)?;

    let named = options.strategy;
    let mut strategy: Option<Box<dyn Strategy>> = match strategy_object {
        Some(object) => Some(object),
        None if named == fabric_options::Strategy::Auto => None,
        // "ddp_find_unused_parameters_true", the one name with this flag.
        None if named == fabric_options::Strategy::Ddp
            && options.strategy_params.find_unused_parameters =>
        {
            Some(Box::new(
                strategy::DdpStrategy::new().find_unused_parameters(true),
            ))
        }
        None => Some(
            strategy::from_name(named).ok_or_else(|| Error::NotAvailableYet {
                option: "strategy",
                value: format!("\"{named}\""),
                reason: "fabric runs \"single_device\", \"dp\", \"ddp\" and \"ddp_spawn\"".into(),
            })?,
        ),
    };
    let model = strategy.as_ref().map(|s| s.process_model());

    if options.devices == Devices::Auto
        && (model == Some(ProcessModel::OneDevice)
            || (in_cluster && world == 1 && model != Some(ProcessModel::OneProcess)))
    {
        // "auto" devices are every GPU, but `single_device` uses one, and a
        // cluster environment that started one process (SLURM with one
        // task, torchrun with one worker) keeps it one process (on one
        // device, unless `dp` spreads that process over all).
        devices.truncate(1);
    }
    let num_nodes = options.num_nodes.get() as usize;
    let mut warnings = Vec::new();

    let plan;
    let mut nodes = num_nodes;
    let mut node_devices = devices;
    if world > 1 {
        // This process is a rank of a run that exists.
        nodes = match environment.num_nodes() {
            Some(n) if num_nodes_given && n != num_nodes => {
                return Err(environment_error(
                    &*environment,
                    format!(
                        "it reports {n} node(s), but `num_nodes = {num_nodes}`; set `num_nodes = {n}`"
                    ),
                ));
            }
            Some(n) => n,
            None => num_nodes,
        };
        let per_node = world.div_ceil(nodes);
        if options.devices != Devices::Auto && node_devices.len() * nodes != world {
            return Err(environment_error(
                &*environment,
                format!(
                    "it reports {world} processes, but `devices = {}` on {nodes} node(s) makes {}; set `devices = {per_node}` (processes per node)",
                    options.devices,
                    node_devices.len() * nodes
                ),
            ));
        }
        match model {
            None | Some(ProcessModel::PerDevice { spawn: false }) => {}
            Some(ProcessModel::PerDevice { spawn: true }) if spawn_worker => {}
            Some(ProcessModel::PerDevice { spawn: true }) => {
                return Err(environment_error(
                    &*environment,
                    "its launcher created the processes already; `ddp_spawn` starts processes itself: use `strategy = \"ddp\"`".into(),
                ));
            }
            Some(_) => {
                let name = strategy.as_ref().map_or("auto", |s| s.name());
                return Err(environment_error(
                    &*environment,
                    format!("it runs {world} processes, which \"{name}\" cannot use; use \"ddp\""),
                ));
            }
        }
        if strategy.is_none() {
            strategy = strategy::from_name(fabric_options::Strategy::Ddp);
        }
        if options.devices == Devices::Auto {
            node_devices =
                accelerator::select_devices(accelerator, &Devices::Count(per_node), machine)?;
        }
        plan = Plan::Train;
    } else if model == Some(ProcessModel::OneProcess) {
        // One process, whatever the number of devices.
        plan = Plan::Train;
    } else {
        let processes = node_devices.len() * num_nodes;
        if processes == 1 {
            if strategy.is_none() {
                strategy = strategy::from_name(fabric_options::Strategy::SingleDevice);
            }
            plan = Plan::Train;
        } else {
            // Without the MPI transport no launcher would help: said
            // before "use a cluster launcher" (the process count is checked
            // first, it is wrong in any build).
            let built_in = strategy.as_deref().is_none_or(strategy::is_built_in);
            let no_mpi = !machine.mpi_transport() && built_in;
            if num_nodes > 1 && no_mpi {
                let name = strategy.as_ref().map_or("ddp", |s| s.name());
                return Err(without_mpi(name, processes));
            }
            if num_nodes > 1 {
                return Err(Error::Launch(format!(
                    "`num_nodes = {num_nodes}` needs the processes of every node started by a cluster launcher (`mpirun` across hosts, or `srun --mpi=pmix`); fabric's own launcher starts processes on this machine only"
                )));
            }
            let spawn = match model {
                None | Some(ProcessModel::PerDevice { spawn: false }) => false,
                Some(ProcessModel::PerDevice { spawn: true }) => true,
                Some(_) => {
                    let name = strategy.as_ref().map_or("auto", |s| s.name());
                    return Err(Error::InvalidArgument(format!(
                        "\"{name}\" runs on one device, but {processes} were selected; use \"ddp\""
                    )));
                }
            };
            if launched {
                return Err(Error::Launch(format!(
                    "this process is a rank that fabric's launcher started, but it finds itself alone (cluster environment \"{}\", world size {world}), so it would start ranks again; run the program under one launcher only",
                    environment.name(),
                )));
            }
            let cores = machine.cores().max(1);
            let limit = cores * MAX_PROCESSES_PER_CORE;
            if processes > limit {
                return Err(Error::TooManyProcesses {
                    requested: processes,
                    limit,
                    cores,
                });
            }
            if accelerator == ResolvedAccelerator::Cpu && processes > cores {
                warnings.push(format!(
                    "starting {processes} processes on {cores} core(s): each process gets a share of a core, which is slower than fewer processes"
                ));
            }
            if no_mpi {
                let name = strategy.as_ref().map_or("ddp", |s| s.name());
                return Err(without_mpi(name, processes));
            }
            if strategy.is_none() {
                strategy = strategy::from_name(fabric_options::Strategy::Ddp);
            }
            plan = Plan::Start {
                processes,
                spawn,
                cuda: accelerator == ResolvedAccelerator::Cuda,
            };
        }
    }
    let strategy = strategy.expect("every branch above resolves the strategy");

    // The devices of this process: under `dp` every device of the node,
    // otherwise its local rank's.
    let devices = if strategy.process_model() == ProcessModel::OneProcess {
        match simulated_dp.filter(|d| !d.is_empty()) {
            Some(devices) => devices,
            None if accelerator == ResolvedAccelerator::Cuda => node_devices,
            None => {
                return Err(Error::InvalidArgument(format!(
                    "\"{}\" splits each batch between the CUDA devices of one process, but the accelerator is \"{}\" (this machine has: {}); use `strategy = \"ddp\"` to train with several processes",
                    strategy.name(),
                    accelerator.name(),
                    accelerator::available(machine)
                )));
            }
        }
    } else {
        vec![node_devices[environment.local_rank() % node_devices.len()]]
    };
    let device = devices[0];
    let several_processes = world > 1 || matches!(plan, Plan::Start { .. });
    // A world a launcher started (fabric's own launcher was refused above).
    if world > 1
        && !machine.mpi_transport()
        && strategy::is_built_in(&*strategy)
        && (device.is_cuda() || device == Device::Cpu)
    {
        return Err(without_mpi(strategy.name(), world));
    }
    if device.is_cuda() && several_processes {
        // Say now, before any rank starts, when NCCL cannot be loaded. The
        // ranks fabric starts itself find it through a link the launcher
        // makes where it is installed under its soname only.
        let linked = matches!(plan, Plan::Start { .. }) && machine.nccl_linkable();
        if !linked {
            machine.nccl_loadable()?;
        }
    } else if several_processes && device != Device::Cpu {
        return Err(Error::InvalidArgument(format!(
            "several processes on {device:?}: fabric's collectives run on the CPU (Open MPI) and on CUDA devices (NCCL); use `accelerator = \"cpu\"` or \"cuda\""
        )));
    }

    let precision = match precision_plugin {
        Some(plugin) => plugin,
        None => precision::from_option(options.precision())?,
    };
    precision.check_device(device)?;
    if precision.autocast_dtype().is_some() && !matches!(device, Device::Cpu | Device::Cuda(_)) {
        return Err(Error::InvalidArgument(format!(
            "precision `{}` autocasts, which fabric runs on the CPU and CUDA devices, not on {device:?}",
            precision.name(),
        )));
    }
    Ok(Connection {
        accelerator,
        devices,
        strategy,
        precision,
        shared_memory_room: machine
            .shared_memory_bytes()
            .is_none_or(|free| free >= collectives::shared_window_bytes(world)),
        environment,
        num_nodes: nodes,
        plan,
        warnings,
    })
}

/// Rejects ranks that cannot belong to the world the environment reports.
fn validate_environment(env: &dyn ClusterEnvironment) -> Result<()> {
    let error = |message: String| environment_error(env, message);
    let world = env.world_size();
    if world == 0 {
        return Err(error(
            "world size is 0; a run has at least one process".into(),
        ));
    }
    if env.global_rank() >= world {
        return Err(error(format!(
            "global rank {} is not below the world size {world}",
            env.global_rank()
        )));
    }
    if env.local_rank() > env.global_rank() {
        return Err(error(format!(
            "local rank {} is above the global rank {}",
            env.local_rank(),
            env.global_rank()
        )));
    }
    if env.num_nodes() == Some(0) {
        return Err(error(
            "it reports 0 nodes; a run has at least one node (return `None` from `num_nodes` when the environment does not know)".into(),
        ));
    }
    if let Some(nodes) = env.num_nodes()
        && nodes > world
    {
        return Err(error(format!(
            "it reports {nodes} nodes for {world} processes; every node runs at least one process"
        )));
    }
    Ok(())
}
