//! Strategies: how a run spreads over devices and processes, as Lightning's
//! `strategies/`. Each strategy is an object owning its state (one file
//! each); [`Fabric`](crate::Fabric) holds one and asks it, never inspects it.
//!
//! | name | object | processes |
//! |---|---|---|
//! | `single_device` | [`SingleDeviceStrategy`] | one, on one device |
//! | `dp` | [`DataParallelStrategy`] | one, over every selected CUDA device |
//! | `ddp` | [`DdpStrategy`] | one per device, started by a launcher or by fabric |
//! | `ddp_spawn` | [`DdpStrategy::spawn`] | one per device, started by fabric for a function |
//!
//! Adding a strategy is a new file here implementing [`Strategy`] and one
//! line in `REGISTRY` (for its name in `strategy = "..."`).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use tch::nn::VarStore;
use tch::{Device, Tensor};

use crate::checkpoint::{self, LoadReport, State};
use crate::collectives::ReduceOp;
use crate::error::{Error, Result};

mod buckets;
mod clip;
mod ddp;
mod dp;
pub(crate) mod replicas;
mod single_device;

pub use clip::GradClip;
pub use ddp::DdpStrategy;
pub use dp::DataParallelStrategy;
pub use replicas::ReplicaSet;
pub use single_device::SingleDeviceStrategy;

/// How a strategy's processes come to exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProcessModel {
    /// One process on one device (`single_device`).
    OneDevice,
    /// One process over every selected device (`dp`).
    OneProcess,
    /// One process per device. Under a launcher (`mpirun`, `srun`,
    /// `torchrun`) each process joins as its rank; started plainly, fabric's
    /// launcher starts them: it re-runs the program (`ddp`), or with
    /// `spawn` runs a function in each and hands rank 0's result back
    /// (`ddp_spawn`).
    PerDevice {
        /// Whether the launcher runs a function rather than the program.
        spawn: bool,
    },
}

/// What a strategy is told about the process it runs in, when it joins the
/// run ([`Strategy::setup_environment`]).
#[derive(Debug, Clone)]
pub struct StrategyContext {
    pub(crate) devices: Vec<Device>,
    pub(crate) global_rank: usize,
    pub(crate) local_rank: usize,
    pub(crate) world_size: usize,
    pub(crate) num_nodes: usize,
    pub(crate) collective_timeout: Duration,
    pub(crate) failure_timeout: Duration,
    pub(crate) shared_memory_room: bool,
}

impl StrategyContext {
    /// The devices of this process: one, or under `dp` every device the
    /// batch is split between (the first is the root device).
    pub fn devices(&self) -> &[Device] {
        &self.devices
    }

    /// The device the model the optimizer steps lives on.
    pub fn root_device(&self) -> Device {
        self.devices[0]
    }

    /// This process's rank among all processes.
    pub fn global_rank(&self) -> usize {
        self.global_rank
    }

    /// This process's rank on its node.
    pub fn local_rank(&self) -> usize {
        self.local_rank
    }

    /// The number of processes.
    pub fn world_size(&self) -> usize {
        self.world_size
    }

    /// The number of nodes.
    pub fn num_nodes(&self) -> usize {
        self.num_nodes
    }

    /// How long a collective may wait for the other ranks.
    pub fn collective_timeout(&self) -> Duration {
        self.collective_timeout
    }

    /// How long a rank may take to end once the run failed elsewhere.
    pub fn failure_timeout(&self) -> Duration {
        self.failure_timeout
    }

    /// Whether /dev/shm has room for the shared-memory window through which
    /// the ranks of one machine all-reduce (Docker's default 64 MiB may not).
    pub fn shared_memory_room(&self) -> bool {
        self.shared_memory_room
    }
}

