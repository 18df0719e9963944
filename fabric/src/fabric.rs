//! [`Fabric`]: the object a training function works through.

use std::any::Any;
use std::fmt::Display;
use std::path::Path;
use std::sync::{Arc, Mutex};

use fabric_options::Precision;
use tch::nn::{ModuleT, VarStore};
use tch::{Device, Kind, Tensor};

use crate::accelerator::ResolvedAccelerator;
use crate::builder::FabricBuilder;
use crate::callbacks::hooks::{Hook, OnAfterSetup};
use crate::callbacks::{Callback, Callbacks, Outcome};
use crate::checkpoint::{self, LoadReport, State};
use crate::collectives::{Comm, ReduceOp};
use crate::data::{DataLoader, Dataset, FabricDataLoader};
use crate::device::ToDevice;
use crate::environment::ClusterEnvironment;
use crate::error::{Error, Result};
use crate::loggers::{Hyperparams, Logger, Metric};
use crate::module::FabricModule;
use crate::optimizer::{AnyOptimizer, FabricOptimizer};
use crate::precision::{AutocastGuard, GradScaler, PrecisionPlugin};
use crate::progress::{Progress, SharedMetrics};
use crate::seed;
use crate::strategy;
use fabric_options::Strategy;

/// How [`Fabric::clip_gradients`] clips, as Lightning's `clip_val` and
/// `max_norm`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum GradClip {
    /// Scales all gradients together so that their total norm is at most
    /// `max_norm`.
    Norm {
        /// The largest total norm allowed.
        max_norm: f64,
        /// The norm's order: 2.0 for Euclidean, `f64::INFINITY` for max.
        norm_type: f64,
        /// Whether a non-finite total norm is an error (Lightning's default)
        /// rather than clipped anyway.
        error_if_nonfinite: bool,
    },
    /// Clamps every gradient element into `[-value, value]`.
    Value(f64),
}

impl GradClip {
    /// Clipping by Euclidean norm, erroring on a non-finite norm.
    pub fn norm(max_norm: f64) -> Self {
        GradClip::Norm {
            max_norm,
            norm_type: 2.0,
            error_if_nonfinite: true,
        }
    }

    /// Clipping by value.
    pub fn value(value: f64) -> Self {
        GradClip::Value(value)
    }
}

/// The training context: devices, precision, ranks, loggers and callbacks,
/// as Lightning Fabric's `Fabric`.
///
/// Build one with [`Fabric::builder`] or let `#[fabric(...)]` build it.
///
/// On Linux with glibc, the first `Fabric` on the CPU tunes `malloc` to keep
/// freed heap memory for reuse instead of returning it to the system after
/// every step (libtorch allocates CPU tensors with `malloc`; returned pages
/// are faulted in again in the next step, which made `bf16-mixed` steps 2.5
/// times slower). Set `FABRIC_KEEP_FREED_MEMORY=0`, or configure `malloc`
/// yourself with `GLIBC_TUNABLES` or `MALLOC_*_`, to keep glibc's default.
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
    device: Device,
    strategy: Strategy,
    precision: Arc<dyn PrecisionPlugin>,
    scaler: Option<Arc<Mutex<GradScaler>>>,
    environment: Box<dyn ClusterEnvironment>,
    callbacks: Callbacks,
    loggers: Vec<Box<dyn Logger>>,
    comm: Option<Comm>,
    bucket_bytes: usize,
    /// The trainable parameters whose gradients `ddp` averages.
    ddp_params: Vec<Tensor>,
    buckets: strategy::GradientBuckets,
    /// Under `dp`: every device the batch is split between, the first
    /// being [`device`](Self::device).
    dp_devices: Vec<Device>,
    /// Under `dp`: the parameters whose replicas' gradients `backward`
    /// adds up.
    replica_gradients: strategy::dp::ReplicaGradients,
    /// The optimizer steps taken through `FabricOptimizer`s of this run:
    /// `dp` copies the weights to its replicas when it changed.
    optimizer_steps: Arc<std::sync::atomic::AtomicU64>,
    sync_gradients: bool,
    stop_requested: bool,
    latest_metrics: SharedMetrics,
    progress_bar: bool,
    finished: bool,
}

