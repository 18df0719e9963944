//! Training: backward passes through the precision and the strategy,
//! clipping, autocast, collectives.

use std::fmt::Display;

use tch::Tensor;

use super::Fabric;
use crate::collectives::ReduceOp;
use crate::error::{Error, Result};
use crate::module::FabricModule;
use crate::optimizer::FabricOptimizer;
use crate::precision::AutocastGuard;
use crate::seed;
use crate::strategy::GradClip;

impl Fabric {
    /// Computes the gradients of `loss`, as `loss.backward()` with whatever
    /// the precision and the strategy add: under `16-mixed` the loss is
    /// scaled first; under `ddp` the gradients of the models this backward
    /// pass reached (on some rank) are averaged over the ranks (see
    /// [`DdpStrategy::find_unused_parameters`](crate::strategy::DdpStrategy::find_unused_parameters)),
    /// under `dp` the replicas' added up.
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
                self.strategy.backward(&scaled)
            }
            None => self.strategy.backward(loss),
        }
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
        self.strategy.clip_gradients(&grads, clip)
    }

    /// A scope in which operations run under the precision's autocast, as
    /// Lightning's `fabric.autocast()` (nothing changes for the `-true`
    /// precisions). Autocast ends when the guard is dropped.
    pub fn autocast(&self) -> Result<AutocastGuard> {
        match self.precision.autocast_dtype() {
            Some(dtype) => AutocastGuard::new(self.device(), dtype),
            None => Ok(AutocastGuard::noop()),
        }
    }

    /// Runs `f` (typically a `backward`) without averaging gradients between
    /// ranks when `enabled`, for gradient accumulation, as Lightning's
    /// `with fabric.no_backward_sync(model, enabled=...)`, for every model
    /// at once. Gradients accumulate locally; the first `backward` outside
    /// averages them all, for each model that one of these backward passes
    /// reached.
    pub fn no_backward_sync<T>(&mut self, enabled: bool, f: impl FnOnce(&mut Fabric) -> T) -> T {
        let previous = self.strategy.set_backward_sync(!enabled);
        // Restored on unwind too: a caller that catches a panic of `f`
        // must not go on with averaging silently off.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(self)));
        self.strategy.set_backward_sync(previous);
        result.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }

    /// Runs `f` (typically a `backward`) without averaging `model`'s
    /// gradients between ranks when `enabled`, as Lightning's
    /// `with fabric.no_backward_sync(model, enabled=...)`: the other models
    /// average theirs as usual. `model`'s gradients accumulate locally; the
    /// first `backward` that reaches it outside (or in a later backward
    /// pass that averages it) averages them.
    ///
    /// Gradient accumulation over K micro-batches averages once per
    /// optimizer step, and equals one step on the K-times larger batch
    /// (with each micro-batch's loss divided by K):
    ///
    /// ```
    /// # fn main() -> fabric::Result<()> {
    /// use tch::nn::{self, Module, OptimizerConfig};
    /// use tch::{Device, Kind, Tensor};
    ///
    /// let mut fabric = fabric::Fabric::builder().accelerator("cpu").build()?;
    /// let mut vs = nn::VarStore::new(Device::Cpu);
    /// let model = fabric.setup_module_with(&mut vs, |p| nn::linear(p / "fc", 4, 1, Default::default()))?;
    /// let mut optimizer = fabric.setup_optimizer(nn::Sgd::default().build(&vs, 0.1)?)?;
    /// let k = 4;
    /// for micro in 0..k {
    ///     let loss = model.forward(&Tensor::ones([2, 4], (Kind::Float, Device::Cpu))).mean(None) / k as f64;
    ///     // Averaged between ranks on the last micro-batch only.
    ///     fabric.no_backward_sync_for(&model, micro + 1 < k, |f| f.backward(&loss))??;
    /// }
    /// optimizer.step()?;
    /// optimizer.zero_grad();
    /// # Ok(()) }
    /// ```
    ///
    /// An error if `model` was not set up by this fabric.
    pub fn no_backward_sync_for<M, T>(
        &mut self,
        model: &FabricModule<M>,
        enabled: bool,
        f: impl FnOnce(&mut Fabric) -> T,
    ) -> Result<T> {
        let Some((_, index)) = model
            .index()
            .filter(|&(fabric, i)| fabric == self.id && i < self.modules_set_up)
        else {
            return Err(Error::InvalidArgument(
                "no_backward_sync_for a model this fabric did not set up: pass the model `setup_module` returned".into(),
            ));
        };
        let previous = self.strategy.set_model_backward_sync(index, !enabled)?;
        // Restored on unwind too (see `no_backward_sync`).
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(self)));
        let restored = self.strategy.set_model_backward_sync(index, previous);
        let result = result.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        restored?;
        Ok(result)
    }

    /// Waits until every process reaches this point. With one process it
    /// returns at once.
    pub fn barrier(&self) -> Result<()> {
        self.strategy.barrier()
    }

    /// The element-wise reduction of `tensor` over every rank (a copy of it
    /// with one process). CPU tensors of any floating-point or integer type,
    /// any shape and layout; CUDA tensors over NCCL.
    pub fn all_reduce(&self, tensor: &Tensor, op: ReduceOp) -> Result<Tensor> {
        self.strategy.all_reduce(tensor, op)
    }

    /// Rank `src`'s `tensor`, on every rank.
    pub fn broadcast(&self, tensor: &Tensor, src: usize) -> Result<Tensor> {
        self.strategy.broadcast(tensor, src)
    }

    /// Every rank's `tensor` (the same shape on every rank), stacked along a
    /// new first dimension in rank order.
    pub fn all_gather(&self, tensor: &Tensor) -> Result<Tensor> {
        self.strategy.all_gather(tensor)
    }

    /// Seeds libtorch's generators and the shuffling of data loaders that
    /// have no seed of their own, as Lightning's `seed_everything`. Returns
    /// the seed.
    pub fn seed_everything(&self, seed: u64) -> u64 {
        seed::seed_everything(seed);
        seed
    }

    /// Prints a line from the first process of each node (local rank 0),
    /// as Lightning's `fabric.print`.
    pub fn print(&self, message: impl Display) {
        if self.local_rank() == 0 {
            println!("{message}");
        }
    }
}
