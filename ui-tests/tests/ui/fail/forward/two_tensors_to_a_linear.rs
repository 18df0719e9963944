// A tch model takes one tensor; calling it with two says how to give a
// model other arguments.
use fabric::Fabric;
use tch::{Device, Kind, Tensor, nn};

fn main() -> fabric::Result<()> {
    let mut fabric = Fabric::builder().accelerator("cpu").build()?;
    let mut vs = nn::VarStore::new(Device::Cpu);
    let linear = nn::linear(vs.root(), 4, 2, Default::default());
    let model = fabric.setup_module(&mut vs, linear)?;
    let xs = Tensor::zeros([1, 4], (Kind::Float, Device::Cpu));
    let mask = xs.ones_like();
    let _ = model.forward((&xs, &mask));
    Ok(())
}
