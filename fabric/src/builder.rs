//! [`FabricBuilder`]: the typed configuration a [`Fabric`] is built from.

use fabric_options::{Accelerator, Devices, Key, RawOptions, Strategy, Value};

use std::time::Duration;

use crate::accelerator;
use crate::callbacks::{Callback, Callbacks};
use crate::collectives::{Comm, MpiComm, NcclComm};
use crate::environment::{ClusterEnvironment, SingleProcessEnvironment};
use crate::error::{Error, Result};
use crate::fabric::Fabric;
use crate::launcher;
use crate::loggers::Logger;
use crate::overrides;
use crate::plugins::{IntoPlugin, Plugin};
use crate::precision::{self, GradScaler, PrecisionPlugin};
use crate::private::TrainResult;
use crate::strategy::{self, Plan};

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
#[derive(Default)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct FabricBuilder {
    /// `accelerator`, `strategy`, `devices`, `num_nodes` and `precision`,
    /// as given.
    options: RawOptions,
    plugins: Vec<Plugin>,
    callbacks: Callbacks,
    loggers: Vec<Box<dyn Logger>>,
    collective_timeout: Option<Duration>,
    failure_timeout: Option<Duration>,
    bucket_bytes: Option<usize>,
    progress_bar: Option<bool>,
    /// `dp` over these devices, repeats allowed, for testing `dp` without
    /// several GPUs (`__private::simulate_dp`).
    pub(crate) simulated_dp: Option<Vec<tch::Device>>,
}

impl std::fmt::Debug for FabricBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FabricBuilder")
            .field("options", &self.options)
            .field("plugins", &self.plugins)
            .field("callbacks", &self.callbacks.len())
            .field("loggers", &self.loggers.len())
            .field("progress_bar", &self.progress_bar)
            .finish()
    }
}

impl FabricBuilder {
    /// `accelerator`: `"cpu"`, `"cuda"`, `"gpu"`, `"mps"`, `"tpu"` or `"auto"` (the default).
    pub fn accelerator(mut self, value: impl Into<Value>) -> Self {
        self.options.set(Key::Accelerator, value);
        self
    }

