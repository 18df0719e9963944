//! `dp`: one process over several CUDA devices, each batch split between
//! replicas of the model, as Lightning's `DataParallelStrategy` (PyTorch's
//! `DataParallel`). The replicas themselves are in [`replicas`](super::replicas).

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use tch::nn::VarStore;
use tch::{Device, Tensor};

use super::replicas::{ReplicaGradients, ReplicaSet};
use super::single_device::local_collectives;
use super::{ProcessModel, Strategy, StrategyContext};
use crate::error::Result;

/// One process driving every selected CUDA device: a forward pass splits
/// the batch between replicas of the model, and
/// [`Fabric::backward`](crate::Fabric::backward) adds the replicas'
/// gradients to the model on the first device, which the optimizer steps.
/// Set models up with
/// [`setup_module_with`](crate::Fabric::setup_module_with), which builds
/// the replicas.
#[derive(Default)]
pub struct DataParallelStrategy {
    devices: Vec<Device>,
    /// The variables of every model set up, whose replicas' gradients
    /// `backward` adds up.
    replica_gradients: ReplicaGradients,
    /// The optimizer steps taken through the run's `FabricOptimizer`s:
    /// the replicas copy the weights when it changed.
    optimizer_steps: Arc<AtomicU64>,
}

impl std::fmt::Debug for DataParallelStrategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataParallelStrategy")
            .field("devices", &self.devices)
            .finish()
    }
}

impl DataParallelStrategy {
    /// The strategy; its devices are the ones `accelerator`/`devices`
    /// select.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Strategy for DataParallelStrategy {
    fn name(&self) -> &str {
        "dp"
    }

    fn process_model(&self) -> ProcessModel {
        ProcessModel::OneProcess
    }

    fn setup_environment(&mut self, context: &StrategyContext) -> Result<()> {
        self.devices = context.devices().to_vec();
        Ok(())
    }

    fn root_device(&self) -> Device {
        self.devices.first().copied().unwrap_or(Device::Cpu)
    }

    fn devices(&self) -> Vec<Device> {
        self.devices.clone()
    }

    fn global_rank(&self) -> usize {
        0
    }

    fn world_size(&self) -> usize {
        1
    }

    fn setup_module(&mut self, _vs: &mut VarStore) -> Result<()> {
        // The replicas come with `track_replicas`.
        Ok(())
    }

    fn replica_devices(&self) -> Vec<Device> {
        self.devices.iter().skip(1).copied().collect()
    }

    fn track_replicas(&mut self, replicas: ReplicaSet) -> Result<()> {
        self.replica_gradients.track(replicas);
        Ok(())
    }

    fn optimizer_step_counter(&self) -> Option<Arc<AtomicU64>> {
        Some(Arc::clone(&self.optimizer_steps))
    }

    fn backward(&mut self, loss: &Tensor) -> Result<()> {
        loss.f_backward()?;
        self.replica_gradients.reduce()
    }

    fn set_backward_sync(&mut self, _enabled: bool) -> bool {
        // The replicas' gradients are part of this process's backward pass:
        // they are always added up, as in `DataParallel`.
        true
    }

    local_collectives!();
}
