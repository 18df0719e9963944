//! Data parallel training in one process over every CUDA device.
//!
//! Trains the digits classifier with `strategy = "dp"`: each batch is split
//! between the GPUs, each runs its chunk on a replica of the model, and the
//! gradients are added up on the first GPU, whose model the optimizer steps.
//! The model is set up from the function that builds it (`setup_with`), as
//! `dp` builds it once per device. Needs CUDA; on a machine without it the
//! program says so and exits with an error.
//!
//! ```sh
//! cargo run --release --example dp
//! EPOCHS=2 cargo run --release --example dp
//! ```

use fabric::data::{DataLoader, TensorDataset};
use fabric::{Fabric, fabric};
use fabric_examples::digits;
use tch::Kind;
use tch::nn::{self, OptimizerConfig};

fn net(p: &nn::Path) -> nn::Sequential {
    nn::seq()
        .add(nn::linear(p / "hidden", 64, 128, Default::default()))
        .add_fn(|x| x.relu())
        .add(nn::linear(p / "out", 128, 10, Default::default()))
}

#[fabric(accelerator = "cuda", devices = -1, strategy = "dp", precision = "bf16-mixed")]
fn train(fabric: &mut Fabric) -> anyhow::Result<f64> {
    let epochs: usize = std::env::var("EPOCHS")
        .ok()
        .map(|e| e.parse())
        .transpose()?
        .unwrap_or(20);
    fabric.seed_everything(42);
    println!("dp over {:?}", fabric.devices());
    let (images, labels) = digits::load(&digits::default_path())?;
    let (train_x, train_y, test_x, test_y) = digits::split(&images, &labels, 0.2, 0);
    let (test_x, test_y) = fabric.to_device((test_x, test_y));

    let mut vs = nn::VarStore::new(tch::Device::Cpu);
    let (model, mut optimizer) =
        fabric.setup_with(&mut vs, net, |vs| nn::Adam::default().build(vs, 3e-3))?;
    let mut loader = fabric.setup_dataloaders(
        DataLoader::new(TensorDataset::new((train_x, train_y))?)
            .batch_size(64)
            .shuffle(true),
    )?;
    for epoch in 0..epochs {
        let mut total = 0.0;
        for batch in &mut loader {
            let (x, y) = batch?;
            optimizer.zero_grad();
            let loss = model.forward(&x).cross_entropy_for_logits(&y);
            fabric.backward(&loss)?;
            optimizer.step()?;
            total += loss.double_value(&[]);
        }
        if (epoch + 1) % 5 == 0 || epoch + 1 == epochs {
            println!(
                "epoch {:>2}: train loss {:.4}",
                epoch + 1,
                total / loader.len() as f64
            );
        }
    }
    model.eval();
    let accuracy = tch::no_grad(|| {
        model
            .forward(&test_x)
            .argmax(-1, false)
            .eq_tensor(&test_y)
            .to_kind(Kind::Double)
            .mean(None)
    });
    Ok(accuracy.double_value(&[]))
}

fn main() -> anyhow::Result<()> {
    let accuracy = train()?;
    println!("held-out accuracy: {:.2}%", accuracy * 100.0);
    Ok(())
}
