//! A strategy of the user's own passes through `strategy = ...`, as
//! Lightning's `strategy=MyStrategy()`.
#![deny(warnings)]

use fabric::strategy::{ProcessModel, SingleDeviceStrategy, Strategy, StrategyContext};
use fabric::{Fabric, ReduceOp, fabric};
use tch::{Device, Tensor};

/// One device, counting backward passes.
struct Counting(SingleDeviceStrategy, usize);

impl Strategy for Counting {
    fn name(&self) -> &str {
        "counting"
    }
    fn process_model(&self) -> ProcessModel {
        self.0.process_model()
    }
    fn setup_environment(&mut self, context: &StrategyContext) -> fabric::Result<()> {
        self.0.setup_environment(context)
    }
    fn root_device(&self) -> Device {
        self.0.root_device()
    }
    fn global_rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn setup_module(&mut self, vs: &mut tch::nn::VarStore) -> fabric::Result<()> {
        self.0.setup_module(vs)
    }
    fn backward(&mut self, loss: &Tensor) -> fabric::Result<()> {
        self.1 += 1;
        self.0.backward(loss)
    }
    fn set_backward_sync(&mut self, enabled: bool) -> bool {
        self.0.set_backward_sync(enabled)
    }
    fn all_reduce(&self, tensor: &Tensor, op: ReduceOp) -> fabric::Result<Tensor> {
        self.0.all_reduce(tensor, op)
    }
    fn broadcast(&self, tensor: &Tensor, src: usize) -> fabric::Result<Tensor> {
        self.0.broadcast(tensor, src)
    }
    fn all_gather(&self, tensor: &Tensor) -> fabric::Result<Tensor> {
        self.0.all_gather(tensor)
    }
    fn barrier(&self) -> fabric::Result<()> {
        self.0.barrier()
    }
}

#[fabric(accelerator = "cpu", strategy = Counting(SingleDeviceStrategy::new(), 0))]
fn train(fabric: &mut Fabric) -> fabric::Result<String> {
    Ok(fabric.strategy().name().to_owned())
}

fn main() {
    assert_eq!(train().unwrap(), "counting");
}
