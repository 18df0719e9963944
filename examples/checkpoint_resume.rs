//! Checkpoint and resume: training that survives being stopped.
//!
//! Trains the digits classifier with fabric's AdamW and saves a checkpoint
//! after every epoch with `fabric.save`: the model, the optimizer's state
//! (moment estimates and step counts), the epoch, and the best held-out
//! accuracy so far. Started again, it loads the checkpoint with
//! `fabric.load` and carries on from the next epoch, with the data in the
//! order it would have had: stopping and resuming gives the same model as
//! not stopping. Metrics go to `metrics.csv` through the CSV logger.
//!
//! ```sh
//! EPOCHS=3 cargo run --release --example checkpoint_resume   # epochs 1-3, then stops
//! EPOCHS=6 cargo run --release --example checkpoint_resume   # resumes at epoch 4
//! ```
//!
//! The checkpoint is the directory `runs/checkpoint_resume/last`
//! (`RUNS_DIR` moves `runs`); Python reads its weights with
//! `safetensors.torch.load_file("runs/checkpoint_resume/last/model.safetensors")`.

use std::path::PathBuf;

use fabric::checkpoint::State;
use fabric::data::{DataLoader, TensorDataset};
use fabric::optim::AdamW;
use fabric::{CsvLogger, Fabric};
use fabric_examples::{digits, env_or};
use tch::nn;

/// What `main` reads from the environment.
pub struct Options {
    /// The epoch to train up to.
    pub epochs: u64,
    /// Where the checkpoint and the logs go.
    pub dir: PathBuf,
}

/// What a run did.
#[derive(Debug)]
pub struct Summary {
    /// The first epoch this run trained (0 when it started afresh).
    pub start_epoch: u64,
    /// The number of epochs trained in all, by this run and earlier ones.
    pub epochs: u64,
    /// The best held-out accuracy so far.
    pub best_accuracy: f64,
}

/// Trains up to `options.epochs`, resuming from the checkpoint if there is
/// one.
pub fn run(options: Options) -> anyhow::Result<Summary> {
    let checkpoint = options.dir.join("last");
    let mut fabric = Fabric::builder()
        .accelerator("cpu")
        .logger(CsvLogger::new(&options.dir, "logs"))
        .build()?;
    fabric.seed_everything(42);
    let (images, labels) = digits::load(&digits::default_path())?;
    let (train_x, train_y, test_x, test_y) = digits::split(&images, &labels, 0.2, 0);

    let mut vs = nn::VarStore::new(tch::Device::Cpu);
    let net = digits::mlp(&vs.root(), 64);
    let optimizer = AdamW::new(2e-3).weight_decay(1e-4).build(&vs)?;
    let (model, mut optimizer) = fabric.setup(&mut vs, net, optimizer)?;
    let mut loader = fabric.setup_dataloaders(
        DataLoader::new(TensorDataset::new((train_x, train_y))?)
            .batch_size(64)
            .shuffle(true)
            .seed(1),
    )?;

    // Everything that changes during training is in the checkpoint.
    let (mut epoch, mut best_accuracy) = (0u64, 0.0f64);
    if checkpoint.exists() {
        fabric.load(
            &checkpoint,
            &mut State::new()
                .model("model", &mut vs)
                .optimizer("optimizer", &mut optimizer)
                .value("epoch", &mut epoch)
                .value("best_accuracy", &mut best_accuracy),
        )?;
        fabric.print(format!(
            "resuming from {} after epoch {epoch} (best accuracy {:.2}%)",
            checkpoint.display(),
            best_accuracy * 100.0
        ));
    }
    let start_epoch = epoch;
    // The shuffled order of an epoch depends on its number only.
    loader.set_epoch(epoch);

    let steps_per_epoch = loader.len() as u64;
    while epoch < options.epochs {
        model.train();
        for (i, batch) in (&mut loader).into_iter().enumerate() {
            let (x, y) = batch?;
            optimizer.zero_grad();
            let loss = model.forward(&x).cross_entropy_for_logits(&y);
            fabric.backward(&loss)?;
            optimizer.step()?;
            let step = epoch * steps_per_epoch + i as u64;
            fabric.log_dict([("train/loss", loss.double_value(&[]))], Some(step))?;
        }
        epoch += 1;

        model.eval();
        let (x, y) = fabric.to_device((test_x.shallow_clone(), test_y.shallow_clone()));
        let accuracy = digits::accuracy(&tch::no_grad(|| model.forward(&x)), &y);
        best_accuracy = best_accuracy.max(accuracy);
        fabric.log_dict(
            [("val/accuracy", accuracy), ("epoch", epoch as f64)],
            Some(epoch * steps_per_epoch),
        )?;
        fabric.save(
            &checkpoint,
            &State::new()
                .model("model", &mut vs)
                .optimizer("optimizer", &mut optimizer)
                .value("epoch", &mut epoch)
                .value("best_accuracy", &mut best_accuracy),
        )?;
        fabric.print(format!(
            "epoch {epoch}: held-out accuracy {:.2}%, checkpoint saved",
            accuracy * 100.0
        ));
    }
    Ok(Summary {
        start_epoch,
        epochs: epoch,
        best_accuracy,
    })
}

fn main() -> anyhow::Result<()> {
    let runs: PathBuf = env_or("RUNS_DIR", PathBuf::from("runs"))?;
    let summary = run(Options {
        epochs: env_or("EPOCHS", 5)?,
        dir: runs.join("checkpoint_resume"),
    })?;
    println!(
        "trained epochs {}..{}; best held-out accuracy {:.2}%",
        summary.start_epoch + 1,
        summary.epochs,
        summary.best_accuracy * 100.0
    );
    Ok(())
}
