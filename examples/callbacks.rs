//! Callbacks with typed hooks: early stopping, a throughput monitor, and a
//! hook of our own.
//!
//! The training loop fires the conventional hooks with `fabric.call::<Hook>`
//! — typed: a misspelt hook or a wrong argument does not compile — and stops
//! when `EarlyStopping` asks (on every rank, with several processes). A
//! `BestModel` hook, declared here, tells a callback when validation loss
//! improves.
//!
//! ```sh
//! cargo run --release --example callbacks
//! ```

use fabric::callbacks::{EarlyStopping, ThroughputMonitor};
use fabric::data::{DataLoader, TensorDataset};
use fabric::hooks::{Metrics, OnTrainBatchEnd, OnTrainEpochEnd, OnValidationEpochEnd};
use fabric::{Callback, Fabric, declare_hook, fabric, hooks};
use fabric_examples::digits;
use tch::Kind;
use tch::nn::{self, OptimizerConfig};

declare_hook! {
    /// Fired when validation loss reaches a new low: the epoch and the loss.
    pub OnNewBest(epoch: usize, val_loss: f64)
}

/// Remembers the best epoch and prints a line per epoch.
#[derive(Callback, Default)]
struct Reporter {
    best: Option<(usize, f64)>,
}

#[hooks]
impl Reporter {
    #[hook]
    fn on_train_epoch_end(&mut self, epoch: usize, metrics: &Metrics) {
        println!(
            "epoch {epoch:>2}: train loss {:.4}",
            metrics.get("loss").unwrap_or(f64::NAN)
        );
    }

    #[hook(OnNewBest)]
    fn new_best(&mut self, epoch: usize, val_loss: f64) {
        println!("          new best validation loss {val_loss:.4}");
        self.best = Some((epoch, val_loss));
    }
}

#[fabric(
    accelerator = "cpu",
    callbacks = [Reporter::default(), EarlyStopping::new("val_loss", 3).min_delta(1e-3), ThroughputMonitor::new(20)],
)]
fn train(fabric: &mut Fabric) -> anyhow::Result<Option<(usize, f64)>> {
    let epochs: usize = std::env::var("EPOCHS")
        .ok()
        .map(|e| e.parse())
        .transpose()?
        .unwrap_or(100);
    fabric.seed_everything(7);
    let (images, labels) = digits::load(&digits::default_path())?;
    let (train_x, train_y, val_x, val_y) = digits::split(&images, &labels, 0.2, 0);
    let mut vs = nn::VarStore::new(tch::Device::Cpu);
    let net = nn::seq()
        .add(nn::linear(
            vs.root() / "hidden",
            64,
            256,
            Default::default(),
        ))
        .add_fn(|x| x.relu())
        .add(nn::linear(vs.root() / "out", 256, 10, Default::default()));
    let optimizer = nn::Adam::default().build(&vs, 1e-2)?;
    let (model, mut optimizer) = fabric.setup(&mut vs, net, optimizer)?;
    let mut loader = fabric.setup_dataloaders(
        DataLoader::new(TensorDataset::new((train_x, train_y))?)
            .batch_size(64)
            .shuffle(true),
    )?;

    let (mut step, mut best) = (0, f64::INFINITY);
    for epoch in 0..epochs {
        let (mut total, mut batches) = (0.0, 0);
        for batch in &mut loader {
            let (x, y) = batch?;
            optimizer.zero_grad();
            let loss = model.forward(&x).cross_entropy_for_logits(&y);
            fabric.backward(&loss)?;
            optimizer.step()?;
            let loss = loss.double_value(&[]);
            (total, batches, step) = (total + loss, batches + 1, step + 1);
            fabric.call::<OnTrainBatchEnd>((
                step,
                x.size()[0] as usize,
                &Metrics::from([("loss", loss)]),
            ))?;
        }
        fabric
            .call::<OnTrainEpochEnd>((epoch, &Metrics::from([("loss", total / batches as f64)])))?;

        model.eval();
        let val_loss = tch::no_grad(|| {
            model
                .forward(&val_x)
                .cross_entropy_for_logits(&val_y)
                .to_kind(Kind::Double)
        });
        model.train();
        let val_loss = val_loss.double_value(&[]);
        if val_loss < best {
            best = val_loss;
            fabric.call::<OnNewBest>((epoch, val_loss))?;
        }
        fabric.call::<OnValidationEpochEnd>((epoch, &Metrics::from([("val_loss", val_loss)])))?;
        if fabric.should_stop()? {
            let stopped = fabric
                .callback::<EarlyStopping>()
                .and_then(EarlyStopping::stopped_epoch);
            fabric.print(format!("early stopping at epoch {stopped:?}"));
            break;
        }
    }
    if let Some(rate) = fabric
        .callback::<ThroughputMonitor>()
        .and_then(ThroughputMonitor::samples_per_second)
    {
        fabric.print(format!("throughput: {rate:.0} samples/s"));
    }
    Ok(fabric.callback::<Reporter>().and_then(|r| r.best))
}

fn main() -> anyhow::Result<()> {
    let best = train()?;
    println!("best epoch and validation loss: {best:?}");
    Ok(())
}
