//! Typed callbacks: derive, hooks, dispatch order, outcomes, early stopping.

mod common;

use std::sync::{Arc, Mutex};

use fabric::callbacks::{EarlyStopping, Mode, ThroughputMonitor};
use fabric::hooks::{
    Metrics, OnAfterSetup, OnTrainBatchEnd, OnTrainEpochEnd, OnValidationEpochEnd,
};
use fabric::{Callback, Fabric, Outcome, declare_hook, hooks};
use tch::nn::{self, OptimizerConfig};
use tch::{Device, Kind, Tensor};

type Journal = Arc<Mutex<Vec<String>>>;

declare_hook! {
    /// A hook of this test's own, with two arguments.
    pub OnBestModel<'a>(name: &'a str, score: f64)
}

#[derive(Callback)]
struct Recorder {
    id: &'static str,
    journal: Journal,
    best: Option<f64>,
}

#[hooks]
impl Recorder {
    #[hook]
    fn on_train_epoch_end(&mut self, epoch: usize, metrics: &Metrics) {
        self.journal.lock().unwrap().push(format!(
            "{} epoch {epoch} loss {:?}",
            self.id,
            metrics.get("loss")
        ));
    }

    #[hook]
    fn on_after_setup(&mut self) {
        self.journal
            .lock()
            .unwrap()
            .push(format!("{} setup", self.id));
    }

    #[hook(OnBestModel)]
    fn remember(&mut self, name: &str, score: f64) -> Outcome {
        self.best = Some(score);
        self.journal
            .lock()
            .unwrap()
            .push(format!("{} best {name} {score}", self.id));
        Outcome::log("best_score", score)
    }
}

/// Has no hooks at all: every dispatch skips it.
#[derive(Callback, Default)]
struct Silent {
    touched: bool,
}

#[derive(Callback)]
struct Failing;

#[hooks]
impl Failing {
    #[hook]
    fn on_train_epoch_end(&mut self, epoch: usize, _metrics: &Metrics) -> Result<(), String> {
        if epoch == 2 {
            Err(format!("no space left at epoch {epoch}"))
        } else {
            Ok(())
        }
    }
}

fn recorder(id: &'static str, journal: &Journal) -> Recorder {
    Recorder {
        id,
        journal: journal.clone(),
        best: None,
    }
}

#[test]
fn hooks_fire_in_registration_order_and_skip_callbacks_without_them() {
    let journal = Journal::default();
    let mut fabric = Fabric::builder()
        .accelerator("cpu")
        .callback(recorder("first", &journal))
        .callback(Silent::default())
        .callback(recorder("second", &journal))
        .build()
        .unwrap();
    let metrics = Metrics::from([("loss", 0.25)]);
    let outcome = fabric.call::<OnTrainEpochEnd>((4, &metrics)).unwrap();
    assert!(!outcome.should_stop());
    assert_eq!(
        *journal.lock().unwrap(),
        [
            "first epoch 4 loss Some(0.25)",
            "second epoch 4 loss Some(0.25)"
        ]
    );
    assert!(!fabric.callback::<Silent>().unwrap().touched);
    // A hook nobody handles is a no-op.
    fabric.call::<OnValidationEpochEnd>((0, &metrics)).unwrap();
}

#[test]
fn user_declared_hooks_dispatch_with_their_arguments_and_outcomes() {
    let journal = Journal::default();
    let mut fabric = Fabric::builder()
        .accelerator("cpu")
        .callback(recorder("r", &journal))
        .build()
        .unwrap();
    let outcome = fabric.call::<OnBestModel>(("ckpt-7", 0.93)).unwrap();
    assert_eq!(outcome.metrics(), [("best_score".to_string(), 0.93)]);
    assert_eq!(
        fabric.callback::<Recorder>().unwrap().best,
        Some(0.93),
        "typed access returns the registered state"
    );
    assert_eq!(*journal.lock().unwrap(), ["r best ckpt-7 0.93"]);
}