/// A strategy: where a run's models live and how their gradients and
/// tensors travel between devices and processes, as Lightning's `Strategy`.
///
/// The built-in strategies are [`SingleDeviceStrategy`],
/// [`DataParallelStrategy`] and [`DdpStrategy`]; pass one with parameters,
/// or your own, through `strategy = ...` / [`FabricBuilder::strategy`](crate::FabricBuilder::strategy).
/// A strategy of your own usually wraps a built-in one and changes what it
/// needs. A wrapper forwards every method it does not change, the provided
/// ones too where the wrapped strategy overrides them
/// (`DataParallelStrategy`: `devices`, `replica_devices`, `track_replicas`,
/// `optimizer_step_counter`), or it loses what they do:
///
/// ```
/// use fabric::strategy::{DdpStrategy, ProcessModel, Strategy, StrategyContext};
/// use fabric::{Fabric, ReduceOp};
/// use tch::{Device, Tensor};
///
/// /// `ddp` that reports every gradient reduction.
/// struct LoudDdp(DdpStrategy);
///
/// impl Strategy for LoudDdp {
///     fn name(&self) -> &str { "loud_ddp" }
///     fn process_model(&self) -> ProcessModel { self.0.process_model() }
///     fn setup_environment(&mut self, context: &StrategyContext) -> fabric::Result<()> {
///         self.0.setup_environment(context)
///     }
///     fn root_device(&self) -> Device { self.0.root_device() }
///     fn global_rank(&self) -> usize { self.0.global_rank() }
///     fn world_size(&self) -> usize { self.0.world_size() }
///     fn setup_module(&mut self, vs: &mut tch::nn::VarStore) -> fabric::Result<()> {
///         self.0.setup_module(vs)
///     }
///     fn backward(&mut self, loss: &Tensor) -> fabric::Result<()> {
///         println!("backward");
///         self.0.backward(loss)
///     }
///     fn set_backward_sync(&mut self, enabled: bool) -> bool { self.0.set_backward_sync(enabled) }
///     fn all_reduce(&self, t: &Tensor, op: ReduceOp) -> fabric::Result<Tensor> { self.0.all_reduce(t, op) }
///     fn broadcast(&self, t: &Tensor, src: usize) -> fabric::Result<Tensor> { self.0.broadcast(t, src) }
///     fn all_gather(&self, t: &Tensor) -> fabric::Result<Tensor> { self.0.all_gather(t) }
///     fn barrier(&self) -> fabric::Result<()> { self.0.barrier() }
/// }
///
/// # fn main() -> fabric::Result<()> {
/// let fabric = Fabric::builder().accelerator("cpu").strategy(LoudDdp(DdpStrategy::new())).build()?;
/// assert_eq!(fabric.strategy().name(), "loud_ddp");
/// # Ok(()) }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a strategy",
    note = "implement `fabric::strategy::Strategy` for `{Self}`, or pass a built-in strategy such as `fabric::strategy::DdpStrategy::new()`"
)]
pub trait Strategy: std::any::Any + Send {
    /// The strategy's name, such as `"ddp"`.
    fn name(&self) -> &str;

    /// How its processes come to exist: the connector plans the launch
    /// from it.
    fn process_model(&self) -> ProcessModel;

    /// Joins the run: called once in each process that trains, after the
    /// launcher, with the devices and ranks of this process (`ddp` forms
    /// the world of processes here).
    fn setup_environment(&mut self, context: &StrategyContext) -> Result<()>;

    /// The device the model the optimizer steps lives on.
    fn root_device(&self) -> Device;

    /// Every device of this process; the root device alone by default.
    fn devices(&self) -> Vec<Device> {
        vec![self.root_device()]
    }

    /// This process's rank among the processes of the run.
    fn global_rank(&self) -> usize;

    /// The number of processes of the run.
    fn world_size(&self) -> usize;

    /// Takes a model whose variables `vs` holds, already on the root
    /// device and in the run's precision (`ddp`: makes every rank start
    /// from rank 0's values and records its trainable variables).
    fn setup_module(&mut self, vs: &mut VarStore) -> Result<()>;

