//! Checkpoint and resume: training that survives being stopped, even in
//! the middle of an epoch.
//!
//! Trains the digits classifier with fabric's AdamW, with dropout, and
//! saves a numbered checkpoint every 10 steps and at the end of every epoch
//! with `fabric.save_step_keep_last` (the last 3 are kept): the model, the
//! optimizer's state (moment estimates and step counts), the data loader's
//! position in its epoch, libtorch's random generators, the step and the
//! best held-out accuracy so far. Started again, `fabric.load_latest`
//! loads the newest complete checkpoint (none on a fresh start: one code
//! path for both), and training carries on with the batches of the epoch
//! not yet seen, in their order, and the dropout masks it would have
//! drawn: stopping and resuming, even killed mid-epoch, gives the same
//! model as not stopping. Metrics go to `metrics.csv` through the CSV
//! logger.
//!
//! ```sh
//! EPOCHS=3 cargo run --release --example checkpoint_resume   # epochs 1-3, then stops
//! EPOCHS=6 cargo run --release --example checkpoint_resume   # resumes at epoch 4
//! ```
//!
//! The checkpoints are the directories `runs/checkpoint_resume/checkpoints/step-<step>`
//! (`RUNS_DIR` moves `runs`); Python reads the weights with
//! `safetensors.torch.load_file(".../step-000000090/model.safetensors")`.

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

/// Save a checkpoint every this many steps (and at the end of each epoch).
const SAVE_EVERY: u64 = 10;

/// Trains up to `options.epochs`, resuming from the newest checkpoint if
/// there is one.
pub fn run(options: Options) -> anyhow::Result<Summary> {
    let checkpoints = options.dir.join("checkpoints");
    let mut fabric = Fabric::builder()
        .accelerator("cpu")
        .logger(CsvLogger::new(&options.dir, "logs"))
        .build()?;
    fabric.seed_everything(42);
    let (images, labels) = digits::load(&digits::default_path())?;
    let (train_x, train_y, test_x, test_y) = digits::split(&images, &labels, 0.2, 0);

    let mut vs = nn::VarStore::new(tch::Device::Cpu);
    let mlp = digits::mlp(&vs.root(), 64);
    // Dropout on the inputs: random draws that a resumed run must repeat.
    let net = nn::func_t(move |x, train| x.dropout(0.1, train).apply(&mlp));
    let optimizer = AdamW::new(2e-3).weight_decay(1e-4).build(&vs)?;
    let (model, mut optimizer) = fabric.setup(&mut vs, net, optimizer)?;
    let mut loader = fabric.setup_dataloaders(
        DataLoader::new(TensorDataset::new((train_x, train_y))?)
            .batch_size(64)
            .shuffle(true)
            .seed(1),
    )?;

    // Everything that changes during training is in the checkpoint. The
    // same `State` is built for loading and saving.
    let (mut step, mut best_accuracy) = (0u64, 0.0f64);
    macro_rules! state {
        () => {
            State::new()
                .model("model", &mut vs)
                .optimizer("optimizer", &mut optimizer)
                .loader("train", &mut loader)
                .rng()
                .value("step", &mut step)
                .value("best_accuracy", &mut best_accuracy)
        };
    }
    if let Some(resumed) = fabric.load_latest(&checkpoints, &mut state!())? {
        fabric.print(format!(
            "resuming from {} at step {step}, epoch {} (best accuracy {:.2}%)",
            resumed.path.display(),
            loader.loader().epoch() + 1,
            best_accuracy * 100.0
        ));
    }
    // The loader's epoch: the one in progress at the checkpoint, or the next.
    let start_epoch = loader.loader().epoch();

    while loader.loader().epoch() < options.epochs {
        model.train();
        for batch in &mut loader {
            let (x, y) = batch?;
            optimizer.zero_grad();
            let loss = model.forward(&x).cross_entropy_for_logits(&y);
            fabric.backward(&loss)?;
            optimizer.step()?;
            step += 1;
            fabric.log_dict([("train/loss", loss.double_value(&[]))], Some(step))?;
            if step.is_multiple_of(SAVE_EVERY) {
                fabric.save_step_keep_last(&checkpoints, step, 3, &state!())?;
            }
        }
        let epoch = loader.loader().epoch();

        model.eval();
        let (x, y) = fabric.to_device((test_x.shallow_clone(), test_y.shallow_clone()));
        let accuracy = digits::accuracy(&tch::no_grad(|| model.forward(&x)), &y);
        best_accuracy = best_accuracy.max(accuracy);
        fabric.log_dict(
            [("val/accuracy", accuracy), ("epoch", epoch as f64)],
            Some(step),
        )?;
        fabric.save_step_keep_last(&checkpoints, step, 3, &state!())?;
        fabric.print(format!(
            "epoch {epoch}: held-out accuracy {:.2}%, checkpoint saved",
            accuracy * 100.0
        ));
    }
    let epoch = loader.loader().epoch();
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
