//! Mixed precision on the CPU: the digits classifier trained with
//! `precision = "bf16-mixed"`.
//!
//! The weights stay in float32 and the optimizer (fabric's AdamW) updates
//! them in float32, while the forward pass runs under bfloat16 autocast:
//! matrix products in bfloat16, reductions and the loss in float32, as
//! Lightning's `bf16-mixed`. A progress bar shows steps per second and the
//! latest loss; the held-out accuracy is printed at the end (above 90%).
//!
//! Run it with `cargo run --release --example bf16_mixed`
//! (`EPOCHS=3` for a shorter run).

use fabric::Fabric;
use fabric::data::{DataLoader, TensorDataset};
use fabric::optim::AdamW;
use fabric_examples::{digits, env_or};
use tch::Kind;
use tch::nn;

/// What `main` reads from the environment.
pub struct Options {
    /// Passes over the training images.
    pub epochs: usize,
}

/// Trains and returns the held-out accuracy.
pub fn run(options: Options) -> anyhow::Result<f64> {
    let mut fabric = Fabric::builder()
        .accelerator("cpu")
        .precision("bf16-mixed")
        .build()?;
    fabric.seed_everything(7);
    let (images, labels) = digits::load(&digits::default_path())?;
    let (train_x, train_y, test_x, test_y) = digits::split(&images, &labels, 0.2, 0);

    let mut vs = nn::VarStore::new(tch::Device::Cpu);
    let net = digits::mlp(&vs.root(), 128);
    let optimizer = AdamW::new(3e-3).build(&vs)?;
    let (model, mut optimizer) = fabric.setup(&mut vs, net, optimizer)?;
    let mut loader = fabric.setup_dataloaders(
        DataLoader::new(TensorDataset::new((train_x, train_y))?)
            .batch_size(64)
            .shuffle(true),
    )?;

    // What autocast does to a matrix product, and what stays float32.
    {
        let _autocast = fabric.autocast()?;
        let x = test_x.narrow(0, 0, 2);
        let product = x.matmul(&x.transpose(0, 1));
        fabric.print(format!(
            "under {}: a matmul gives {:?}; the weights are {:?}",
            fabric.precision_name(),
            product.kind(),
            vs.trainable_variables()[0].kind()
        ));
    }

    let progress = fabric.progress((options.epochs * loader.len()) as u64);
    for _epoch in 0..options.epochs {
        for batch in &mut loader {
            let (x, y) = batch?;
            optimizer.zero_grad();
            let loss = model.forward(&x).cross_entropy_for_logits(&y);
            fabric.backward(&loss)?;
            optimizer.step()?;
            fabric.log("loss", &loss)?;
            progress.inc(1);
        }
    }
    progress.finish();

    model.eval();
    let (x, y) = fabric.to_device((test_x, test_y));
    let logits = tch::no_grad(|| model.forward(&x));
    assert_eq!(logits.kind(), Kind::Float, "outputs come back in float32");
    Ok(digits::accuracy(&logits, &y))
}

fn main() -> anyhow::Result<()> {
    let accuracy = run(Options {
        epochs: env_or("EPOCHS", 10)?,
    })?;
    println!("held-out accuracy: {:.2}%", accuracy * 100.0);
    Ok(())
}
