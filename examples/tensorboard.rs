//! TensorBoard logging: the digits classifier's loss, learning rate and
//! held-out accuracy, and its hyperparameters, in TensorBoard event files.
//!
//! `TensorBoardLogger` writes to `runs/tensorboard/digits/version_<n>`, a
//! new version each run, as Lightning's logger does; a `CsvLogger` beside it
//! writes the same metrics to `metrics.csv`. The hyperparameters appear in
//! TensorBoard's HParams tab. While it trains, a progress bar shows steps
//! per second and the latest logged metrics.
//!
//! ```sh
//! cargo run --release --example tensorboard
//! tensorboard --logdir runs/tensorboard      # pip install tensorboard
//! ```
//!
//! `EPOCHS` sets the length of the run and `RUNS_DIR` moves `runs`.

use std::path::PathBuf;

use fabric::data::{DataLoader, TensorDataset};
use fabric::optim::AdamW;
use fabric::{CsvLogger, Fabric, TensorBoardLogger};
use fabric_examples::{digits, env_or};
use serde::Serialize;
use tch::nn;

/// The run's hyperparameters, logged once at the start.
#[derive(Debug, Serialize)]
pub struct Hyperparameters {
    /// The peak learning rate.
    pub lr: f64,
    /// Images per batch.
    pub batch_size: usize,
    /// Width of the hidden layer.
    pub hidden: i64,
    /// Passes over the training images.
    pub epochs: usize,
    /// The optimizer's name.
    pub optimizer: &'static str,
}

/// Trains and returns the TensorBoard log directory.
pub fn run(root: PathBuf, epochs: usize) -> anyhow::Result<PathBuf> {
    let tensorboard = TensorBoardLogger::new(root.join("tensorboard"), "digits");
    let log_dir = tensorboard.log_dir();
    let mut fabric = Fabric::builder()
        .accelerator("cpu")
        .logger(tensorboard)
        .logger(CsvLogger::new(root.join("csv"), "digits"))
        .build()?;
    let hparams = Hyperparameters {
        lr: 5e-3,
        batch_size: 64,
        hidden: 128,
        epochs,
        optimizer: "adamw",
    };
    fabric.log_hyperparams(&hparams)?;
    fabric.seed_everything(11);

    let (images, labels) = digits::load(&digits::default_path())?;
    let (train_x, train_y, test_x, test_y) = digits::split(&images, &labels, 0.2, 0);
    let mut vs = nn::VarStore::new(tch::Device::Cpu);
    let net = digits::mlp(&vs.root(), hparams.hidden);
    let optimizer = AdamW::new(hparams.lr).build(&vs)?;
    let (model, mut optimizer) = fabric.setup(&mut vs, net, optimizer)?;
    let mut loader = fabric.setup_dataloaders(
        DataLoader::new(TensorDataset::new((train_x, train_y))?)
            .batch_size(hparams.batch_size)
            .shuffle(true),
    )?;

    let total = (epochs * loader.len()) as u64;
    let progress = fabric.progress(total);
    let mut step = 0u64;
    for _epoch in 0..epochs {
        model.train();
        for batch in &mut loader {
            let (x, y) = batch?;
            // A cosine decay of the learning rate, logged with the loss.
            let lr = hparams.lr
                * 0.5
                * (1.0 + (std::f64::consts::PI * step as f64 / total as f64).cos());
            optimizer.set_lr(lr);
            optimizer.zero_grad();
            let loss = model.forward(&x).cross_entropy_for_logits(&y);
            fabric.backward(&loss)?;
            optimizer.step()?;
            fabric.log_dict(
                [("train/loss", loss.double_value(&[])), ("lr", lr)],
                Some(step),
            )?;
            progress.inc(1);
            step += 1;
        }
        model.eval();
        let logits = tch::no_grad(|| model.forward(&test_x));
        fabric.log_dict(
            [("val/accuracy", digits::accuracy(&logits, &test_y))],
            Some(step),
        )?;
    }
    progress.finish();
    fabric.finish(true)?;
    Ok(log_dir)
}

fn main() -> anyhow::Result<()> {
    let runs: PathBuf = env_or("RUNS_DIR", PathBuf::from("runs"))?;
    let log_dir = run(runs.clone(), env_or("EPOCHS", 10)?)?;
    println!("logs in {}", log_dir.display());
    println!(
        "see them with: tensorboard --logdir {}",
        runs.join("tensorboard").display()
    );
    Ok(())
}
