//! `ddp` and `ddp_spawn`: one process per device, every rank holding the
//! whole model, gradients averaged after each backward pass, as
//! Lightning's `DDPStrategy`.

use std::time::Duration;

use tch::nn::VarStore;
use tch::{Device, Tensor};

use super::buckets::DEFAULT_BUCKET_BYTES;
use super::{ProcessModel, Strategy, StrategyContext};
use crate::collectives::{Comm, MpiComm, NcclComm, ReduceOp};
use crate::error::{Error, Result};
use crate::shim::hooks::GradReadyHooks;

mod models;

use models::DdpModel;

/// The `ddp` strategy, with its parameters, as Lightning's
/// `strategy=DDPStrategy(...)`: one process per device, gradients averaged
/// in buckets of `bucket_cap_mb` after each backward pass. CPU tensors
/// travel over Open MPI, CUDA tensors over NCCL.
///
/// Each bucket's all-reduce starts while the backward pass is still
/// running, as soon as the backward pass has accumulated all the bucket's
/// gradients, as PyTorch's DDP does (see [`overlap`](Self::overlap)).
///
/// With several models (a GAN's generator and discriminator), a backward
/// pass reduces the gradients of the models that took part in it, as
/// PyTorch's DDP does per wrapped module: those whose parameters the
/// backward pass reached on some rank (see
/// [`find_unused_parameters`](Self::find_unused_parameters)).
///
/// ```
/// use std::time::Duration;
/// use fabric::Fabric;
/// use fabric::strategy::DdpStrategy;
///
/// let fabric = Fabric::builder()
///     .accelerator("cpu")
///     .strategy(DdpStrategy::new().bucket_cap_mb(50.0).collective_timeout(Duration::from_secs(600)))
///     .build()
///     .unwrap();
/// assert_eq!(fabric.strategy().name(), "ddp");
/// ```
pub struct DdpStrategy {
    bucket_cap_mb: Option<f64>,
    collective_timeout: Option<Duration>,
    failure_timeout: Option<Duration>,
    spawn: bool,
    device: Device,
    global_rank: usize,
    world_size: usize,
    /// The collectives, in a run of several processes.
    comm: Option<Comm>,
    /// The models set up, each with its trainable parameters and buckets.
    models: Vec<DdpModel>,
    find_unused_parameters: bool,
    static_graph: bool,
    sync: bool,
    overlap: bool,
    /// A gradient-ready hook on every trainable parameter of the models set
    /// up, numbered model after model.
    hooks: GradReadyHooks,
}

impl std::fmt::Debug for DdpStrategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DdpStrategy")
            .field("bucket_cap_mb", &self.bucket_cap_mb)
            .field("collective_timeout", &self.collective_timeout)
            .field("failure_timeout", &self.failure_timeout)
            .field("spawn", &self.spawn)
            .field("find_unused_parameters", &self.find_unused_parameters)
            .field("static_graph", &self.static_graph)
            .field("overlap", &self.overlap)
            .field("device", &self.device)
            .field("world_size", &self.world_size)
            .finish()
    }
}

impl Default for DdpStrategy {
    fn default() -> Self {
        Self::new()
    }
}

impl DdpStrategy {
    /// `ddp` with PyTorch's defaults.
    pub fn new() -> Self {
        DdpStrategy {
            bucket_cap_mb: None,
            collective_timeout: None,
            failure_timeout: None,
            spawn: false,
            device: Device::Cpu,
            global_rank: 0,
            world_size: 1,
            comm: None,
            models: Vec::new(),
            find_unused_parameters: false,
            static_graph: false,
            sync: true,
            overlap: true,
            hooks: GradReadyHooks::default(),
        }
    }

    /// `ddp_spawn`: started plainly, fabric runs the training function in
    /// one worker process per device and hands rank 0's result back, as
    /// Lightning's `DDPStrategy(start_method="spawn")`.
    pub fn spawn() -> Self {
        DdpStrategy {
            spawn: true,
            ..Self::new()
        }
    }

    /// The size of the gradient buckets, in megabytes (25 by default).
    pub fn bucket_cap_mb(mut self, megabytes: f64) -> Self {
        self.bucket_cap_mb = Some(megabytes);
        self
    }

    /// How long a collective may wait for the other ranks (the builder's
    /// [`collective_timeout`](crate::FabricBuilder::collective_timeout) by
    /// default: 30 minutes).
    pub fn collective_timeout(mut self, timeout: Duration) -> Self {
        self.collective_timeout = Some(timeout);
        self
    }

    /// How long a rank may take to end once the run failed elsewhere (the
    /// builder's [`failure_timeout`](crate::FabricBuilder::failure_timeout)
    /// by default: 10 seconds).
    pub fn failure_timeout(mut self, timeout: Duration) -> Self {
        self.failure_timeout = Some(timeout);
        self
    }

