//! [`FabricBuilder`]: the typed configuration a [`Fabric`] is built from,
//! and the explicit launch step.

use std::time::Duration;

use fabric_options::{Key, RawOptions, Strategy as StrategyName, Value};

use crate::callbacks::{Callback, Callbacks};
use crate::connector::Plan;
use crate::error::{Error, Result};
use crate::fabric::Fabric;
use crate::launcher::{self, TrainResult};
use crate::loggers::Logger;
use crate::plugins::{IntoPlugin, Plugin};
use crate::process::Threads;
use crate::strategy::{IntoStrategy, Strategy, StrategyChoice};

mod connect;
use connect::assemble;

/// Builds a [`Fabric`] from Lightning Fabric's constructor options.
///
/// Every value goes through the same parser as `#[fabric(...)]`, so it
/// accepts the same forms and gives the same messages; [`build`](Self::build)
/// reports every error at once.
///
/// ```
/// use fabric::Fabric;
///
/// let fabric = Fabric::builder()
///     .accelerator("cpu")
///     .devices(1)
///     .precision("64-true")
///     .build()
///     .unwrap();
/// assert_eq!(fabric.device(), tch::Device::Cpu);
///
/// let err = Fabric::builder().accelerator("cdua").precision("bf16-mixd").build().unwrap_err();
/// assert!(err.to_string().contains("did you mean `cuda`?"));
/// assert!(err.to_string().contains("did you mean `bf16-mixed`?"));
/// ```
///
/// **Starting processes.** A configuration of several processes started
/// plainly (`cargo run` with `strategy = "ddp"`, `devices = 2`) needs its
/// ranks started. [`build`](Self::build) never does that: it returns an
/// error saying so. The launch step is explicit, as Lightning's
/// `fabric.launch(...)`: [`launch`](Self::launch) runs a function in every
/// rank, [`build_or_launch`](Self::build_or_launch) returns the rank's
/// `Fabric` to code that runs from `main`; in the process that starts the
/// ranks both wait for them and end the process with their status.
///
/// **Process-wide settings**, each with its default: libtorch's thread
/// count ([`intra_op_threads`](Self::intra_op_threads), `Threads::Auto`:
/// the cores shared between a node's CPU ranks), `malloc`'s trimming
/// ([`keep_freed_memory`](Self::keep_freed_memory), on for CPU runs), and
/// loading libtorch's CUDA backend ([`load_cuda_backend`](Self::load_cuda_backend), on).
#[derive(Default)]
#[must_use = "a builder does nothing until `build` or `launch` is called"]
pub struct FabricBuilder {
    /// `accelerator`, `strategy`, `devices`, `num_nodes` and `precision`,
    /// as given.
    pub(super) options: RawOptions,
    strategy_object: Option<Box<dyn Strategy>>,
    plugins: Vec<Plugin>,
    callbacks: Callbacks,
    loggers: Vec<Box<dyn Logger>>,
    collective_timeout: Option<Duration>,
    failure_timeout: Option<Duration>,
    progress_bar: Option<bool>,
    load_cuda_backend: Option<bool>,
    keep_freed_memory: Option<bool>,
    intra_op_threads: Threads,
    preemption: Option<crate::preemption::Preemption>,
    #[cfg(feature = "testing")]
    pub(crate) simulated_dp: Option<Vec<tch::Device>>,
}

impl std::fmt::Debug for FabricBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FabricBuilder")
            .field("options", &self.options)
            .field(
                "strategy_object",
                &self.strategy_object.as_ref().map(|s| s.name()),
            )
            .field("plugins", &self.plugins)
            .field("callbacks", &self.callbacks.len())
            .field("loggers", &self.loggers.len())
            .field("progress_bar", &self.progress_bar)
            .finish()
    }
}

impl Fabric {
    /// A builder holding Lightning Fabric's defaults: `accelerator = "auto"`,
    /// `strategy = "auto"`, `devices = "auto"`, `num_nodes = 1`,
    /// `precision = "32-true"`.
    pub fn builder() -> FabricBuilder {
        FabricBuilder::default()
    }

    /// A `Fabric` with every option at its default.
    pub fn new() -> Result<Self> {
        Self::builder().build()
    }
}

impl FabricBuilder {
    /// `accelerator`: `"cpu"`, `"cuda"`, `"gpu"`, `"mps"`, `"tpu"` or `"auto"` (the default).
    pub fn accelerator(mut self, value: impl Into<Value>) -> Self {
        self.options.set(Key::Accelerator, value);
        self
    }