/// Everything a `Fabric` is made of, resolved by the builder.
pub(crate) struct Parts {
    pub(crate) accelerator: ResolvedAccelerator,
    pub(crate) device: Device,
    pub(crate) dp_devices: Vec<Device>,
    pub(crate) strategy: Strategy,
    pub(crate) precision: Box<dyn PrecisionPlugin>,
    pub(crate) scaler: Option<GradScaler>,
    pub(crate) environment: Box<dyn ClusterEnvironment>,
    pub(crate) callbacks: Callbacks,
    pub(crate) loggers: Vec<Box<dyn Logger>>,
    pub(crate) comm: Option<Comm>,
    pub(crate) bucket_bytes: usize,
}

impl std::fmt::Debug for Fabric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fabric")
            .field("accelerator", &self.accelerator)
            .field("device", &self.device)
            .field("strategy", &self.strategy)
            .field("precision", &self.precision.name())
            .field("environment", &self.environment.name())
            .field("global_rank", &self.global_rank())
            .field("world_size", &self.world_size())
            .field("callbacks", &self.callbacks.len())
            .field("loggers", &self.loggers.len())
            .finish()
    }
}

impl Fabric {
    /// A builder holding Lightning Fabric's defaults: `accelerator = "auto"`,
    /// `strategy = "auto"`, `devices = "auto"`, `num_nodes = 1`,
    /// `precision = "32-true"`.
    pub fn builder() -> FabricBuilder {
        crate::cuda::keep_loader();
        FabricBuilder::default()
    }

    /// A `Fabric` with every option at its default.
    pub fn new() -> Result<Self> {
        Self::builder().build()
    }

    pub(crate) fn new_resolved(parts: Parts) -> Self {
        if parts.device == Device::Cpu {
            keep_freed_host_memory();
        }
        Fabric {
            accelerator: parts.accelerator,
            device: parts.device,
            strategy: parts.strategy,
            precision: Arc::from(parts.precision),
            scaler: parts.scaler.map(|s| Arc::new(Mutex::new(s))),
            environment: parts.environment,
            callbacks: parts.callbacks,
            loggers: parts.loggers,
            comm: parts.comm,
            bucket_bytes: parts.bucket_bytes,
            ddp_params: Vec::new(),
            buckets: strategy::GradientBuckets::default(),
            dp_devices: parts.dp_devices,
            replica_gradients: Default::default(),
            optimizer_steps: Default::default(),
            sync_gradients: true,
            stop_requested: false,
            latest_metrics: SharedMetrics::default(),
            progress_bar: true,
            finished: false,
        }
    }

    pub(crate) fn with_progress_bar(mut self, enabled: bool) -> Self {
        self.progress_bar = enabled;
        self
    }

    // ---- where and what -------------------------------------------------

    /// The device this process trains on (under `dp`, the first of its
    /// devices, where the model the optimizer steps lives).
    pub fn device(&self) -> Device {
        self.device
    }

    /// Every device this process trains on: one, or under `dp` the devices
    /// each batch is split between.
    pub fn devices(&self) -> Vec<Device> {
        if self.dp_devices.is_empty() {
            vec![self.device]
        } else {
            self.dp_devices.clone()
        }
    }