    /// The devices beyond the root one on which this strategy runs a
    /// replica of each model in this process (`dp`); none by default. When
    /// there are some, `setup_module_with` builds the replicas and hands
    /// them to [`track_replicas`](Self::track_replicas).
    fn replica_devices(&self) -> Vec<Device> {
        Vec::new()
    }

    /// Takes the replicas of a model built on [`replica_devices`](Self::replica_devices).
    fn track_replicas(&mut self, replicas: ReplicaSet) -> Result<()> {
        let _ = replicas;
        Err(Error::InvalidArgument(format!(
            "strategy \"{}\" runs no replicas of a model",
            self.name()
        )))
    }

    /// A counter the optimizers set up under this strategy increase at each
    /// step, for a strategy that follows steps (`dp` copies the weights to
    /// its replicas after each); `None` by default.
    fn optimizer_step_counter(&self) -> Option<Arc<AtomicU64>> {
        None
    }

    /// Computes the gradients of `loss` (already scaled by the precision)
    /// and brings them where the optimizer expects them: averaged over the
    /// ranks (`ddp`), summed from the replicas (`dp`).
    fn backward(&mut self, loss: &Tensor) -> Result<()>;

    /// Whether [`backward`](Self::backward) reduces gradients between
    /// devices or processes (`false` while accumulating, Lightning's
    /// `no_backward_sync`); returns the previous setting.
    fn set_backward_sync(&mut self, enabled: bool) -> bool;

    /// Whether [`backward`](Self::backward) reduces the gradients of one
    /// model, the `model`-th set up (from 0), for
    /// [`Fabric::no_backward_sync_for`](crate::Fabric::no_backward_sync_for);
    /// returns the previous setting. By default a strategy has one setting
    /// for all its models, which this changes.
    fn set_model_backward_sync(&mut self, model: usize, enabled: bool) -> Result<bool> {
        let _ = model;
        Ok(self.set_backward_sync(enabled))
    }

    /// The element-wise reduction of `tensor` over every rank.
    fn all_reduce(&self, tensor: &Tensor, op: ReduceOp) -> Result<Tensor>;

    /// Rank `src`'s `tensor`, on every rank.
    fn broadcast(&self, tensor: &Tensor, src: usize) -> Result<Tensor>;

    /// Every rank's `tensor`, stacked along a new first dimension.
    fn all_gather(&self, tensor: &Tensor) -> Result<Tensor>;

    /// Waits until every rank reaches this point.
    fn barrier(&self) -> Result<()>;

    /// Which shard of each epoch a data loader of this process visits:
    /// `(rank, number of shards)`, or `None` for every sample. The ranks of
    /// the run by default.
    fn data_shard(&self) -> Option<(usize, usize)> {
        (self.world_size() > 1).then(|| (self.global_rank(), self.world_size()))
    }

    /// Clips the gradients `grads` (of the parameters an optimizer updates);
    /// returns the total norm before clipping for [`GradClip::Norm`]. The
    /// norm over the gradients as they are here by default; a strategy that
    /// shards gradients computes it across shards.
    fn clip_gradients(&mut self, grads: &[Tensor], clip: GradClip) -> Result<Option<f64>> {
        clip::clip(grads, clip)
    }

    /// Saves `state` to `path`: global rank 0 writes the whole checkpoint
    /// and every rank waits for it, by default. A strategy that shards
    /// what it saves writes each rank's part.
    fn save_checkpoint(&mut self, path: &Path, state: &State<'_>) -> Result<()> {
        let result = if self.global_rank() == 0 {
            checkpoint::save(path, state)
        } else {
            Ok(())
        };
        // Every rank waits, and learns of rank 0's failure through it.
        let failed = Tensor::from_slice(&[i64::from(result.is_err())]);
        let failed = self
            .all_reduce(&failed, ReduceOp::Max)?
            .f_int64_value(&[0])?
            != 0;
        match result {
            Err(error) => Err(error),
            Ok(()) if failed => Err(Error::Checkpoint {
                path: path.to_owned(),
                reason: "rank 0 could not write it (its error is in its output)".into(),
            }),
            Ok(()) => Ok(()),
        }
    }

