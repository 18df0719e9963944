//! The subject of the compile-time comparison (`bench/suite.py`): the
//! README's example, configured with `#[fabric(...)]`. Its twin,
//! `compile_builder.rs`, is the same program configured with
//! `Fabric::builder()`; only the configuration differs.

use fabric::data::{DataLoader, TensorDataset};
use fabric::{Fabric, fabric};
use tch::{Kind, Tensor, nn, nn::OptimizerConfig};

#[fabric(accelerator = "auto", devices = 1, precision = "32-true")]
fn train(fabric: &mut Fabric) -> anyhow::Result<f64> {
    fabric.seed_everything(42);
    let x = Tensor::randn([256, 8], (Kind::Float, tch::Device::Cpu));
    let y = x.sum_dim_intlist(1, true, Kind::Float);
    let mut vs = nn::VarStore::new(tch::Device::Cpu);
    let net = nn::linear(vs.root(), 8, 1, Default::default());
    let opt = nn::Adam::default().build(&vs, 1e-2)?;
    let (model, mut opt) = fabric.setup(&mut vs, net, opt)?;
    let mut loader = fabric.setup_dataloaders(
        DataLoader::new(TensorDataset::new((x, y))?)
            .batch_size(32)
            .shuffle(true),
    )?;
    let mut loss = f64::NAN;
    for _epoch in 0..50 {
        for batch in &mut loader {
            let (x, y) = batch?;
            opt.zero_grad();
            let l = model.forward(&x).mse_loss(&y, tch::Reduction::Mean);
            fabric.backward(&l)?;
            opt.step()?;
            loss = l.double_value(&[]);
        }
    }
    Ok(loss)
}

fn main() -> anyhow::Result<()> {
    println!("final loss {:.4}", train()?);
    Ok(())
}