    /// The accelerator in use, once `"auto"`/`"gpu"` are resolved: `"cpu"`,
    /// `"cuda"` or `"mps"`.
    pub fn accelerator(&self) -> &'static str {
        self.accelerator.name()
    }

    /// The strategy in use, once `"auto"` is resolved.
    pub fn strategy(&self) -> Strategy {
        self.strategy
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

    /// Whether this is the process with global rank 0, the one that logs,
    /// prints and writes checkpoints.
    pub fn is_global_zero(&self) -> bool {
        self.global_rank() == 0
    }

    // ---- set-up ---------------------------------------------------------

    /// Moves the variables of `vs` to the run's device and casts them to the
    /// run's precision, in place (models and optimizers built from `vs` keep
    /// working), and wraps `module`, the model built on `vs`.
    ///
    /// Under `dp` with several devices the model must be built once per
    /// device: use [`setup_module_with`](Self::setup_module_with), which
    /// works under every strategy.
    pub fn setup_module<M: ModuleT>(
        &mut self,
        vs: &mut VarStore,
        module: M,
    ) -> Result<FabricModule<M>> {
        if self.dp_devices.len() > 1 {
            return Err(Error::InvalidArgument(format!(
                "\"dp\" runs a replica of the model on each of its {} devices, and a built model cannot be copied: \
                 set it up with `fabric.setup_module_with(&mut vs, |path| build_model(path))`, which builds it once per device",
                self.dp_devices.len()
            )));
        }
        let module = self.setup_built_module(vs, module)?;
        self.call::<OnAfterSetup>(())?;
        Ok(module)
    }

    /// Builds a model with `build` on `vs` (`build` gets `vs.root()`) and
    /// sets it up as [`setup_module`](Self::setup_module) does. Under `dp`
    /// it also builds one replica per further device, each on its own var
    /// store; a forward pass then splits the batch between the devices,
    /// and [`backward`](Self::backward) adds the replicas' gradients to the
    /// model on the first device, the one the optimizer steps (build the
    /// optimizer on `vs`, after this call). Under every other strategy it
    /// is `setup_module(vs, build(&vs.root()))`.
    ///
    /// Under `dp`: the replicas' gradients reach the first device in
    /// `fabric.backward` (a plain `loss.backward()` leaves them on the
    /// replicas); the replicas take the new weights after each step of an
    /// optimizer set up with [`setup_optimizer`](Self::setup_optimizer) or
    /// [`setup_with`](Self::setup_with) (or after any in-place change that
    /// bumps a variable's version, such as [`load`](Self::load)), so step
    /// through those; batch-norm statistics are computed per chunk, as in
    /// PyTorch's `DataParallel`; and building the replicas draws from the
    /// random generator (their values are then overwritten with the first
    /// device's), so the random numbers drawn after this call differ from a
    /// run on one device: seed again after setting up to line runs up.
    ///
    /// ```
    /// use fabric::Fabric;
    /// use tch::{nn, nn::OptimizerConfig};
    ///
    /// # fn main() -> fabric::Result<()> {
    /// let mut fabric = Fabric::builder().accelerator("cpu").build()?;
    /// let mut vs = nn::VarStore::new(tch::Device::Cpu);
    /// let model = fabric.setup_module_with(&mut vs, |p| nn::linear(p / "fc", 4, 2, Default::default()))?;
    /// let optimizer = fabric.setup_optimizer(nn::Sgd::default().build(&vs, 0.1)?)?;
    /// # let _ = (model, optimizer);
    /// # Ok(()) }
    /// ```
    pub fn setup_module_with<M: ModuleT>(
        &mut self,
        vs: &mut VarStore,
        build: impl Fn(&tch::nn::Path) -> M,
    ) -> Result<FabricModule<M>> {
        let module = build(&vs.root());
        let mut module = self.setup_built_module(vs, module)?;
        if self.dp_devices.len() > 1 {
            let precision = Arc::clone(&self.precision);
            let prepare = |replica: &mut VarStore| precision.convert_module(replica);
            let replicas = strategy::dp::replicate(
                vs,
                &self.dp_devices[1..],
                &build,
                &prepare,
                Arc::clone(&self.optimizer_steps),
            )?;
            self.replica_gradients.track(&replicas);
            module = module.with_replicas(replicas);
        }
        self.call::<OnAfterSetup>(())?;
        Ok(module)
    }

    fn setup_built_module<M: ModuleT>(
        &mut self,
        vs: &mut VarStore,
        module: M,
    ) -> Result<FabricModule<M>> {
        if vs.device() != self.device {
            vs.set_device(self.device);
        }
        self.precision.convert_module(vs)?;
        if let Some(comm) = &self.comm {
            // Every rank starts from rank 0's parameters and buffers.
            let mut variables: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
            variables.sort_by(|a, b| a.0.cmp(&b.0));
            let variables: Vec<Tensor> = variables.into_iter().map(|(_, t)| t).collect();
            strategy::broadcast_parameters(comm, &variables)?;
            self.ddp_params.extend(vs.trainable_variables());
        }

        Ok(FabricModule::new(
            module,
            Arc::clone(&self.precision),
            self.device,
        ))
    }

    /// Wraps an optimizer built on a var store that was (or will be) set up
    /// with [`setup_module`](Self::setup_module): tch's [`Optimizer`](tch::nn::Optimizer) or one
    /// of fabric's own ([`optim`](crate::optim)), whose state checkpoints
    /// save.
    pub fn setup_optimizer(
        &mut self,
        optimizer: impl Into<AnyOptimizer>,
    ) -> Result<FabricOptimizer> {
        Ok(FabricOptimizer::new(optimizer.into(), self.scaler.clone())
            .counting_steps(Arc::clone(&self.optimizer_steps)))
    }

    /// Sets up a model and its optimizer together, as Lightning's
    /// `model, optimizer = fabric.setup(model, optimizer)`.
    pub fn setup<M: ModuleT>(
        &mut self,
        vs: &mut VarStore,
        module: M,
        optimizer: impl Into<AnyOptimizer>,
    ) -> Result<(FabricModule<M>, FabricOptimizer)> {
        let module = self.setup_module(vs, module)?;
        let optimizer = self.setup_optimizer(optimizer)?;
        Ok((module, optimizer))
    }

    /// [`setup_module_with`](Self::setup_module_with) and
    /// [`setup_optimizer`](Self::setup_optimizer) together: builds the model
    /// with `build` on `vs`, then the optimizer with `optimizer` on `vs`
    /// (once the model's variables exist and are on the run's device). The
    /// form of [`setup`](Self::setup) that works under every strategy,
    /// `dp` included.
    ///
    /// ```
    /// use fabric::Fabric;
    /// use tch::{nn, nn::OptimizerConfig};
    ///
    /// # fn main() -> fabric::Result<()> {
    /// let mut fabric = Fabric::builder().accelerator("cpu").build()?;
    /// let mut vs = nn::VarStore::new(tch::Device::Cpu);
    /// let (model, optimizer) = fabric.setup_with(
    ///     &mut vs,
    ///     |p| nn::linear(p / "fc", 4, 2, Default::default()),
    ///     |vs| nn::Adam::default().build(vs, 1e-3),
    /// )?;
    /// # let _ = (model, optimizer);
    /// # Ok(()) }
    /// ```
    pub fn setup_with<M, O, E>(
        &mut self,
        vs: &mut VarStore,
        build: impl Fn(&tch::nn::Path) -> M,
        optimizer: impl FnOnce(&VarStore) -> std::result::Result<O, E>,
    ) -> Result<(FabricModule<M>, FabricOptimizer)>
    where
        M: ModuleT,
        O: Into<AnyOptimizer>,
        E: Into<Error>,
    {
        let module = self.setup_module_with(vs, build)?;
        let optimizer = optimizer(vs).map_err(Into::into)?;
        let optimizer = self.setup_optimizer(optimizer)?;
        Ok((module, optimizer))
    }

    /// Makes a loader's batches arrive on the run's device.
    ///
    /// With several processes each rank gets its own shard of every epoch,
    /// as with PyTorch's `DistributedSampler`: the epoch's order (the same on
    /// every rank) is padded by repeating its start to a multiple of the
    /// world size, and rank `r` takes every `world_size`-th sample from
    /// position `r`. Shards are disjoint, cover the data, and have equal
    /// length. A shuffling loader without a seed of its own takes rank 0's.
    pub fn setup_dataloaders<D>(&self, mut loader: DataLoader<D>) -> Result<FabricDataLoader<D>>
    where
        D: Dataset,
        D::Batch: ToDevice,
    {
        if let Some(comm) = &self.comm {
            let seed = strategy::agree_on_seed(comm, loader.effective_seed())?;
            loader = loader.seed(seed);
            loader.set_shard(comm.rank(), comm.size());
        }
        Ok(FabricDataLoader::new(loader, self.device))
    }

    /// Moves data (a tensor, or tuples, vectors, options of them) to the
    /// run's device.
    pub fn to_device<T: ToDevice>(&self, data: T) -> T {
        data.to_device(self.device)
    }

    // ---- training -------------------------------------------------------

    /// Computes the gradients of `loss`, as `loss.backward()` with whatever
    /// the strategy and precision add (under `16-mixed`, the loss is scaled
    /// first).
    pub fn backward(&mut self, loss: &Tensor) -> Result<()> {
        if loss.numel() != 1 {
            return Err(Error::InvalidArgument(format!(
                "backward needs a loss with one element, this one has shape {:?}; reduce it first (for example with `.mean(None)`)",
                loss.size()
            )));
        }
        if !loss.requires_grad() {
            return Err(Error::InvalidArgument(
                "the loss does not require a gradient: it was computed without any trainable parameter (or under no_grad)".into(),
            ));
        }
        match &self.scaler {
            Some(scaler) => {
                let scaled = scaler
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .scale_loss(loss)?;
                scaled.f_backward()?
            }
            None => loss.f_backward()?,
        }
        self.replica_gradients.reduce()?;
        if let Some(comm) = &self.comm
            && self.sync_gradients
        {
            self.buckets
                .average(comm, &self.ddp_params, self.bucket_bytes)?;
        }
        Ok(())
    }

    /// Clips the gradients of the optimizer's parameters (unscaled first
    /// under `16-mixed`). Returns the total norm before clipping for
    /// [`GradClip::Norm`], `None` for [`GradClip::Value`].
    pub fn clip_gradients(
        &mut self,
        optimizer: &mut FabricOptimizer,
        clip: GradClip,
    ) -> Result<Option<f64>> {
        optimizer.unscale_gradients()?;
        let grads: Vec<Tensor> = optimizer
            .parameters()
            .iter()
            .map(Tensor::grad)
            .filter(Tensor::defined)
            .collect();
        tch::no_grad(|| match clip {
            GradClip::Value(value) => {
                if !(value.is_finite() && value >= 0.0) {
                    return Err(Error::InvalidArgument(format!(
                        "clip value must be finite and not negative, got {value}"
                    )));
                }
                for mut grad in grads {
                    let _ = grad.f_clamp_(-value, value)?;
                }
                Ok(None)
            }
            GradClip::Norm {
                max_norm,
                norm_type,
                error_if_nonfinite,
            } => {
                let valid = max_norm.is_finite() && max_norm >= 0.0 && norm_type > 0.0;
                if !valid {
                    return Err(Error::InvalidArgument(format!(
                        "clipping by norm needs a finite max_norm >= 0 and a norm_type > 0, got max_norm = {max_norm}, norm_type = {norm_type}"
                    )));
                }
                if grads.is_empty() {
                    return Ok(Some(0.0));
                }
                let norms = grads
                    .iter()
                    .map(|g| {
                        g.f_to_kind(Kind::Double)?.f_norm_scalaropt_dim(
                            norm_type,
                            [0i64; 0].as_slice(),
                            false,
                        )
                    })
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                let norms = Tensor::f_stack(&norms, 0)?;
                let total = if norm_type.is_infinite() {
                    norms.f_max()?.f_double_value(&[])?
                } else {
                    norms
                        .f_norm_scalaropt_dim(norm_type, [0i64; 0].as_slice(), false)?
                        .f_double_value(&[])?
                };
                if !total.is_finite() && error_if_nonfinite {
                    return Err(Error::NonFiniteNorm { norm: total });
                }
                let coefficient = max_norm / (total + 1e-6);
                if coefficient < 1.0 {
                    for mut grad in grads {
                        let _ = grad.f_mul_scalar_(coefficient)?;
                    }
                }
                Ok(Some(total))
            }
        })
    }

    /// A scope in which operations run under the precision's autocast, as
    /// Lightning's `fabric.autocast()` (nothing changes for the `-true`
    /// precisions). Autocast ends when the guard is dropped.
    pub fn autocast(&self) -> Result<AutocastGuard> {
        match self.precision.autocast_dtype() {
            Some(dtype) => AutocastGuard::new(self.device, dtype),
            None => Ok(AutocastGuard::noop()),
        }
    }

    /// Waits until every process reaches this point. With one process it
    /// returns at once.
    pub fn barrier(&self) -> Result<()> {
        match &self.comm {
            Some(comm) => comm.barrier(),
            None => Ok(()),
        }
    }

    /// Runs `f` (typically a `backward`) without averaging gradients between
    /// ranks when `enabled`, for gradient accumulation, as Lightning's
    /// `with fabric.no_backward_sync(model, enabled=...)`. Gradients
    /// accumulate locally; the first `backward` outside averages them all.
    pub fn no_backward_sync<T>(&mut self, enabled: bool, f: impl FnOnce(&mut Fabric) -> T) -> T {
        let previous = std::mem::replace(&mut self.sync_gradients, !enabled);
        let result = f(self);
        self.sync_gradients = previous;
        result
    }

    /// The element-wise reduction of `tensor` over every rank (a copy of it
    /// with one process). CPU tensors of any floating-point or integer type,
    /// any shape and layout.
    pub fn all_reduce(&self, tensor: &Tensor, op: ReduceOp) -> Result<Tensor> {
        match &self.comm {
            Some(comm) => comm.all_reduce(tensor, op),
            None => Ok(tensor.copy()),
        }
    }

    /// Rank `src`'s `tensor`, on every rank.
    pub fn broadcast(&self, tensor: &Tensor, src: usize) -> Result<Tensor> {
        match &self.comm {
            Some(comm) => comm.broadcast(tensor, src),
            None if src == 0 => Ok(tensor.copy()),
            None => Err(Error::InvalidArgument(format!(
                "broadcast from rank {src}, but the world has 1 rank"
            ))),
        }
    }

    /// Every rank's `tensor` (the same shape on every rank), stacked along a
    /// new first dimension in rank order.
    pub fn all_gather(&self, tensor: &Tensor) -> Result<Tensor> {
        match &self.comm {
            Some(comm) => comm.all_gather(tensor),
            None => Ok(tensor.f_unsqueeze(0)?.copy()),
        }
    }

    /// Seeds libtorch's generators and the shuffling of data loaders that
    /// have no seed of their own, as Lightning's `seed_everything`. Returns
    /// the seed.
    pub fn seed_everything(&self, seed: u64) -> u64 {
        seed::seed_everything(seed);
        seed
    }

    /// Prints a line from the process with global rank 0 only.
    pub fn print(&self, message: impl Display) {
        if self.is_global_zero() {
            println!("{message}");
        }
    }

    // ---- loggers and callbacks -----------------------------------------

    /// Logs one metric to every logger, from global rank 0 only.
    pub fn log(&mut self, name: &str, value: impl Metric) -> Result<()> {
        self.log_dict([(name, value)], None)
    }

    /// Logs several metrics taken at `step` to every logger, from global
    /// rank 0 only.
    pub fn log_dict<'n, V: Metric>(
        &mut self,
        metrics: impl IntoIterator<Item = (&'n str, V)>,
        step: Option<u64>,
    ) -> Result<()> {
        if !self.is_global_zero() {
            return Ok(());
        }
        let metrics = metrics
            .into_iter()
            .map(|(name, value)| Ok((name, value.to_f64()?)))
            .collect::<Result<Vec<_>>>()?;
        self.latest_metrics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .update(&metrics);
        for logger in &mut self.loggers {
            logger
                .log_metrics(&metrics, step)
                .map_err(|source| Error::Plugin {
                    what: format!("logger `{}`: log_metrics", logger.name()),
                    source,
                })?;
        }
        Ok(())
    }

    /// Fires hook `H` on every registered callback that handles it, in
    /// registration order, as Lightning's `fabric.call(...)` but typed: a
    /// misspelt hook or a wrong argument does not compile, and callbacks
    /// without the hook are skipped by type.
    ///
    /// The handlers' outcomes are combined and returned: metrics they hand
    /// back are logged, and a stop request is remembered for
    /// [`should_stop`](Self::should_stop). The first handler error ends the
    /// dispatch and is returned.
    ///
    /// ```
    /// use fabric::{Fabric, hooks::{Metrics, OnTrainEpochEnd}};
    ///
    /// let mut fabric = Fabric::builder().accelerator("cpu").build().unwrap();
    /// let metrics = Metrics::from([("loss", 0.5)]);
    /// let outcome = fabric.call::<OnTrainEpochEnd>((3, &metrics)).unwrap();
    /// assert!(!outcome.should_stop());
    /// ```
    pub fn call<H: Hook>(&mut self, args: H::Args<'_>) -> Result<Outcome> {
        let outcome = self.callbacks.call::<H>(args)?;
        if outcome.should_stop() {
            self.stop_requested = true;
        }
        if !outcome.metrics().is_empty() {
            let metrics: Vec<(&str, f64)> = outcome
                .metrics()
                .iter()
                .map(|(k, v)| (k.as_str(), *v))
                .collect();
            self.log_dict(metrics, None)?;
        }
        Ok(outcome)
    }

    /// Whether a callback asked to stop training, agreed across ranks: true
    /// on every rank as soon as one rank's callbacks asked. With several
    /// processes this is a collective: call it at the same point on every
    /// rank (typically at the end of an epoch).
    pub fn should_stop(&self) -> Result<bool> {
        match &self.comm {
            Some(comm) => {
                let flag = Tensor::from_slice(&[i64::from(self.stop_requested)]);
                Ok(comm.all_reduce(&flag, ReduceOp::Max)?.f_int64_value(&[0])? != 0)
            }
            None => Ok(self.stop_requested),
        }
    }

    /// Logs the run's hyperparameters (any value serde serialises to a map:
    /// a struct, a `HashMap`, `serde_json::json!({...})`) to every logger,
    /// from global rank 0 only, as Lightning's `logger.log_hyperparams`.
    pub fn log_hyperparams<T: serde::Serialize + ?Sized>(&mut self, params: &T) -> Result<()> {
        if !self.is_global_zero() || self.loggers.is_empty() {
            return Ok(());
        }
        let params: Hyperparams = match serde_json::to_value(params) {
            Ok(serde_json::Value::Object(map)) => map,
            Ok(other) => {
                return Err(Error::InvalidArgument(format!(
                    "hyperparameters must serialise to a map of names to values, not {other}"
                )));
            }
            Err(e) => {
                return Err(Error::InvalidArgument(format!(
                    "hyperparameters cannot be serialised: {e}"
                )));
            }
        };
        for logger in &mut self.loggers {
            logger
                .log_hyperparams(&params)
                .map_err(|source| Error::Plugin {
                    what: format!("logger `{}`: log_hyperparams", logger.name()),
                    source,
                })?;
        }
        Ok(())
    }

    /// The first registered logger of type `T`, as Lightning's
    /// `fabric.logger` (for its `log_dir`, say).
    pub fn logger<T: Logger>(&self) -> Option<&T> {
        self.loggers
            .iter()
            .find_map(|l| (&**l as &dyn Any).downcast_ref::<T>())
    }

    /// The first registered logger of type `T`, mutably.
    pub fn logger_mut<T: Logger>(&mut self) -> Option<&mut T> {
        self.loggers
            .iter_mut()
            .find_map(|l| (&mut **l as &mut dyn Any).downcast_mut::<T>())
    }

    /// A progress bar over `total` steps showing steps per second and the
    /// latest metrics logged with [`log`](Self::log)/[`log_dict`](Self::log_dict).
    /// It draws on global rank 0 only, when standard output and standard
    /// error are terminals, and unless
    /// [`progress_bar(false)`](crate::FabricBuilder::progress_bar) was set;
    /// otherwise it is hidden.
    pub fn progress(&self, total: u64) -> Progress {
        Progress::new(
            total,
            self.progress_bar && self.is_global_zero(),
            Arc::clone(&self.latest_metrics),
        )
    }

    // ---- checkpoints ---------------------------------------------------

    /// Saves `state` to the checkpoint directory `path`, as Lightning's
    /// `fabric.save(path, state)`: only global rank 0 writes, atomically
    /// (a crash leaves the previous checkpoint intact), and every rank waits
    /// until it is written. The format is described in [`checkpoint`].
    ///
    /// Fires [`OnSaveCheckpoint`](crate::hooks::OnSaveCheckpoint) first.
    pub fn save(&mut self, path: impl AsRef<Path>, state: &State<'_>) -> Result<()> {
        self.call::<crate::hooks::OnSaveCheckpoint>((path.as_ref(),))?;
        let result = if self.is_global_zero() {
            checkpoint::save(path.as_ref(), state)
        } else {
            Ok(())
        };
        self.barrier()?;
        result
    }

    /// Loads the checkpoint at `path` into `state`, strictly: every entry,
    /// key, shape and dtype of the state must be in the checkpoint and fit,
    /// or nothing changes and the error lists each problem. Values of the
    /// checkpoint that the state does not name come back in
    /// [`LoadReport::remainder`].
    pub fn load(&mut self, path: impl AsRef<Path>, state: &mut State<'_>) -> Result<LoadReport> {
        self.load_with(path, state, true)
    }

    /// [`load`](Self::load) with Lightning's `strict`: with `strict = false`,
    /// what fits is loaded and the rest is reported in the [`LoadReport`]
    /// (damaged or foreign files are errors in both modes). Fires
    /// [`OnLoadCheckpoint`](crate::hooks::OnLoadCheckpoint) once loaded.
    pub fn load_with(
        &mut self,
        path: impl AsRef<Path>,
        state: &mut State<'_>,
        strict: bool,
    ) -> Result<LoadReport> {
        let report = checkpoint::load(path.as_ref(), state, strict)?;
        self.call::<crate::hooks::OnLoadCheckpoint>((path.as_ref(),))?;
        Ok(report)
    }

    /// The first registered callback of type `T`.
    pub fn callback<T: Callback>(&self) -> Option<&T> {
        self.callbacks.get::<T>()
    }

    /// The first registered callback of type `T`, mutably.
    pub fn callback_mut<T: Callback>(&mut self) -> Option<&mut T> {
        self.callbacks.get_mut::<T>()
    }

    /// Finalises every logger; `success` says whether training succeeded.
    /// Called when the `Fabric` is dropped if not before; later calls do
    /// nothing.
    pub fn finish(&mut self, success: bool) -> Result<()> {
        if std::mem::replace(&mut self.finished, true) {
            return Ok(());
        }
        let mut first_error = None;
        for logger in &mut self.loggers {
            if let Err(source) = logger.finalize(success) {
                let error = Error::Plugin {
                    what: format!("logger `{}`: finalize", logger.name()),
                    source,
                };
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Stops glibc's `malloc` from handing freed heap memory back to the system
/// after every step, once per process, unless the environment configures
/// `malloc` itself (`GLIBC_TUNABLES`, `MALLOC_*_`) or
/// `FABRIC_KEEP_FREED_MEMORY=0` opts out.
///
/// libtorch allocates CPU tensors with plain `malloc`. By default glibc
/// trims the top of the heap whenever more than a (dynamically raised)
/// threshold is free there, and a training step frees and reallocates
/// megabytes of activations, gradients and autocast copies: the pages are
/// returned at the end of one step and faulted in, zeroed, in the next.
/// With a fixed mmap threshold of 32 MiB and a trim threshold of 1 GiB, the
/// heap keeps its pages between steps (tensors above 32 MiB are still
/// mapped and unmapped individually). What a step costs then no longer
/// depends on the heap's history: with the default policy it varied from 10
/// to 350 page faults per step depending on a few bytes allocated before
/// training, and `bf16-mixed` steps ran 2.5 times slower.
fn keep_freed_host_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            let configured = std::env::vars_os().any(|(name, _)| {
                let name = name.to_string_lossy();
                name == "GLIBC_TUNABLES" || (name.starts_with("MALLOC_") && name.ends_with('_'))
            });
            let opted_out = std::env::var("FABRIC_KEEP_FREED_MEMORY").is_ok_and(|v| v == "0");
            if !configured && !opted_out {
                // SAFETY: mallopt only changes malloc's tuning parameters.
                unsafe {
                    libc::mallopt(libc::M_MMAP_THRESHOLD, 32 * 1024 * 1024);
                    libc::mallopt(libc::M_TRIM_THRESHOLD, 1024 * 1024 * 1024);
                }
            }
        });
    }
}

impl Drop for Fabric {
    fn drop(&mut self) {
        if !self.finished {
            // Dropped while unwinding from a panic means training failed.
            if let Err(error) = self.finish(!std::thread::panicking()) {
                eprintln!("fabric: {error}");
            }
        }
    }
}