    /// Whether a parameter of a model that took part in a backward pass may
    /// receive no gradient, as PyTorch's `find_unused_parameters` (`false`
    /// by default; `strategy = "ddp_find_unused_parameters_true"` sets it).
    ///
    /// A model takes part in a backward pass when the backward pass (with
    /// those since the model's last reduction, under
    /// [`no_backward_sync`](crate::Fabric::no_backward_sync)) reached some
    /// of its parameters on some rank. Without this option a
    /// parameter of such a model that a rank's backward did not reach is an
    /// error naming it; with it, the parameter takes part in the average
    /// with a zero gradient on the ranks that did not use it (so the ranks
    /// that did are averaged over the whole world, as in PyTorch), and one
    /// that no rank used keeps its gradient as it was (none, usually), as
    /// PyTorch's DDP leaves it, so optimizers skip it.
    ///
    /// ```
    /// use fabric::strategy::DdpStrategy;
    ///
    /// let ddp = DdpStrategy::new().find_unused_parameters(true);
    /// assert!(ddp.finds_unused_parameters());
    /// ```
    pub fn find_unused_parameters(mut self, enabled: bool) -> Self {
        self.find_unused_parameters = enabled;
        self
    }

    /// Whether [`find_unused_parameters`](Self::find_unused_parameters) is on.
    pub fn finds_unused_parameters(&self) -> bool {
        self.find_unused_parameters
    }

    /// PyTorch's `static_graph`: a promise that the set of parameters each
    /// step uses does not change. PyTorch uses it to overlap reduction with
    /// the backward pass despite unused parameters, and it lets such
    /// parameters be, as `find_unused_parameters` does. fabric overlaps
    /// whether or not unused parameters are allowed (it learns which
    /// parameters a backward pass reaches from the loss's graph before the
    /// pass runs, see [`overlap`](Self::overlap)), so the promise changes
    /// nothing in how it reduces: `static_graph(true)` only allows unused
    /// parameters, exactly as
    /// [`find_unused_parameters(true)`](Self::find_unused_parameters) does
    /// (it does not check that the graph stays the same).
    ///
    /// ```
    /// use fabric::strategy::DdpStrategy;
    ///
    /// let ddp = DdpStrategy::new().static_graph(true);
    /// assert!(ddp.is_static_graph());
    /// ```
    pub fn static_graph(mut self, enabled: bool) -> Self {
        self.static_graph = enabled;
        self
    }

    /// Whether [`static_graph`](Self::static_graph) is on.
    pub fn is_static_graph(&self) -> bool {
        self.static_graph
    }

    /// Whether each bucket's all-reduce runs while the backward pass goes
    /// on (`true`, the default, as PyTorch's DDP), or all of them after it
    /// (`false`). The averages are the same to the bit either way: the
    /// buckets are the same, and so is their arithmetic.
    ///
    /// Overlapped, a hook on each parameter's gradient accumulator marks
    /// the parameter ready as the backward pass accumulates its gradient,
    /// and a communication thread all-reduces each bucket (the last
    /// parameters first, as the backward pass reaches them) as soon as all
    /// its gradients are; `backward` returns once every bucket is averaged.
    /// Before the pass, the ranks agree on which models and parameters take
    /// part, from the parameters the loss's graph reaches, so that every
    /// rank runs the same buckets. It applies to runs of several processes
    /// on CPUs (MPI); on CUDA devices the reduction follows the backward
    /// pass.
    ///
    /// ```
    /// use fabric::strategy::DdpStrategy;
    ///
    /// let ddp = DdpStrategy::new().overlap(false);
    /// assert!(!ddp.overlaps());
    /// ```
    pub fn overlap(mut self, enabled: bool) -> Self {
        self.overlap = enabled;
        self
    }

    /// Whether [`overlap`](Self::overlap) is on.
    pub fn overlaps(&self) -> bool {
        self.overlap
    }

    fn bucket_bytes(&self) -> usize {
        match self.bucket_cap_mb {
            Some(megabytes) => (megabytes.max(0.0) * 1024.0 * 1024.0) as usize,
            None => DEFAULT_BUCKET_BYTES,
        }
    }
}

impl Strategy for DdpStrategy {
    fn name(&self) -> &str {
        if self.spawn { "ddp_spawn" } else { "ddp" }
    }

    fn process_model(&self) -> ProcessModel {
        ProcessModel::PerDevice { spawn: self.spawn }
    }

