//! [`Fabric`]: the object a training function works through. Its methods
//! are spread over `fabric/` by theme: set-up, training, reporting.

use std::sync::{Arc, Mutex};

use fabric_options::Precision;
use tch::{Device, Kind};

use crate::accelerator::ResolvedAccelerator;
use crate::callbacks::Callbacks;
use crate::environment::ClusterEnvironment;
use crate::error::Result;
use crate::failure;
use crate::loggers::Logger;
use crate::precision::{GradScaler, PrecisionPlugin};
use crate::progress::SharedMetrics;
use crate::strategy::Strategy;

mod preemption;
mod reporting;
mod setup;
mod training;

pub(crate) use reporting::SharedLoggers;
pub use reporting::{LoggerMut, LoggerRef};

/// The training context: devices, precision, ranks, loggers and callbacks,
/// as Lightning Fabric's `Fabric`.
///
/// Build one with [`Fabric::builder`] or let `#[fabric(...)]` build it.
///
/// ```
/// use fabric::{Fabric, data::{DataLoader, TensorDataset}};
/// use tch::{nn, nn::OptimizerConfig, Kind, Tensor};
///
/// # fn main() -> fabric::Result<()> {
/// let mut fabric = Fabric::builder().accelerator("cpu").build()?;
/// fabric.seed_everything(42);
/// let mut vs = nn::VarStore::new(tch::Device::Cpu);
/// let net = nn::linear(vs.root(), 3, 1, Default::default());
/// let opt = nn::Sgd::default().build(&vs, 0.1)?;
/// let (model, mut opt) = fabric.setup(&mut vs, net, opt)?;
///
/// let x = Tensor::randn([64, 3], (Kind::Float, tch::Device::Cpu));
/// let y = x.sum_dim_intlist(1, true, Kind::Float);
/// let mut loader = fabric.setup_dataloaders(DataLoader::new(TensorDataset::new((x, y))?).batch_size(16))?;
/// for batch in &mut loader {
///     let (x, y) = batch?;
///     opt.zero_grad();
///     let loss = model.forward(&x).mse_loss(&y, tch::Reduction::Mean);
///     fabric.backward(&loss)?;
///     opt.step();
/// }
/// # Ok(()) }
/// ```
pub struct Fabric {
    accelerator: ResolvedAccelerator,
    strategy: Box<dyn Strategy>,
    precision: Arc<dyn PrecisionPlugin>,
    scaler: Option<Arc<Mutex<GradScaler>>>,
    environment: Box<dyn ClusterEnvironment>,
    callbacks: Callbacks,
    /// Shared with the failure handling, which flushes them when the
    /// launcher ends this rank.
    loggers: SharedLoggers,
    _flush_on_failure: failure::Registration,
    stop_requested: bool,
    latest_metrics: SharedMetrics,
    progress_bar: bool,
    finished: bool,
    /// How many models `setup_module` set up.
    modules_set_up: usize,
    /// This fabric among those of the process, so that a model set up by
    /// another is told apart.
    id: u64,
    /// The preemption handling, with the opt-in.
    preemption: Option<crate::preemption::PreemptionState>,
}

/// The next [`Fabric`]'s id.
static NEXT_FABRIC_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Everything a `Fabric` is made of, resolved by the connector and the
/// builder.
pub(crate) struct Parts {
    pub(crate) accelerator: ResolvedAccelerator,
    pub(crate) strategy: Box<dyn Strategy>,
    pub(crate) precision: Box<dyn PrecisionPlugin>,
    pub(crate) scaler: Option<GradScaler>,
    pub(crate) environment: Box<dyn ClusterEnvironment>,
    pub(crate) callbacks: Callbacks,
    pub(crate) loggers: Vec<Box<dyn Logger>>,
    pub(crate) progress_bar: bool,
    pub(crate) preemption: Option<crate::preemption::PreemptionState>,
}

impl std::fmt::Debug for Fabric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fabric")
            .field("accelerator", &self.accelerator)
            .field("device", &self.device())
            .field("strategy", &self.strategy.name())
            .field("precision", &self.precision.name())
            .field("environment", &self.environment.name())
            .field("global_rank", &self.global_rank())
            .field("world_size", &self.world_size())
            .field("callbacks", &self.callbacks.len())
            .finish()
    }
}

