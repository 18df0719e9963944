//! The main example: a classifier for scikit-learn's 8x8 handwritten digits.
//!
//! Trains a two-layer perceptron on 80% of the 1797 images shipped in
//! `examples/data/digits.csv.gz`, shows progress, and prints the accuracy on
//! the 20% held out (above 95% after 30 epochs).
//!
//! Run it with `cargo run --release --example digits`. The configuration can
//! be overridden like Lightning's: `EPOCHS=5 cargo run --example digits`.

use fabric::data::{DataLoader, TensorDataset};
use fabric::{Fabric, GradClip};
use fabric_examples::digits;
use indicatif::{ProgressBar, ProgressStyle};
use tch::Kind;
use tch::nn::{self, OptimizerConfig};

fn model(vs: &nn::Path) -> nn::Sequential {
    nn::seq()
        .add(nn::linear(
            vs / "hidden",
            digits::FEATURES as i64,
            128,
            Default::default(),
        ))
        .add_fn(|x| x.relu())
        .add(nn::linear(
            vs / "out",
            128,
            digits::CLASSES as i64,
            Default::default(),
        ))
}

pub fn train(fabric: &mut Fabric, epochs: usize) -> anyhow::Result<f64> {
    fabric.seed_everything(42);
    let (images, labels) = digits::load(&digits::default_path())?;
    let (train_x, train_y, test_x, test_y) = digits::split(&images, &labels, 0.2, 0);
    fabric.print(format!(
        "training on {} images, testing on {}, device {:?}, precision {}",
        train_x.size()[0],
        test_x.size()[0],
        fabric.device(),
        fabric.precision_name()
    ));

    let mut vs = nn::VarStore::new(tch::Device::Cpu);
    let net = model(&vs.root());
    let optimizer = nn::Adam::default().build(&vs, 3e-3)?;
    let (model, mut optimizer) = fabric.setup(&mut vs, net, optimizer)?;
    let mut train_loader = fabric.setup_dataloaders(
        DataLoader::new(TensorDataset::new((train_x, train_y))?)
            .batch_size(64)
            .shuffle(true)
            .num_workers(1),
    )?;

    let progress = ProgressBar::new((epochs * train_loader.len()) as u64);
    progress.set_style(ProgressStyle::with_template(
        "{bar:30} {pos}/{len} steps {per_sec} {msg}",
    )?);
    for epoch in 0..epochs {
        let (mut total, mut batches) = (0.0, 0);
        for batch in &mut train_loader {
            let (x, y) = batch?;
            optimizer.zero_grad();
            let loss = model.forward(&x).cross_entropy_for_logits(&y);
            fabric.backward(&loss)?;
            fabric.clip_gradients(&mut optimizer, GradClip::norm(5.0))?;
            optimizer.step()?;
            total += loss.double_value(&[]);
            batches += 1;
            progress.inc(1);
        }
        let message = format!(
            "epoch {:>2}: train loss {:.4}",
            epoch + 1,
            total / batches as f64
        );
        progress.set_message(message.clone());
        if progress.is_hidden() && (epoch + 1) % 5 == 0 {
            fabric.print(message);
        }
    }
    progress.finish();

    model.eval();
    let (x, y) = fabric.to_device((test_x, test_y));
    let accuracy = tch::no_grad(|| {
        model
            .forward(&x)
            .argmax(-1, false)
            .eq_tensor(&y)
            .to_kind(Kind::Double)
            .mean(None)
    });
    Ok(accuracy.double_value(&[]))
}

fn main() -> anyhow::Result<()> {
    let epochs = std::env::var("EPOCHS")
        .ok()
        .map(|e| e.parse())
        .transpose()?
        .unwrap_or(30);
    let mut fabric = Fabric::builder()
        .accelerator("auto")
        .precision("32-true")
        // `auto` is every GPU: on a machine with several, fabric starts one
        // rank per GPU (each runs this program from the start).
        .build_or_launch()?;
    let accuracy = train(&mut fabric, epochs)?;
    fabric.print(format!("held-out accuracy: {:.2}%", accuracy * 100.0));
    Ok(())
}