    /// `strategy`: a name, `"auto"` (the default), `"single_device"`,
    /// `"ddp"`, ..., or a strategy with parameters such as
    /// [`DdpStrategy`](crate::DdpStrategy).
    pub fn strategy(self, strategy: impl IntoStrategy) -> Self {
        strategy.configure(self)
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

    /// Adds a plugin, such as a [`ClusterEnvironment`] (see [`IntoPlugin`]
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
    /// (10 seconds by default).
    pub fn failure_timeout(mut self, timeout: Duration) -> Self {
        self.failure_timeout = Some(timeout);
        self
    }

    /// The size of the gradient buckets `ddp` all-reduces, in megabytes
    /// (25 by default, as PyTorch).
    pub fn bucket_cap_mb(mut self, megabytes: f64) -> Self {
        self.bucket_bytes = Some((megabytes.max(0.0) * 1024.0 * 1024.0) as usize);
        self
    }

    /// Parses and checks every option and resolves them against this
    /// machine and the cluster environment.
    ///
    /// The `LT_*` variables of Lightning's CLI override the values given
    /// here, as in Lightning: `LT_ACCELERATOR`, `LT_STRATEGY`, `LT_DEVICES`,
    /// `LT_NUM_NODES` and `LT_PRECISION`, parsed with the same messages.
    /// With `LT_CLI_USED=1`, a value given here that differs from its
    /// variable is an error.
    fn prepare(mut self) -> Result<Prepared> {
        let mut environment: Option<Box<dyn ClusterEnvironment>> = None;
        let mut precision_plugin: Option<Box<dyn PrecisionPlugin>> = None;
        let (mut cluster_environments, mut precision_plugins) = (0, 0);
        for plugin in self.plugins {
            match plugin {
                Plugin::ClusterEnvironment(env) => {
                    cluster_environments += 1;
                    environment = Some(env);
                }
                Plugin::Precision(plugin) => {
                    precision_plugins += 1;
                    precision_plugin = Some(plugin);
                }
            }
        }
        let options =
            overrides::resolve(&mut self.options, precision_plugins, cluster_environments)?;

        let environment = match environment {
            Some(environment) => Some(environment),
            None => crate::environment::detect()?,
        };
        // A cluster environment (given or detected) made this process: it
        // decides how many processes there are.
        let in_cluster = environment.is_some();
        let environment = environment.unwrap_or_else(|| Box::new(SingleProcessEnvironment));
        validate_environment(&*environment)?;
        // `devices = 0`/`None` mean the CPU (the seed's documented default),
        // so with `accelerator = "auto"` they pick the CPU even where CUDA is.
        let accelerator =
            if options.devices == Devices::Cpu && options.accelerator == Accelerator::Auto {
                accelerator::ResolvedAccelerator::Cpu
            } else {
                accelerator::resolve(options.accelerator)?
            };
        let mut devices = accelerator::select_devices(accelerator, &options.devices)?;
        if options.devices == Devices::Auto
            && (options.strategy == Strategy::SingleDevice
                || (in_cluster
                    && environment.world_size() == 1
                    && options.strategy != Strategy::Dp))
        {
            // "auto" devices are every GPU, but `single_device` uses one,
            // and a cluster environment that started one process (SLURM
            // with one task, torchrun with one worker) keeps it one process
            // (on one device, unless `dp` spreads that process over all).
            devices.truncate(1);
        }
        let layout = strategy::resolve(
            options.strategy,
            &options.devices,
            devices.len(),
            options.num_nodes.get() as usize,
            self.options.get(Key::NumNodes).is_some(),
            &*environment,
        )?;
        if matches!(layout.plan, Plan::Launch(_) | Plan::Spawn(_)) && launcher::was_launched() {
            return Err(Error::Launch(format!(
                "this process is a rank that fabric's launcher started, but it finds itself alone (cluster environment \"{}\", world size {}), so it would start ranks again; run the program under one launcher only",
                environment.name(),
                environment.world_size()
            )));
        }
        // The device of this process: its local rank's among the devices of
        // its node.
        let node_devices = if matches!(layout.plan, Plan::Join) && options.devices == Devices::Auto
        {
            accelerator::select_devices(accelerator, &Devices::Count(layout.per_node))?
        } else {
            devices
        };
        let dp_devices = if layout.strategy == Strategy::Dp {
            match self.simulated_dp.take().filter(|d| !d.is_empty()) {
                Some(devices) => devices,
                None if accelerator == accelerator::ResolvedAccelerator::Cuda => {
                    node_devices.clone()
                }
                None => {
                    return Err(Error::InvalidArgument(format!(
                        "\"dp\" splits each batch between the CUDA devices of one process, but the accelerator is \"{}\" (this machine has: {}); use `strategy = \"ddp\"` to train with several processes",
                        accelerator.name(),
                        accelerator::available()
                    )));
                }
            }
        } else {
            Vec::new()
        };
        let device = node_devices[environment.local_rank() % node_devices.len()];
        if matches!(device, tch::Device::Cuda(_)) && !matches!(layout.plan, Plan::Single) {
            // Say now, before any rank starts, when NCCL cannot be loaded.
            // The ranks fabric starts itself find it through a link the
            // launcher makes where it is installed under its soname only.
            let linked = !matches!(layout.plan, Plan::Join)
                && crate::collectives::nccl::library_link_dir().is_some();
            if !linked {
                crate::collectives::nccl::ensure_loadable()?;
            }
        } else if matches!(layout.plan, Plan::Join) && device != tch::Device::Cpu {
            return Err(Error::InvalidArgument(format!(
                "several processes on {device:?}: fabric's collectives run on the CPU (Open MPI) and on CUDA devices (NCCL); use `accelerator = \"cpu\"` or \"cuda\""
            )));
        }
        let precision = match precision_plugin {
            Some(plugin) => plugin,
            None => precision::from_option(options.precision())?,
        };
        precision.check_device(device)?;
        if precision.autocast_dtype().is_some()
            && !matches!(device, tch::Device::Cpu | tch::Device::Cuda(_))
        {
            return Err(Error::InvalidArgument(format!(
                "precision `{}` autocasts, which fabric runs on the CPU and CUDA devices, not on {device:?}",
                precision.name(),
            )));
        }
        let scaler = match precision.loss_scaling() {
            Some(config) => Some(GradScaler::new(config, device)?),
            None => None,
        };
        Ok(Prepared {
            plan: layout.plan,
            accelerator,
            device,
            dp_devices,
            strategy: layout.strategy,
            precision,
            scaler,
            environment,
            callbacks: self.callbacks,
            loggers: self.loggers,
            collective_timeout: self
                .collective_timeout
                .unwrap_or(DEFAULT_COLLECTIVE_TIMEOUT),
            failure_timeout: self.failure_timeout.unwrap_or(DEFAULT_FAILURE_TIMEOUT),
            bucket_bytes: self.bucket_bytes.unwrap_or(strategy::DEFAULT_BUCKET_BYTES),
            progress_bar: self.progress_bar.unwrap_or(true),
        })
    }

    /// Parses and checks every option, resolves them against this machine
    /// and the cluster environment, and returns the `Fabric`, or every error
    /// found.
    ///
    /// Under `ddp` with several devices and no launcher around (the program
    /// was started plainly), `build` starts the ranks itself: it re-runs
    /// this program under Open MPI's `mpirun`, one process per device, and
    /// **this process ends with their exit status instead of returning**.
    /// Each rank runs the program from the start and gets its `Fabric` from
    /// `build`, as with Lightning's `fabric.launch()`. `ddp_spawn` needs a
    /// function to run: use [`launch_spawn`](Self::launch_spawn).
    pub fn build(self) -> Result<Fabric> {
        let prepared = self.prepare()?;
        match prepared.plan {
            Plan::Launch(processes) => match launcher::supervise(processes, prepared.device.is_cuda())? {},
            Plan::Spawn(_) => Err(Error::Launch(
                "`ddp_spawn` runs a function in worker processes: use `FabricBuilder::launch_spawn(train)` or `#[fabric(strategy = \"ddp_spawn\")]`".into(),
            )),
            Plan::Single | Plan::Join => prepared.into_fabric(),
        }
    }

    /// Builds the `Fabric` and runs `train` with it, as Lightning's
    /// `fabric.launch(train)`. Under `ddp`, every rank runs it and returns
    /// its own result; a rank whose `train` fails ends the whole run, naming
    /// itself. Errors are returned through `train`'s error type.
    pub fn launch<R: TrainResult>(self, train: fn(&mut Fabric) -> R) -> R {
        let prepared = match self.prepare() {
            Ok(prepared) => prepared,
            Err(error) => return R::from_error(error),
        };
        match prepared.plan {
            Plan::Launch(processes) => match launcher::supervise(processes, prepared.device.is_cuda()) {
                Ok(never) => match never {},
                Err(error) => R::from_error(error),
            },
            Plan::Spawn(_) => R::from_error(Error::Launch(
                "`ddp_spawn` hands rank 0's result back to this process, which needs it serialisable: use `FabricBuilder::launch_spawn(train)`, or `strategy = \"ddp_spawn\"` in `#[fabric(...)]`".into(),
            )),
            Plan::Single | Plan::Join => {
                let mut fabric = match prepared.into_fabric() {
                    Ok(fabric) => fabric,
                    Err(error) => return R::from_error(error),
                };
                let result = train(&mut fabric);
                finish(&mut fabric, result)
            }
        }
    }

    /// Like [`launch`](Self::launch), and under `ddp_spawn` starts the
    /// worker processes, runs `train` in each, and returns rank 0's result
    /// in this process (serialised through serde), as Lightning's
    /// `ddp_spawn`. The workers end after `train`; this process does not
    /// train.
    pub fn launch_spawn<T, E>(
        self,
        train: fn(&mut Fabric) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E>
    where
        T: serde::Serialize + serde::de::DeserializeOwned,
        E: From<Error> + std::fmt::Debug,
    {
        let prepared = self.prepare()?;
        match prepared.plan {
            Plan::Launch(processes) => {
                match launcher::supervise(processes, prepared.device.is_cuda())? {}
            }
            Plan::Spawn(processes) => {
                let serialised = launcher::spawn(processes, prepared.device.is_cuda())?;
                serde_json::from_str(&serialised).map_err(|e| {
                    E::from(Error::Launch(format!(
                        "rank 0's result could not be read back: {e}"
                    )))
                })
            }
            Plan::Single | Plan::Join => {
                let worker = launcher::is_spawn_worker();
                let mut fabric = prepared.into_fabric()?;
                let result = train(&mut fabric);
                let value = finish(&mut fabric, result)?;
                if !worker {
                    return Ok(value);
                }
                if fabric.is_global_zero() {
                    let serialised = serde_json::to_string(&value).map_err(|e| {
                        E::from(Error::Launch(format!(
                            "rank 0's result cannot be serialised: {e}"
                        )))
                    })?;
                    if let Err(error) = launcher::hand_back(&serialised) {
                        launcher::fail_rank(0, &error.to_string());
                    }
                }
                drop(fabric);
                // A worker ends after the function, as in Lightning.
                std::process::exit(0)
            }
        }
    }
}

/// The end of a training function: finalises the loggers; in a
/// multi-process run, a failed rank ends the run.
fn finish<R: TrainResult>(fabric: &mut Fabric, result: R) -> R {
    match result.describe_error() {
        None => match fabric.finish(true) {
            Ok(()) => result,
            Err(error) => R::from_error(error),
        },
        Some(message) => {
            if let Err(hook_error) = fabric.call::<crate::hooks::OnException>((message.as_str(),)) {
                eprintln!("fabric: after the training error, {hook_error}");
            }
            if let Err(finish_error) = fabric.finish(false) {
                // The training error is the one to report.
                eprintln!("fabric: after the training error, {finish_error}");
            }
            if fabric.world_size() > 1 {
                launcher::fail_rank(fabric.global_rank(), &message);
            }
            result
        }
    }
}

/// The default time a collective may wait for the other ranks.
pub const DEFAULT_COLLECTIVE_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// The default time a rank may take to end once the run has failed.
pub const DEFAULT_FAILURE_TIMEOUT: Duration = Duration::from_secs(10);

/// The resolved configuration, before the `Fabric` exists.
struct Prepared {
    plan: Plan,
    accelerator: accelerator::ResolvedAccelerator,
    device: tch::Device,
    dp_devices: Vec<tch::Device>,
    strategy: fabric_options::Strategy,
    precision: Box<dyn PrecisionPlugin>,
    scaler: Option<GradScaler>,
    environment: Box<dyn ClusterEnvironment>,
    callbacks: Callbacks,
    loggers: Vec<Box<dyn Logger>>,
    collective_timeout: Duration,
    failure_timeout: Duration,
    bucket_bytes: usize,
    progress_bar: bool,
}

impl Prepared {
    fn into_fabric(self) -> Result<Fabric> {
        let comm = match self.plan {
            Plan::Join => {
                let rank = self.environment.global_rank();
                let comm = MpiComm::join(
                    rank,
                    self.environment.world_size(),
                    self.collective_timeout,
                    self.failure_timeout,
                )?;
                launcher::install_panic_hook(rank);
                let nccl = match self.device {
                    tch::Device::Cuda(index) => {
                        Some(NcclComm::join(&comm, index, self.collective_timeout)?)
                    }
                    _ => None,
                };
                if self.device == tch::Device::Cpu && std::env::var_os("OMP_NUM_THREADS").is_none()
                {
                    // Share the cores between the ranks of a node.
                    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
                    let per_node = self
                        .environment
                        .world_size()
                        .div_ceil(self.environment.num_nodes().unwrap_or(1));
                    tch::set_num_threads((cores / per_node.max(1)).max(1) as i32);
                }
                Some(Comm::new(comm, nccl))
            }
            _ => None,
        };
        if let tch::Device::Cuda(index) = self.device {
            // As Lightning's `torch.cuda.set_device`: work that names no
            // device index goes to this process's GPU.
            crate::shim::cuda_set_device(index)?;
        }
        let progress_bar = self.progress_bar;
        Ok(Fabric::new_resolved(crate::fabric::Parts {
            accelerator: self.accelerator,
            device: self.device,
            dp_devices: self.dp_devices,
            strategy: self.strategy,
            precision: self.precision,
            scaler: self.scaler,
            environment: self.environment,
            callbacks: self.callbacks,
            loggers: self.loggers,
            comm,
            bucket_bytes: self.bucket_bytes,
        })
        .with_progress_bar(progress_bar))
    }
}

/// Rejects ranks that cannot belong to the world the environment reports.
fn validate_environment(env: &dyn ClusterEnvironment) -> Result<()> {
    let error = |message: String| Error::ClusterEnvironment {
        environment: env.name().to_owned(),
        message,
    };
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
    Ok(())
}

/// What `strategy` takes: a name (anything that converts into a
/// [`Value`]), or a strategy with parameters such as
/// [`DdpStrategy`](crate::DdpStrategy).
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a strategy",
    note = "`strategy` takes a name such as \"ddp\", or `fabric::DdpStrategy::new()` with parameters"
)]
pub trait IntoStrategy {
    /// Sets the strategy, and its parameters, on the builder.
    fn configure(self, builder: FabricBuilder) -> FabricBuilder;
}

#[diagnostic::do_not_recommend]
impl<T: Into<Value>> IntoStrategy for T {
    fn configure(self, mut builder: FabricBuilder) -> FabricBuilder {
        builder.options.set(Key::Strategy, self);
        builder
    }
}

impl IntoStrategy for strategy::DdpStrategy {
    fn configure(self, mut builder: FabricBuilder) -> FabricBuilder {
        builder.options.set(Key::Strategy, "ddp");
        if let Some(megabytes) = self.bucket_cap_mb {
            builder = builder.bucket_cap_mb(megabytes);
        }
        builder.collective_timeout = self.collective_timeout.or(builder.collective_timeout);
        builder.failure_timeout = self.failure_timeout.or(builder.failure_timeout);
        builder
    }
}