#[test]
fn fabric_fires_on_after_setup() {
    // Initialising layers draws from the generator another test seeds.
    let _rng = common::rng_lock();
    let journal = Journal::default();
    let mut fabric = Fabric::builder()
        .accelerator("cpu")
        .callback(recorder("r", &journal))
        .build()
        .unwrap();
    let mut vs = nn::VarStore::new(Device::Cpu);
    let net = nn::linear(vs.root(), 2, 1, Default::default());
    fabric.setup_module(&mut vs, net).unwrap();
    assert_eq!(*journal.lock().unwrap(), ["r setup"]);
    // Firing it by hand reaches the same handler.
    fabric.call::<OnAfterSetup>(()).unwrap();
    assert_eq!(journal.lock().unwrap().len(), 2);
}

#[test]
fn a_hook_error_propagates_and_names_the_callback_and_hook() {
    let journal = Journal::default();
    let mut fabric = Fabric::builder()
        .accelerator("cpu")
        .callback(Failing)
        .callback(recorder("after", &journal))
        .build()
        .unwrap();
    let metrics = Metrics::new();
    fabric.call::<OnTrainEpochEnd>((1, &metrics)).unwrap();
    let err = fabric
        .call::<OnTrainEpochEnd>((2, &metrics))
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "callback `Failing`: hook `on_train_epoch_end` failed: no space left at epoch 2"
    );
    assert_eq!(
        journal.lock().unwrap().len(),
        1,
        "dispatch stops at the error"
    );
}

#[test]
fn early_stopping_stops_a_real_training_run() {
    let _rng = common::rng_lock();
    let mut fabric = Fabric::builder()
        .accelerator("cpu")
        .callback(EarlyStopping::new("val_loss", 3).min_delta(1e-3))
        .build()
        .unwrap();
    fabric.seed_everything(1);
    // Pure noise targets: validation loss cannot keep improving.
    let x = Tensor::randn([256, 8], (Kind::Float, Device::Cpu));
    let y = Tensor::randn([256, 1], (Kind::Float, Device::Cpu));
    let (vx, vy) = (
        Tensor::randn([128, 8], (Kind::Float, Device::Cpu)),
        Tensor::randn([128, 1], (Kind::Float, Device::Cpu)),
    );
    let mut vs = nn::VarStore::new(Device::Cpu);
    let net = nn::seq()
        .add(nn::linear(vs.root() / "a", 8, 64, Default::default()))
        .add_fn(|x| x.relu())
        .add(nn::linear(vs.root() / "b", 64, 1, Default::default()));
    let opt = nn::Adam::default().build(&vs, 1e-2).unwrap();
    let (model, mut opt) = fabric.setup(&mut vs, net, opt).unwrap();
    let mut epochs = 0;
    for epoch in 0..200 {
        opt.zero_grad();
        let loss = model.forward(&x).mse_loss(&y, tch::Reduction::Mean);
        fabric.backward(&loss).unwrap();
        opt.step().unwrap();
        let val = tch::no_grad(|| {
            model
                .forward(&vx)
                .mse_loss(&vy, tch::Reduction::Mean)
                .double_value(&[])
        });
        fabric
            .call::<OnValidationEpochEnd>((epoch, &Metrics::from([("val_loss", val)])))
            .unwrap();
        epochs = epoch + 1;
        if fabric.should_stop().unwrap() {
            break;
        }
    }
    let stopper = fabric.callback::<EarlyStopping>().unwrap();
    assert!(epochs < 200, "it never stopped");
    assert_eq!(stopper.stopped_epoch(), Some(epochs - 1));
    assert!(stopper.best().is_some());
}

#[test]
fn early_stopping_in_max_mode_and_missing_metrics() {
    let mut fabric = Fabric::builder()
        .accelerator("cpu")
        .callback(
            EarlyStopping::new("acc", 2)
                .mode(Mode::Max)
                .check_on_train_epoch_end(true),
        )
        .build()
        .unwrap();
    for (epoch, acc) in [0.5, 0.6, 0.7, 0.65].into_iter().enumerate() {
        fabric
            .call::<OnTrainEpochEnd>((epoch, &Metrics::from([("acc", acc)])))
            .unwrap();
        assert!(
            !fabric.should_stop().unwrap(),
            "one non-improvement is within patience"
        );
    }
    fabric
        .call::<OnTrainEpochEnd>((4, &Metrics::from([("acc", 0.69)])))
        .unwrap();
    assert!(fabric.should_stop().unwrap());
    let err = fabric
        .call::<OnTrainEpochEnd>((5, &Metrics::from([("loss", 1.0)])))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("monitors `acc`, which is not among the metrics [\"loss\"]"),
        "{err}"
    );
}