    /// `strategy`: a name, `"auto"` (the default), `"single_device"`,
    /// `"ddp"`, ..., a strategy with parameters such as
    /// [`DdpStrategy`](crate::strategy::DdpStrategy), or your own
    /// [`Strategy`].
    pub fn strategy(mut self, strategy: impl IntoStrategy) -> Self {
        match strategy.into_strategy() {
            StrategyChoice::Name(value) => {
                self.options.set(Key::Strategy, value);
                self.strategy_object = None;
            }
            StrategyChoice::Object(object) => {
                // A built-in strategy's name takes part in the option
                // checks (`dp` on the CPU, ...); a strategy of the user's,
                // whatever its name, is resolved by its process model.
                let name = Value::Str(object.name().to_owned());
                if crate::strategy::is_built_in(&*object) && StrategyName::parse(&name).is_ok() {
                    self.options.set(Key::Strategy, name);
                } else {
                    self.options.unset(Key::Strategy);
                }
                self.strategy_object = Some(object);
            }
        }
        self
    }

    /// `devices`: a count, a list of indices, `"1, 4"`, `-1` for all,
    /// `0`/`None` for the CPU, or `"auto"` (the default).
    pub fn devices(mut self, value: impl Into<Value>) -> Self {
        self.options.set(Key::Devices, value);
        self
    }

    /// `num_nodes`: how many machines take part (1 by default).
    pub fn num_nodes(mut self, value: impl Into<Value>) -> Self {
        self.options.set(Key::NumNodes, value);
        self
    }

    /// `precision`: `"32-true"` (the default), `"64-true"`, `"bf16-mixed"`, ...
    /// or an alias such as `"bf16"` or `16`.
    pub fn precision(mut self, value: impl Into<Value>) -> Self {
        self.options.set(Key::Precision, value);
        self
    }

    /// Adds a plugin, such as a [`ClusterEnvironment`](crate::ClusterEnvironment) (see [`IntoPlugin`]
    /// for what is accepted).
    pub fn plugin(mut self, plugin: impl IntoPlugin) -> Self {
        self.plugins.push(plugin.into_plugin());
        self
    }

    /// Registers a callback; callbacks keep their registration order.
    pub fn callback(mut self, callback: impl Callback) -> Self {
        self.callbacks.push(callback);
        self
    }

    /// Registers a logger.
    pub fn logger(mut self, logger: impl Logger) -> Self {
        self.loggers.push(Box::new(logger));
        self
    }

    /// Whether [`Fabric::progress`](crate::Fabric::progress) draws a bar
    /// (true: on rank 0, when the output is a terminal).
    pub fn progress_bar(mut self, enabled: bool) -> Self {
        self.progress_bar = Some(enabled);
        self
    }

    /// How long a collective may wait for the other ranks before this rank
    /// gives up and ends the run (30 minutes by default, as PyTorch's
    /// process groups). Nothing ever waits forever.
    pub fn collective_timeout(mut self, timeout: Duration) -> Self {
        self.collective_timeout = Some(timeout);
        self
    }

    /// How long a rank may take to end once the run has failed elsewhere
    /// (10 seconds by default), its loggers' flush included.
    pub fn failure_timeout(mut self, timeout: Duration) -> Self {
        self.failure_timeout = Some(timeout);
        self
    }

    /// Whether fabric loads libtorch's CUDA backend (`libtorch_cuda.so`)
    /// before it first asks about CUDA, where a CUDA driver is installed:
    /// `true` by default. The linker drops that library from Rust binaries
    /// (tch-rs issues #329, #907, #980), so without it a tch program sees no
    /// GPU. libtorch decides once per process whether CUDA exists: a
    /// program that asks tch about CUDA before building its `Fabric` (a
    /// `tch::manual_seed`, say) calls [`cuda::load_backend`](crate::cuda::load_backend)
    /// first. `false` (or `FABRIC_LOAD_CUDA=0`) keeps the CUDA libraries out
    /// of a CPU-only program on a GPU machine.
    pub fn load_cuda_backend(mut self, load: bool) -> Self {
        self.load_cuda_backend = Some(load);
        self
    }

    /// Whether a run on the CPU tunes glibc's `malloc` to keep freed heap
    /// memory for reuse instead of returning it to the system after every
    /// step: `true` by default (libtorch allocates CPU tensors with
    /// `malloc`; returned pages are faulted in again in the next step,
    /// which made `bf16-mixed` steps 2.5 times slower). Nothing is tuned
    /// when `GLIBC_TUNABLES` or `MALLOC_*_` configure `malloc`, or with
    /// `FABRIC_KEEP_FREED_MEMORY=0`.
    pub fn keep_freed_memory(mut self, keep: bool) -> Self {
        self.keep_freed_memory = Some(keep);
        self
    }

    /// How many threads libtorch's CPU operations use in this process
    /// ([`Threads::Auto`] by default: a node's cores shared between its CPU
    /// ranks when `OMP_NUM_THREADS` is not set).
    pub fn intra_op_threads(mut self, threads: Threads) -> Self {
        self.intra_op_threads = threads;
        self
    }

    /// Catches the scheduler's preemption signals (SIGUSR1 and SIGTERM by
    /// default) for as long as the `Fabric` lives, so that the training
    /// loop can stop at a step, save and be run again:
    /// [`Fabric::preempted`] and [`Fabric::requeue`]. Without it fabric
    /// installs no handler for them. See [`preemption`](crate::preemption).
    pub fn preemption(mut self, preemption: crate::preemption::Preemption) -> Self {
        self.preemption = Some(preemption);
        self
    }

