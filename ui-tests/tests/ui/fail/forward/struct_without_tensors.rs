// A struct of the user's own goes into a forward pass once it implements
// `Tensors`; the error says so.
use fabric::{Fabric, Forward};
use tch::{Device, Kind, Tensor, nn};

struct Batch {
    xs: Tensor,
}

struct Model;

impl Forward<Batch> for Model {
    type Output = Tensor;
    fn call(&self, batch: Batch, _train: bool) -> Tensor {
        batch.xs
    }
}

fn main() -> fabric::Result<()> {
    let mut fabric = Fabric::builder().accelerator("cpu").build()?;
    let mut vs = nn::VarStore::new(Device::Cpu);
    let model = fabric.setup_module(&mut vs, Model)?;
    let batch = Batch { xs: Tensor::zeros([1, 4], (Kind::Float, Device::Cpu)) };
    let _ = model.forward(batch);
    Ok(())
}
