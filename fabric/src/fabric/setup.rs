//! Setting models, optimizers and data loaders up.

use std::sync::Arc;

use tch::Tensor;
use tch::nn::VarStore;

use super::Fabric;
use crate::callbacks::hooks::OnAfterSetup;
use crate::data::{DataLoader, Dataset, FabricDataLoader};
use crate::device::ToDevice;
use crate::error::{Error, Result};
use crate::module::FabricModule;
use crate::optimizer::{AnyOptimizer, FabricOptimizer};
use crate::strategy::replicas;

impl Fabric {
    /// Moves the variables of `vs` to the run's device and casts them to the
    /// run's precision, in place (models and optimizers built from `vs` keep
    /// working), and wraps `module`, the model built on `vs`: any model,
    /// whose forward pass [`FabricModule::forward`] runs with the run's
    /// precision (a tch `Module`/`ModuleT` on one tensor; see
    /// [`Forward`](crate::Forward) for other inputs and outputs).
    ///
    /// Under `dp` with several devices the model must be built once per
    /// device: use [`setup_module_with`](Self::setup_module_with), which
    /// works under every strategy.
    pub fn setup_module<M>(&mut self, vs: &mut VarStore, module: M) -> Result<FabricModule<M>> {
        let replicas = self.strategy.replica_devices().len();
        if replicas > 0 {
            return Err(Error::InvalidArgument(format!(
                "\"{}\" runs a replica of the model on each of its {} devices, and a built model cannot be copied: \
                 set it up with `fabric.setup_module_with(&mut vs, |path| build_model(path))`, which builds it once per device",
                self.strategy.name(),
                replicas + 1
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
    pub fn setup_module_with<M>(
        &mut self,
        vs: &mut VarStore,
        build: impl Fn(&tch::nn::Path) -> M,
    ) -> Result<FabricModule<M>> {
        let module = build(&vs.root());
        let mut module = self.setup_built_module(vs, module)?;
        let devices = self.strategy.replica_devices();
        if !devices.is_empty() {
            let precision = Arc::clone(&self.precision);
            let prepare = |replica: &mut VarStore| precision.convert_module(replica);
            let steps = self.strategy.optimizer_step_counter().unwrap_or_default();
            let replicas = replicas::replicate(vs, &devices, &build, &prepare, steps)?;
            self.strategy.track_replicas(replicas.set())?;
            module = module.with_replicas(replicas);
        }
        self.call::<OnAfterSetup>(())?;
        Ok(module)
    }

    fn setup_built_module<M>(&mut self, vs: &mut VarStore, module: M) -> Result<FabricModule<M>> {
        let device = self.device();
        if vs.device() != device {
            vs.set_device(device);
        }
        self.precision.convert_module(vs)?;
        self.strategy.setup_module(vs)?;
        let index = self.modules_set_up;
        self.modules_set_up += 1;
        Ok(
            FabricModule::new(module, Arc::clone(&self.precision), device)
                .with_index(self.id, index),
        )
    }

    /// Wraps an optimizer built on a var store that was (or will be) set up
    /// with [`setup_module`](Self::setup_module): tch's [`Optimizer`](tch::nn::Optimizer) or one
    /// of fabric's own ([`optim`](crate::optim)), whose state checkpoints
    /// save.
    pub fn setup_optimizer(
        &mut self,
        optimizer: impl Into<AnyOptimizer>,
    ) -> Result<FabricOptimizer> {
        let optimizer = FabricOptimizer::new(optimizer.into(), self.scaler.clone());
        Ok(match self.strategy.optimizer_step_counter() {
            Some(steps) => optimizer.counting_steps(steps),
            None => optimizer,
        })
    }

    /// Sets up a model and its optimizer together, as Lightning's
    /// `model, optimizer = fabric.setup(model, optimizer)`.
    pub fn setup<M>(
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
        if let Some((rank, shards)) = self.strategy.data_shard() {
            // A seed every rank agrees on: rank 0's.
            let seed = Tensor::from_slice(&[loader.effective_seed() as i64]);
            let seed = self.strategy.broadcast(&seed, 0)?.f_int64_value(&[0])? as u64;
            loader = loader.seed(seed);
            loader.set_shard(rank, shards);
        }
        Ok(FabricDataLoader::new(loader, self.device()))
    }

    /// Moves data (a tensor, or tuples, vectors, options of them) to the
    /// run's device.
    pub fn to_device<T: ToDevice>(&self, data: T) -> T {
        data.to_device(self.device())
    }
}
