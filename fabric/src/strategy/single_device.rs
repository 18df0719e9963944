//! `single_device`: one process training on one device, as Lightning's
//! `SingleDeviceStrategy`. Its collectives are those of a world of one.

use tch::nn::VarStore;
use tch::{Device, Tensor};

use super::{ProcessModel, Strategy, StrategyContext};
use crate::collectives::ReduceOp;
use crate::error::{Error, Result};

/// One process on one device.
///
/// ```
/// use fabric::Fabric;
/// use fabric::strategy::SingleDeviceStrategy;
///
/// let fabric = Fabric::builder().accelerator("cpu").strategy(SingleDeviceStrategy::new()).build().unwrap();
/// assert_eq!(fabric.strategy().name(), "single_device");
/// ```
#[derive(Debug, Clone)]
pub struct SingleDeviceStrategy {
    device: Device,
}

impl Default for SingleDeviceStrategy {
    fn default() -> Self {
        Self::new()
    }
}

impl SingleDeviceStrategy {
    /// The strategy; its device is the one `accelerator`/`devices` select.
    pub fn new() -> Self {
        SingleDeviceStrategy {
            device: Device::Cpu,
        }
    }
}

impl Strategy for SingleDeviceStrategy {
    fn name(&self) -> &str {
        "single_device"
    }

    fn process_model(&self) -> ProcessModel {
        ProcessModel::OneDevice
    }

    fn setup_environment(&mut self, context: &StrategyContext) -> Result<()> {
        self.device = context.root_device();
        Ok(())
    }

    fn root_device(&self) -> Device {
        self.device
    }

    fn global_rank(&self) -> usize {
        0
    }

    fn world_size(&self) -> usize {
        1
    }

    fn setup_module(&mut self, _vs: &mut VarStore) -> Result<()> {
        // The variables are on the device and in the precision already.
        Ok(())
    }

    fn backward(&mut self, loss: &Tensor) -> Result<()> {
        Ok(loss.f_backward()?)
    }

    fn set_backward_sync(&mut self, _enabled: bool) -> bool {
        // One device: there is nothing to synchronise either way.
        true
    }

    local_collectives!();
}

/// The collectives of a strategy whose world is this process alone, as
/// methods of its `impl Strategy`.
macro_rules! local_collectives {
    () => {
        fn all_reduce(
            &self,
            tensor: &tch::Tensor,
            op: $crate::collectives::ReduceOp,
        ) -> $crate::Result<tch::Tensor> {
            $crate::strategy::single_device::local_all_reduce(tensor, op)
        }

        fn broadcast(&self, tensor: &tch::Tensor, src: usize) -> $crate::Result<tch::Tensor> {
            $crate::strategy::single_device::local_broadcast(tensor, src)
        }

        fn all_gather(&self, tensor: &tch::Tensor) -> $crate::Result<tch::Tensor> {
            $crate::strategy::single_device::local_all_gather(tensor)
        }

        fn barrier(&self) -> $crate::Result<()> {
            Ok(())
        }
    };
}
pub(crate) use local_collectives;

/// The all-reduce of a world of one: a copy (a mean of integers is a
/// floating-point copy, as with several ranks).
pub(crate) fn local_all_reduce(tensor: &Tensor, op: ReduceOp) -> Result<Tensor> {
    if op == ReduceOp::Mean && !tensor.is_floating_point() {
        return Ok(tensor.f_to_kind(tch::Kind::Float)?);
    }
    Ok(tensor.f_detach_copy()?)
}

/// The broadcast of a world of one: a copy of rank 0's tensor.
pub(crate) fn local_broadcast(tensor: &Tensor, src: usize) -> Result<Tensor> {
    if src != 0 {
        return Err(Error::InvalidArgument(format!(
            "broadcast from rank {src}, but the world has 1 rank"
        )));
    }
    Ok(tensor.f_detach_copy()?)
}

/// The all-gather of a world of one: the tensor with a new first dimension.
pub(crate) fn local_all_gather(tensor: &Tensor) -> Result<Tensor> {
    Ok(tensor.f_unsqueeze(0)?.f_detach_copy()?)
}