impl Fabric {
    pub(crate) fn from_parts(parts: Parts) -> Self {
        let loggers = SharedLoggers::new(parts.loggers);
        let flush = loggers.failure_flush();
        Fabric {
            accelerator: parts.accelerator,
            strategy: parts.strategy,
            precision: Arc::from(parts.precision),
            scaler: parts.scaler.map(|s| Arc::new(Mutex::new(s))),
            environment: parts.environment,
            callbacks: parts.callbacks,
            loggers,
            _flush_on_failure: failure::on_failure(flush),
            stop_requested: false,
            latest_metrics: SharedMetrics::default(),
            progress_bar: parts.progress_bar,
            finished: false,
            modules_set_up: 0,
            id: NEXT_FABRIC_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            preemption: parts.preemption,
        }
    }

    // ---- where and what -------------------------------------------------

    /// The device this process trains on (under `dp`, the first of its
    /// devices, where the model the optimizer steps lives).
    pub fn device(&self) -> Device {
        self.strategy.root_device()
    }

    /// Every device this process trains on: one, or under `dp` the devices
    /// each batch is split between.
    pub fn devices(&self) -> Vec<Device> {
        self.strategy.devices()
    }

    /// The accelerator in use, once `"auto"`/`"gpu"` are resolved: `"cpu"`,
    /// `"cuda"` or `"mps"`.
    pub fn accelerator(&self) -> &'static str {
        self.accelerator.name()
    }

    /// The strategy in use, once `"auto"` is resolved: its
    /// [`name`](Strategy::name) is `"single_device"`, `"dp"`, `"ddp"`, ...
    pub fn strategy(&self) -> &dyn Strategy {
        &*self.strategy
    }

    /// The strategy, to change, for the crate's tests.
    #[cfg(test)]
    pub(crate) fn strategy_mut(&mut self) -> &mut dyn Strategy {
        &mut *self.strategy
    }

    /// The precision in use, or `None` when a precision plugin of the
    /// user's replaces the `precision` option.
    pub fn precision(&self) -> Option<Precision> {
        Precision::parse(&self.precision.name().into()).ok()
    }

    /// The name of the precision plugin in use, such as `"bf16-mixed"`.
    pub fn precision_name(&self) -> &str {
        self.precision.name()
    }

    /// The dtype parameters have under this precision.
    pub fn param_kind(&self) -> Kind {
        self.precision.param_kind()
    }

    /// The loss scale of `16-mixed` (`None` without loss scaling).
    pub fn loss_scale(&self) -> Option<f64> {
        self.scaler
            .as_ref()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).scale())
    }

    /// The loss scaler of `16-mixed`, for checkpoints (`None` without loss
    /// scaling).
    pub fn grad_scaler(&self) -> Option<Arc<Mutex<GradScaler>>> {
        self.scaler.clone()
    }

    /// The name of the cluster environment in use.
    pub fn environment_name(&self) -> &str {
        self.environment.name()
    }

    /// This process's rank among all processes.
    pub fn global_rank(&self) -> usize {
        self.environment.global_rank()
    }

    /// This process's rank on its node.
    pub fn local_rank(&self) -> usize {
        self.environment.local_rank()
    }

    /// This node's rank.
    pub fn node_rank(&self) -> usize {
        self.environment.node_rank()
    }

    /// The number of processes taking part.
    pub fn world_size(&self) -> usize {
        self.environment.world_size()
    }

    /// Whether this is the process with global rank 0, the one that logs
    /// and writes checkpoints.
    pub fn is_global_zero(&self) -> bool {
        self.global_rank() == 0
    }

    /// Finalises every logger and tears the strategy down; `success` says
    /// whether training succeeded. Called when the `Fabric` is dropped if
    /// not before; later calls do nothing.
    pub fn finish(&mut self, success: bool) -> Result<()> {
        if std::mem::replace(&mut self.finished, true) {
            return Ok(());
        }
        let logged = self.loggers.finalize(success);
        let torn_down = self.strategy.teardown();
        logged.and(torn_down)
    }
}

impl Drop for Fabric {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        if !self.finished
            && let Err(error) = self.finish(!panicking)
        {
            eprintln!("fabric: {error}");
        }
        if panicking && self.world_size() > 1 {
            // Unwinding on would reach `MPI_Finalize`, which waits for the
            // other ranks: end the rank now (its loggers are flushed), and
            // the launcher ends the others.
            failure::end_rank(
                self.global_rank(),
                "it panicked (see the panic message above)",
            );
        }
    }
}