    fn setup_environment(&mut self, context: &StrategyContext) -> Result<()> {
        self.device = context.root_device();
        self.global_rank = context.global_rank();
        self.world_size = context.world_size();
        if context.world_size() == 1 {
            return Ok(());
        }
        let collective_timeout = self
            .collective_timeout
            .unwrap_or(context.collective_timeout());
        let failure_timeout = self.failure_timeout.unwrap_or(context.failure_timeout());
        let mpi = MpiComm::join(
            context.global_rank(),
            context.world_size(),
            collective_timeout,
            failure_timeout,
            context.shared_memory_room(),
        )?;
        let nccl = match self.device {
            Device::Cuda(index) => Some(NcclComm::join(&mpi, index, collective_timeout)?),
            _ => None,
        };
        self.comm = Some(Comm::new(mpi, nccl));
        Ok(())
    }

    fn root_device(&self) -> Device {
        self.device
    }

    fn global_rank(&self) -> usize {
        self.global_rank
    }

    fn world_size(&self) -> usize {
        self.world_size
    }

    fn setup_module(&mut self, vs: &mut VarStore) -> Result<()> {
        // Every rank starts from rank 0's parameters and buffers, sent in
        // the order of their names (the same on every rank).
        let variables = crate::vars::sorted(vs);
        let number = self.models.len() + 1;
        if let Some(comm) = &self.comm {
            // Before the broadcasts, whose number and shapes depend on the
            // model: the same model on every rank, or a clear error on each.
            models::agree(
                comm,
                &models::Step::Setup {
                    number,
                    variables: variables.len(),
                    signature: models::signature(&variables),
                },
            )?;
            tch::no_grad(|| {
                for (_, variable) in &variables {
                    let value = comm.broadcast(variable, 0)?;
                    variable.shallow_clone().f_copy_(&value)?;
                }
                Ok::<(), Error>(())
            })?;
        }
        let (names, params): (Vec<String>, Vec<Tensor>) = variables
            .into_iter()
            .filter(|(_, variable)| variable.requires_grad())
            .map(|(name, variable)| (format!("`{name}` of model {number}"), variable))
            .unzip();
        let first_hook = self.hooks.len();
        if self.comm.is_some() {
            self.hooks.add(&params)?;
        }
        self.models.push(DdpModel::new(params, names, first_hook));
        Ok(())
    }

    fn backward(&mut self, loss: &Tensor) -> Result<()> {
        let allow_unused = self.find_unused_parameters || self.static_graph;
        let bucket_bytes = self.bucket_bytes();
        let syncing = self.sync && self.models.iter().any(|m| m.sync);
        if let Some(comm) = self.comm.as_mut()
            && syncing
            && self.overlap
            && !self.device.is_cuda()
            && self.hooks.len() == self.models.iter().map(|m| m.params().len()).sum::<usize>()
        {
            return models::backward_overlapped(
                &mut self.models,
                comm,
                &self.hooks,
                loss,
                allow_unused,
                bucket_bytes,
            );
        }
        let before = self
            .models
            .iter()
            .map(DdpModel::before_backward)
            .collect::<Result<Vec<_>>>()?;
        loss.f_backward()?;
        for (model, before) in self.models.iter_mut().zip(before) {
            model.after_backward(before)?;
        }
        if syncing {
            models::reduce(
                &mut self.models,
                self.comm.as_ref(),
                allow_unused,
                bucket_bytes,
            )?;
        }
        Ok(())
    }

    fn set_backward_sync(&mut self, enabled: bool) -> bool {
        std::mem::replace(&mut self.sync, enabled)
    }

    fn set_model_backward_sync(&mut self, model: usize, enabled: bool) -> Result<bool> {
        let count = self.models.len();
        match self.models.get_mut(model) {
            Some(m) => Ok(std::mem::replace(&mut m.sync, enabled)),
            None => Err(Error::InvalidArgument(format!(
                "no_backward_sync for model {} of this fabric's strategy, which set up {count}: pass a model this fabric set up",
                model + 1
            ))),
        }
    }

    fn all_reduce(&self, tensor: &Tensor, op: ReduceOp) -> Result<Tensor> {
        match &self.comm {
            Some(comm) => comm.all_reduce(tensor, op),
            None => super::single_device::local_all_reduce(tensor, op),
        }
    }

    fn broadcast(&self, tensor: &Tensor, src: usize) -> Result<Tensor> {
        match &self.comm {
            Some(comm) => comm.broadcast(tensor, src),
            None => super::single_device::local_broadcast(tensor, src),
        }
    }

    fn all_gather(&self, tensor: &Tensor) -> Result<Tensor> {
        match &self.comm {
            Some(comm) => comm.all_gather(tensor),
            None => super::single_device::local_all_gather(tensor),
        }
    }

    fn barrier(&self) -> Result<()> {
        match &self.comm {
            Some(comm) => comm.barrier(),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests;
