// The set-up module does not dereference to the model: a call on it cannot
// skip the precision by accident. `inner()` reaches the model, and says so.
use fabric::Fabric;
use tch::{Device, Kind, Tensor, nn};

fn main() -> fabric::Result<()> {
    let mut fabric = Fabric::builder().accelerator("cpu").precision("bf16-true").build()?;
    let mut vs = nn::VarStore::new(Device::Cpu);
    let linear = nn::linear(vs.root(), 4, 2, Default::default());
    let model = fabric.setup_module(&mut vs, linear)?;
    let xs = Tensor::zeros([1, 4], (Kind::Float, Device::Cpu));
    let _ = xs.matmul(&model.ws);
    Ok(())
}