#[test]
fn the_throughput_monitor_hands_back_samples_per_second() {
    let logged: Arc<Mutex<Vec<String>>> = Arc::default();
    struct Sink(Arc<Mutex<Vec<String>>>);
    impl fabric::Logger for Sink {
        fn log_metrics(
            &mut self,
            metrics: &[(&str, f64)],
            _: Option<u64>,
        ) -> Result<(), fabric::LoggerError> {
            self.0
                .lock()
                .unwrap()
                .extend(metrics.iter().map(|(k, _)| k.to_string()));
            Ok(())
        }
    }
    let mut fabric = Fabric::builder()
        .accelerator("cpu")
        .callback(ThroughputMonitor::new(2))
        .logger(Sink(logged.clone()))
        .build()
        .unwrap();
    let metrics = Metrics::new();
    for step in 0..5 {
        std::thread::sleep(std::time::Duration::from_millis(5));
        fabric
            .call::<OnTrainBatchEnd>((step, 32, &metrics))
            .unwrap();
    }
    let rate = fabric
        .callback::<ThroughputMonitor>()
        .unwrap()
        .samples_per_second()
        .unwrap();
    assert!(
        rate > 100.0 && rate < 32.0 / 0.004,
        "{rate} samples/s for 32 samples every ~5 ms"
    );
    assert_eq!(
        fabric
            .callback::<ThroughputMonitor>()
            .unwrap()
            .total_samples(),
        160
    );
    assert!(
        logged
            .lock()
            .unwrap()
            .contains(&"throughput/samples_per_sec".to_string())
    );
}

#[test]
fn the_standard_hook_names_agree_between_macro_and_runtime() {
    let runtime: Vec<&str> = fabric::hooks::STANDARD.to_vec();
    let macro_side: Vec<&str> = fabric::options::STANDARD_HOOKS
        .iter()
        .map(|(name, _)| *name)
        .collect();
    assert_eq!(runtime, macro_side);
}

#[derive(Callback)]
struct CheckpointWatcher {
    journal: Journal,
}

#[hooks]
impl CheckpointWatcher {
    #[hook]
    fn on_save_checkpoint(&mut self, path: &std::path::Path) {
        self.journal.lock().unwrap().push(format!(
            "save {}",
            path.file_name().unwrap().to_string_lossy()
        ));
    }

    #[hook]
    fn on_load_checkpoint(&mut self, path: &std::path::Path) {
        self.journal.lock().unwrap().push(format!(
            "load {}",
            path.file_name().unwrap().to_string_lossy()
        ));
    }
}

#[test]
fn fabric_fires_its_hooks_around_checkpoints() {
    // Initialising layers draws from the generator another test seeds.
    let _rng = common::rng_lock();
    let journal = Journal::default();
    let mut fabric = Fabric::builder()
        .accelerator("cpu")
        .callback(CheckpointWatcher {
            journal: journal.clone(),
        })
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ckpt");
    let mut vs = nn::VarStore::new(Device::Cpu);
    let _net = nn::linear(vs.root(), 2, 1, Default::default());
    let mut epoch = 3u64;
    fabric
        .save(
            &path,
            &fabric::checkpoint::State::new()
                .model("model", &mut vs)
                .value("epoch", &mut epoch),
        )
        .unwrap();
    epoch = 0;
    fabric
        .load(
            &path,
            &mut fabric::checkpoint::State::new()
                .model("model", &mut vs)
                .value("epoch", &mut epoch),
        )
        .unwrap();
    assert_eq!(epoch, 3);
    assert_eq!(*journal.lock().unwrap(), ["save ckpt", "load ckpt"]);
}
