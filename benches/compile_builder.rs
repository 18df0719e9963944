//! The twin of `compile_attribute.rs` for the compile-time comparison
//! (`bench/suite.py`): the README's example configured with
//! `Fabric::builder()` instead of `#[fabric(...)]`; everything else is the
//! same.

use fabric::Fabric;
use fabric::data::{DataLoader, TensorDataset};
use tch::{Kind, Tensor, nn, nn::OptimizerConfig};

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
    let loss = Fabric::builder()
        .accelerator("auto")
        .devices(1)
        .precision("32-true")
        .launch(train)?;
    println!("final loss {loss:.4}");
    Ok(())
}