    /// Parses and checks every option, resolves them against this machine
    /// and the cluster environment, and returns the `Fabric` of this
    /// process, or every error found. Under a launcher (`mpirun`, `srun`,
    /// `torchrun`, or fabric's own) this process joins the run as its rank.
    ///
    /// It never starts or ends processes: a configuration whose ranks
    /// nobody started yet (`ddp` with `devices = 2`, run plainly) is an
    /// [`Error::Launch`] naming [`launch`](Self::launch) and
    /// [`build_or_launch`](Self::build_or_launch), the explicit launch steps.
    pub fn build(self) -> Result<Fabric> {
        let (connection, assembly) = self.connect()?;
        match connection.plan {
            Plan::Train => assemble(connection, assembly),
            Plan::Start {
                processes,
                spawn: true,
                ..
            } => Err(spawn_needs_function(processes)),
            Plan::Start { processes, .. } => Err(Error::Launch(format!(
                "this configuration runs {processes} processes, which nobody started: `build` does not start processes; use `FabricBuilder::launch(|fabric| ...)` or `build_or_launch()` (fabric re-runs this program under `mpirun`), or start it with `mpirun -np {processes}`"
            ))),
        }
    }

    /// Returns this process's `Fabric` like [`build`](Self::build) when it
    /// trains (alone, or as a rank), and otherwise starts the ranks, as
    /// Lightning's `fabric.launch()` without a function: fabric re-runs
    /// this program under Open MPI's `mpirun`, one process per device, and
    /// **in the process that started them, this call does not return**: it
    /// waits for the ranks and ends the process with their status. Each
    /// rank runs the program from the start and gets its `Fabric` here.
    pub fn build_or_launch(self) -> Result<Fabric> {
        let (connection, assembly) = self.connect()?;
        match connection.plan {
            Plan::Train => assemble(connection, assembly),
            Plan::Start {
                spawn: true,
                processes,
                ..
            } => Err(spawn_needs_function(processes)),
            Plan::Start {
                processes, cuda, ..
            } => launcher::supervise(processes, cuda, &assembly.forwarded_signals()),
        }
    }

    /// Builds the `Fabric` and runs `train` with it, as Lightning's
    /// `fabric.launch(train)` (a closure: arguments are captured). Under
    /// `ddp` started plainly, the ranks are started first (see
    /// [`build_or_launch`](Self::build_or_launch): this process then waits
    /// and ends with their status); every rank runs `train` and returns its
    /// own result. A rank whose `train` fails or panics flushes its loggers
    /// and ends the whole run, naming itself. Errors are returned through
    /// `train`'s error type.
    pub fn launch<R: TrainResult>(self, train: impl FnOnce(&mut Fabric) -> R) -> R {
        let (connection, assembly) = match self.connect() {
            Ok(connected) => connected,
            Err(error) => return R::from_error(error),
        };
        match connection.plan {
            Plan::Start {
                spawn: true,
                processes,
                ..
            } => R::from_error(spawn_needs_function(processes)),
            Plan::Start {
                processes, cuda, ..
            } => launcher::supervise(processes, cuda, &assembly.forwarded_signals()),
            Plan::Train => match assemble(connection, assembly) {
                Ok(mut fabric) => launcher::run(&mut fabric, train),
                Err(error) => R::from_error(error),
            },
        }
    }

    /// Like [`launch`](Self::launch), and under `ddp_spawn` starts the
    /// worker processes, runs `train` in each, and returns rank 0's result
    /// in this process (serialised through serde), as Lightning's
    /// `ddp_spawn`. The workers end after `train`; this process does not
    /// train.
    pub fn launch_spawn<T, E>(
        self,
        train: impl FnOnce(&mut Fabric) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E>
    where
        T: serde::Serialize + serde::de::DeserializeOwned,
        E: From<Error> + std::fmt::Debug,
    {
        let (connection, assembly) = self.connect()?;
        match connection.plan {
            Plan::Start {
                spawn: false,
                processes,
                cuda,
            } => launcher::supervise(processes, cuda, &assembly.forwarded_signals()),
            Plan::Start {
                processes, cuda, ..
            } => Ok(launcher::spawn(processes, cuda)?),
            Plan::Train => launcher::run_spawned(assemble(connection, assembly)?, train),
        }
    }
}

fn spawn_needs_function(processes: usize) -> Error {
    Error::Launch(format!(
        "`ddp_spawn` runs a function in {processes} worker processes and hands rank 0's result back, which needs it serialisable: use `FabricBuilder::launch_spawn(train)`, or `strategy = \"ddp_spawn\"` in `#[fabric(...)]`"
    ))
}

/// The default time a collective may wait for the other ranks.
pub const DEFAULT_COLLECTIVE_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// The default time a rank may take to end once the run has failed.
pub const DEFAULT_FAILURE_TIMEOUT: Duration = Duration::from_secs(10);