    /// Loads the checkpoint at `path` into `state` (every rank reads the
    /// whole checkpoint, by default).
    fn load_checkpoint(
        &mut self,
        path: &Path,
        state: &mut State<'_>,
        strict: bool,
    ) -> Result<LoadReport> {
        checkpoint::load(path, state, strict)
    }

    /// Releases what the strategy holds at the end of the run.
    fn teardown(&mut self) -> Result<()> {
        Ok(())
    }
}

/// Makes a registered strategy with its default parameters.
pub(crate) type MakeStrategy = fn() -> Box<dyn Strategy>;

/// The strategies `strategy = "..."` names, one line each: the option's
/// family and the object it makes.
pub(crate) const REGISTRY: &[(fabric_options::Strategy, MakeStrategy)] = &[
    (fabric_options::Strategy::SingleDevice, || {
        Box::new(SingleDeviceStrategy::new())
    }),
    (fabric_options::Strategy::Dp, || {
        Box::new(DataParallelStrategy::new())
    }),
    (fabric_options::Strategy::Ddp, || {
        Box::new(DdpStrategy::new())
    }),
    (fabric_options::Strategy::DdpSpawn, || {
        Box::new(DdpStrategy::spawn())
    }),
];

/// The registered strategy for `name`, or `None` for a name fabric
/// recognises but does not run.
pub(crate) fn from_name(name: fabric_options::Strategy) -> Option<Box<dyn Strategy>> {
    REGISTRY
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, make)| make())
}

/// What `strategy` takes: a name (anything that converts into a
/// [`Value`](fabric_options::Value)), or a strategy object such as
/// [`DdpStrategy`] with parameters, or your own [`Strategy`].
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a strategy",
    note = "`strategy` takes a name such as \"ddp\", `fabric::strategy::DdpStrategy::new()` with parameters, or a type implementing `fabric::strategy::Strategy`"
)]
pub trait IntoStrategy {
    /// The strategy as the builder keeps it.
    fn into_strategy(self) -> StrategyChoice;
}

/// A strategy as given to the builder: a name to resolve, or an object.
pub enum StrategyChoice {
    /// A name or alias, parsed with `strategy`'s rules.
    Name(fabric_options::Value),
    /// A strategy object.
    Object(Box<dyn Strategy>),
}

impl std::fmt::Debug for StrategyChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StrategyChoice::Name(value) => write!(f, "{value:?}"),
            StrategyChoice::Object(strategy) => write!(f, "{}", strategy.name()),
        }
    }
}

/// Whether `strategy` is one of fabric's own, whose name takes part in the
/// option checks (a user's strategy may take any name).
pub(crate) fn is_built_in(strategy: &dyn Strategy) -> bool {
    let any = strategy as &dyn std::any::Any;
    any.is::<SingleDeviceStrategy>() || any.is::<DataParallelStrategy>() || any.is::<DdpStrategy>()
}

#[diagnostic::do_not_recommend]
impl<S: Strategy> IntoStrategy for S {
    fn into_strategy(self) -> StrategyChoice {
        StrategyChoice::Object(Box::new(self))
    }
}

#[diagnostic::do_not_recommend]
impl IntoStrategy for Box<dyn Strategy> {
    fn into_strategy(self) -> StrategyChoice {
        StrategyChoice::Object(self)
    }
}

/// Names: a string, or an option value (whose type the parser checks).
macro_rules! strategy_names {
    ($($ty:ty),*) => {$(
        #[diagnostic::do_not_recommend]
        impl IntoStrategy for $ty {
            fn into_strategy(self) -> StrategyChoice {
                StrategyChoice::Name(self.into())
            }
        }
    )*};
}
strategy_names!(&str, String, &String, fabric_options::Value);
