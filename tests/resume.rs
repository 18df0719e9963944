//! Exact mid-epoch resume and numbered checkpoints: a run stopped after a
//! checkpoint in the middle of an epoch, or killed (SIGKILL) there, and
//! started again in a new process with `Fabric::load_latest`, sees exactly
//! the batches the uninterrupted run saw after that checkpoint, draws the
//! same dropout masks, and ends with bit-identical parameters: in one
//! process and under 2-rank ddp (`mpirun`), without and with worker
//! threads. Also: `load_latest` picks the newest complete checkpoint, a
//! loader skips the batches taken without making them, and bad input
//! (missing loader state, another world size, another loader) is an error.
//!
//! The multi-process tests re-run this test binary (test `resume_child`,
//! which does nothing unless `RESUME_DIR` is set) as a child process or
//! under `mpirun`.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use fabric::checkpoint::State;
use fabric::data::{DataLoader, Dataset, TensorDataset};
use fabric::optim::AdamW;
use fabric::{Error, Fabric};
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

const EPOCHS: u64 = 3;
const SAMPLES: i64 = 48;
const BATCH: usize = 4;
const SAVE_EVERY: u64 = 3;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| v.parse().unwrap())
}

/// The training the child processes run: shuffled data, dropout, AdamW,
/// a numbered checkpoint every 3 steps, resuming from the newest.
/// `RESUME_STOP_AT` returns after that step's checkpoint; `RESUME_KILL_AT`
/// kills the last rank with SIGKILL after that step (and before the next
/// checkpoint).
#[test]
fn resume_child() {
    let Ok(dir) = std::env::var("RESUME_DIR") else {
        return;
    };
    let dir = PathBuf::from(dir);
    let stop_at = env_u64("RESUME_STOP_AT");
    let kill_at = env_u64("RESUME_KILL_AT");
    let workers = env_u64("RESUME_WORKERS").unwrap_or(0) as usize;
    let builder = Fabric::builder().accelerator("cpu");
    let mut fabric = if std::env::var_os("RESUME_DDP").is_some() {
        builder.build_or_launch().unwrap()
    } else {
        builder.build().unwrap()
    };
    let (rank, world) = (fabric.global_rank(), fabric.world_size());
    fabric.seed_everything(11);
    let x = Tensor::randn([SAMPLES, 4], (Kind::Float, Device::Cpu));
    let y = x.sum_dim_intlist(1, true, Kind::Float).sin();
    let idx = Tensor::arange(SAMPLES, (Kind::Int64, Device::Cpu));
    let mut vs = nn::VarStore::new(Device::Cpu);
    let l1 = nn::linear(vs.root() / "l1", 4, 16, Default::default());
    let l2 = nn::linear(vs.root() / "l2", 16, 1, Default::default());
    let net = nn::func_t(move |x, train| l1.forward(x).relu().dropout(0.3, train).apply(&l2));
    let opt = AdamW::new(1e-2).weight_decay(0.01).build(&vs).unwrap();
    let (model, mut opt) = fabric.setup(&mut vs, net, opt).unwrap();
    // Each rank's generator in a state of its own: a checkpoint holding
    // rank 0's for all would give rank 1 other dropout masks.
    let _ = Tensor::rand([rank as i64 * 5 + 1], (Kind::Float, Device::Cpu));
    let mut loader = fabric
        .setup_dataloaders(
            DataLoader::new(TensorDataset::new((x, y, idx)).unwrap())
                .batch_size(BATCH)
                .shuffle(true)
                .num_workers(workers),
        )
        .unwrap();

    let mut step = 0u64;
    macro_rules! state {
        () => {
            State::new()
                .model("model", &mut vs)
                .optimizer("optimizer", &mut opt)
                .loader("train", &mut loader)
                .rng()
                .value("step", &mut step)
        };
    }
    let resumed = fabric.load_latest(&dir, &mut state!()).unwrap();
    println!(
        "RESUMED rank={rank} step={}",
        resumed.map_or(-1, |r| r.step as i64)
    );
    while loader.loader().epoch() < EPOCHS {
        for batch in &mut loader {
            let (x, y, idx) = batch.unwrap();
            opt.zero_grad();
            let loss = model.forward(&x).mse_loss(&y, tch::Reduction::Mean);
            fabric.backward(&loss).unwrap();
            opt.step().unwrap();
            step += 1;
            let idx: Vec<i64> = Vec::try_from(idx).unwrap();
            let idx: Vec<String> = idx.iter().map(i64::to_string).collect();
            println!("BATCH rank={rank} step={step} idx={}", idx.join(","));
            if step.is_multiple_of(SAVE_EVERY) {
                fabric.save_step(&dir, step, &state!()).unwrap();
            }
            if Some(step) == stop_at {
                println!("STOPPED rank={rank} step={step}");
                return;
            }
            if Some(step) == kill_at && rank + 1 == world {
                std::io::stdout().flush().unwrap();
                let pid = std::process::id().to_string();
                let _ = Command::new("kill").args(["-KILL", &pid]).status();
                std::thread::sleep(std::time::Duration::from_secs(60));
            }
        }
    }
    let mut params: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    params.sort_by(|a, b| a.0.cmp(&b.0));
    let bits: Vec<String> = params
        .iter()
        .flat_map(|(_, t)| Vec::<f32>::try_from(t.flatten(0, -1)).unwrap())
        .map(|v| format!("{:08x}", v.to_bits()))
        .collect();
    println!("PARAMS rank={rank} bits={}", bits.join(""));
}

/// How a child run is started.
#[derive(Clone, Copy)]
struct Run {
    ddp: bool,
    workers: usize,
}

impl Run {
    /// The child run: `resume_child` of this binary, directly or in two
    /// ranks of `mpirun`.
    fn scenario(self, dir: &Path, env: &[(&str, String)]) -> common::Scenario {
        let mut scenario = if self.ddp {
            common::Scenario::mpirun("resume_child", 2).env("RESUME_DDP", "1")
        } else {
            common::Scenario::direct("resume_child")
        }
        .env("RESUME_DIR", dir)
        .env("RESUME_WORKERS", self.workers.to_string());
        for (name, value) in env {
            scenario = scenario.env(name, value);
        }
        scenario
    }

    /// Runs the child; its output, and whether it succeeded.
    fn run(self, dir: &Path, env: &[(&str, String)]) -> (String, bool) {
        let run = self.scenario(dir, env).run();
        (run.text, run.output.status.success())
    }
}

/// The fields of the lines starting with `tag`, as maps.
fn lines(text: &str, tag: &str) -> Vec<BTreeMap<String, String>> {
    text.lines()
        .filter_map(|l| l.find(tag).map(|i| &l[i + tag.len()..]))
        .map(|rest| {
            rest.split_whitespace()
                .filter_map(|f| f.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect()
        })
        .collect()
}

/// (rank, step) -> sample indices of the batch.
fn batches(text: &str) -> BTreeMap<(usize, u64), String> {
    lines(text, "BATCH ")
        .into_iter()
        .map(|f| {
            (
                (f["rank"].parse().unwrap(), f["step"].parse().unwrap()),
                f["idx"].clone(),
            )
        })
        .collect()
}

/// rank -> the parameters' bits.
fn params(text: &str) -> BTreeMap<usize, String> {
    lines(text, "PARAMS ")
        .into_iter()
        .map(|f| (f["rank"].parse().unwrap(), f["bits"].clone()))
        .collect()
}

fn resumed_steps(text: &str) -> Vec<i64> {
    lines(text, "RESUMED ")
        .iter()
        .map(|f| f["step"].parse().unwrap())
        .collect()
}

/// An uninterrupted run, and one interrupted (`interrupt`: stop or kill
/// at step `at`, the newest checkpoint being `checkpoint`) then started
/// again: the same batches after the checkpoint, and the same parameters,
/// bit for bit.
fn check_resume(run: Run, interrupt: &str, at: u64, checkpoint: u64) {
    let ranks = if run.ddp { 2 } else { 1 };
    let whole = tempfile::tempdir().unwrap();
    let (full, ok) = run.run(whole.path(), &[]);
    assert!(ok, "{full}");
    let full_batches = batches(&full);
    let per_epoch = SAMPLES as u64 / (BATCH as u64 * ranks);
    assert_eq!(
        full_batches.len() as u64,
        EPOCHS * per_epoch * ranks,
        "{full}"
    );
    assert_eq!(resumed_steps(&full), vec![-1; ranks as usize]);
    assert!(
        !checkpoint.is_multiple_of(per_epoch),
        "the checkpoint is in the middle of an epoch"
    );

    let split = tempfile::tempdir().unwrap();
    let (first, ok) = run.run(split.path(), &[(interrupt, at.to_string())]);
    if interrupt == "RESUME_KILL_AT" {
        assert!(!ok, "the killed run fails: {first}");
    } else {
        assert!(ok, "{first}");
    }
    let (second, ok) = run.run(split.path(), &[]);
    assert!(ok, "{second}");
    assert_eq!(
        resumed_steps(&second),
        vec![checkpoint as i64; ranks as usize],
        "{second}"
    );
    let mut seen: BTreeMap<(usize, u64), String> = batches(&first)
        .into_iter()
        .filter(|((_, step), _)| *step <= checkpoint)
        .collect();
    let after = batches(&second);
    assert!(
        after.keys().all(|(_, step)| *step > checkpoint),
        "the resumed run starts after the checkpoint: {second}"
    );
    seen.extend(after);
    assert_eq!(seen, full_batches, "the batches, step by step");
    let (a, b) = (params(&full), params(&second));
    assert_eq!(a.len(), ranks as usize, "{full}");
    assert_eq!(a, b, "bit-identical parameters");
}

#[test]
fn one_process_stopped_mid_epoch_resumes_exactly() {
    // 12 batches per epoch: step 15 is batch 3 of epoch 1.
    let run = Run {
        ddp: false,
        workers: 0,
    };
    check_resume(run, "RESUME_STOP_AT", 15, 15);
}

#[test]
fn one_process_killed_mid_epoch_with_workers_resumes_exactly() {
    // Killed at step 17; the newest checkpoint is step 15.
    let run = Run {
        ddp: false,
        workers: 2,
    };
    check_resume(run, "RESUME_KILL_AT", 17, 15);
}

#[test]
fn ddp_killed_mid_epoch_resumes_exactly() {
    // 2 ranks, 6 batches per epoch each: step 9 is batch 3 of epoch 1;
    // rank 1 is killed at step 11.
    let run = Run {
        ddp: true,
        workers: 0,
    };
    check_resume(run, "RESUME_KILL_AT", 11, 9);
}

#[test]
fn ddp_stopped_mid_epoch_with_workers_resumes_exactly() {
    let run = Run {
        ddp: true,
        workers: 2,
    };
    check_resume(run, "RESUME_STOP_AT", 9, 9);
}

// ---- the loader ---------------------------------------------------------

/// Batches of sample indices, counting the samples made.
struct Counted {
    len: usize,
    made: Arc<AtomicUsize>,
}

impl Dataset for Counted {
    type Batch = Vec<usize>;
    fn len(&self) -> usize {
        self.len
    }
    fn get_batch(&self, indices: &[usize]) -> fabric::Result<Vec<usize>> {
        self.made.fetch_add(indices.len(), Ordering::SeqCst);
        Ok(indices.to_vec())
    }
}

fn counted(len: usize, workers: usize) -> (DataLoader<Counted>, Arc<AtomicUsize>) {
    let made = Arc::new(AtomicUsize::new(0));
    let dataset = Counted {
        len,
        made: Arc::clone(&made),
    };
    let loader = DataLoader::new(dataset)
        .batch_size(3)
        .shuffle(true)
        .seed(5)
        .num_workers(workers);
    (loader, made)
}

#[test]
fn a_restored_loader_yields_the_rest_of_the_epoch_without_making_the_rest() {
    for workers in [0, 2] {
        let (mut original, _) = counted(20, workers);
        original.set_epoch(4);
        let all: Vec<Vec<usize>> = original.iter().map(Result::unwrap).collect();
        assert_eq!(all.len(), 7);

        // Take 3 batches of epoch 4, then save the position.
        let (mut first, _) = counted(20, workers);
        first.set_epoch(4);
        let mut batches = first.iter();
        for expected in &all[..3] {
            assert_eq!(&batches.next().unwrap().unwrap(), expected);
        }
        let position = first.position();
        assert_eq!(
            (position.epoch, position.consumed, position.batches),
            (4, 3, 7)
        );
        drop(batches);
        // Dropped mid-epoch, the loader goes on with the next epoch.
        assert_eq!((first.position().epoch, first.position().consumed), (5, 0));

        // A loader of another seed takes the saved one.
        let made = Arc::new(AtomicUsize::new(0));
        let dataset = Counted {
            len: 20,
            made: Arc::clone(&made),
        };
        let mut resumed = DataLoader::new(dataset)
            .batch_size(3)
            .shuffle(true)
            .seed(6)
            .num_workers(workers);
        resumed.restore_position(&position).unwrap();
        assert_eq!(resumed.epoch(), 4);
        // The usual loop sets the (restored) epoch again: the position stays.
        resumed.set_epoch(4);
        let rest: Vec<Vec<usize>> = resumed.iter().map(Result::unwrap).collect();
        assert_eq!(rest, all[3..], "workers {workers}");
        let rest_samples: usize = rest.iter().map(Vec::len).sum();
        assert_eq!(
            made.load(Ordering::SeqCst),
            rest_samples,
            "only the remaining batches are made (workers {workers})"
        );
        // Exhausted, the position is the next epoch's start, and that
        // epoch is whole.
        assert_eq!(
            (resumed.position().epoch, resumed.position().consumed),
            (5, 0)
        );
        assert_eq!(resumed.iter().count(), 7);
    }
}

#[test]
fn a_position_that_does_not_fit_the_loader_is_an_error() {
    let (mut loader, _) = counted(20, 0);
    let position = loader.position();
    let (other, _) = counted(21, 0);
    let message = other.check_position(&position).unwrap();
    assert!(
        message.contains("the data set size is 20 in the checkpoint and 21 here"),
        "{message}"
    );
    let mut smaller = DataLoader::new(Counted {
        len: 20,
        made: Arc::default(),
    })
    .batch_size(4)
    .shuffle(true);
    let err = smaller.restore_position(&position).unwrap_err().to_string();
    assert!(
        err.contains("the batch size is 3 in the checkpoint and 4 here"),
        "{err}"
    );
    let mut bad = position.clone();
    bad.consumed = 8;
    let err = loader.restore_position(&bad).unwrap_err().to_string();
    assert!(err.contains("8 batches of 7 were taken"), "{err}");
}

// ---- the generators -----------------------------------------------------

#[test]
fn restoring_the_generators_repeats_the_draws() {
    let _rng = common::rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let mut fabric = Fabric::builder().accelerator("cpu").build().unwrap();
    fabric.seed_everything(3);
    let _ = Tensor::rand([7], (Kind::Float, Device::Cpu));
    let path = dir.path().join("ckpt");
    fabric.save(&path, &State::new().rng()).unwrap();
    let first = Tensor::rand([64], (Kind::Float, Device::Cpu));
    let normal = Tensor::randn([5], (Kind::Float, Device::Cpu));
    let mask = Tensor::ones([64], (Kind::Float, Device::Cpu)).dropout(0.5, true);
    fabric.seed_everything(99);
    fabric.load(&path, &mut State::new().rng()).unwrap();
    assert!(Tensor::rand([64], (Kind::Float, Device::Cpu)).equal(&first));
    assert!(Tensor::randn([5], (Kind::Float, Device::Cpu)).equal(&normal));
    let again = Tensor::ones([64], (Kind::Float, Device::Cpu)).dropout(0.5, true);
    assert!(again.equal(&mask));
}

// ---- bad input ----------------------------------------------------------

fn tiny() -> (nn::VarStore, fabric::optim::Optimizer) {
    let vs = nn::VarStore::new(Device::Cpu);
    let _ = nn::linear(vs.root() / "l", 2, 1, Default::default());
    let opt = AdamW::new(1e-3).build(&vs).unwrap();
    (vs, opt)
}

fn tensor_loader(
    fabric: &Fabric,
    samples: i64,
    batch: usize,
) -> fabric::data::FabricDataLoader<TensorDataset<Tensor>> {
    let x = Tensor::arange(samples, (Kind::Float, Device::Cpu));
    fabric
        .setup_dataloaders(
            DataLoader::new(TensorDataset::new(x).unwrap())
                .batch_size(batch)
                .shuffle(true)
                .seed(1),
        )
        .unwrap()
}

#[test]
fn a_checkpoint_without_loader_state_is_a_clear_error() {
    let _rng = common::rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let mut fabric = Fabric::builder().accelerator("cpu").build().unwrap();
    let (mut vs, mut opt) = tiny();
    let mut loader = tensor_loader(&fabric, 10, 2);
    let mut step = 5u64;
    let path = dir.path().join("old");
    fabric
        .save(
            &path,
            &State::new()
                .model("model", &mut vs)
                .optimizer("opt", &mut opt)
                .value("step", &mut step),
        )
        .unwrap();
    step = 0;
    let err = fabric
        .load(
            &path,
            &mut State::new()
                .model("model", &mut vs)
                .optimizer("opt", &mut opt)
                .loader("train", &mut loader)
                .rng()
                .value("step", &mut step),
        )
        .unwrap_err();
    assert!(matches!(err, Error::CheckpointMismatch { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("missing in the checkpoint: train"),
        "{message}"
    );
    assert!(
        message.contains("missing in the checkpoint: rng"),
        "{message}"
    );
    assert_eq!(step, 0, "nothing changed");
}

#[test]
fn another_world_size_or_another_loader_is_a_clear_error() {
    let _rng = common::rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let mut fabric = Fabric::builder().accelerator("cpu").build().unwrap();
    let mut step = 1u64;
    let path = dir.path().join("ckpt");
    // Taken mid-epoch: the position of epoch 0 after 1 batch.
    let mut loader = tensor_loader(&fabric, 10, 2);
    let mut batches = loader.iter();
    let _ = batches.next().unwrap().unwrap();
    fabric
        .save(
            &path,
            &State::new()
                .loader("train", &mut loader)
                .rng()
                .value("step", &mut step),
        )
        .unwrap();
    drop(batches);

    // A loader of another batch size, and of another length.
    for (samples, batch, expected) in [
        (10, 3, "the batch size is 2 in the checkpoint and 3 here"),
        (
            12,
            2,
            "the data set size is 10 in the checkpoint and 12 here",
        ),
    ] {
        let mut other = tensor_loader(&fabric, samples, batch);
        let err = fabric
            .load(
                &path,
                &mut State::new()
                    .loader("train", &mut other)
                    .rng()
                    .value("step", &mut step),
            )
            .unwrap_err();
        assert!(matches!(err, Error::CheckpointMismatch { .. }), "{err}");
        assert!(err.to_string().contains(expected), "{err}");
    }

    // A checkpoint of a world of 2, loaded by one process.
    let meta_path = path.join("meta.json");
    let mut meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&meta_path).unwrap()).unwrap();
    for entry in ["train", "rng"] {
        let ranks = meta["entries"][entry]["ranks"].as_array_mut().unwrap();
        let first = ranks[0].clone();
        ranks.push(first);
    }
    std::fs::write(&meta_path, serde_json::to_vec(&meta).unwrap()).unwrap();
    let mut same = tensor_loader(&fabric, 10, 2);
    step = 0;
    let err = fabric
        .load(
            &path,
            &mut State::new()
                .loader("train", &mut same)
                .rng()
                .value("step", &mut step),
        )
        .unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("loader `train` was saved by a world of 2 processes, this one has 1"),
        "{message}"
    );
    assert!(
        message.contains("random generators `rng` was saved by a world of 2 processes"),
        "{message}"
    );
    assert_eq!(step, 0, "nothing changed");

    // A damaged generator state.
    let mut meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&meta_path).unwrap()).unwrap();
    meta["entries"]["train"]["ranks"]
        .as_array_mut()
        .unwrap()
        .pop();
    meta["entries"]["rng"]["ranks"] = serde_json::json!([{"cpu": "00ff"}]);
    std::fs::write(&meta_path, serde_json::to_vec(&meta).unwrap()).unwrap();
    let err = fabric
        .load(&path, &mut State::new().loader("train", &mut same).rng())
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("the CPU generator's state has 2 bytes"),
        "{err}"
    );
    // And the loader alone loads: epoch 0 after 1 batch.
    fabric
        .load(&path, &mut State::new().loader("train", &mut same))
        .unwrap();
    assert_eq!(same.iter().count(), 4);
}

// ---- load_latest ----------------------------------------------------------

/// Rank 1 cannot read the checkpoint rank 0 loads (as with a node-local
/// directory): not a resumed rank 0 beside a fresh rank 1, but an error on
/// both.
#[test]
fn a_checkpoint_only_some_ranks_can_read_is_an_error_not_a_fresh_start() {
    const TEST: &str = "a_checkpoint_only_some_ranks_can_read_is_an_error_not_a_fresh_start";
    if common::in_scenario(TEST) {
        let mut fabric = Fabric::builder().accelerator("cpu").build().unwrap();
        let rank = fabric.global_rank();
        // Each rank its own directory: rank 0 writes the checkpoint into its.
        let dir = PathBuf::from(std::env::var("SPLIT_DIR").unwrap()).join(format!("rank{rank}"));
        let mut step = 5u64;
        fabric
            .save_step(&dir, step, &State::new().value("step", &mut step))
            .unwrap();
        step = 0;
        let outcome = match fabric.load_latest(&dir, &mut State::new().value("step", &mut step)) {
            Ok(resumed) => format!("ok {:?} step {step}", resumed.map(|r| r.step)),
            Err(error) => format!("error {error}"),
        };
        common::report(rank, &outcome);
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let run = common::Scenario::mpirun(TEST, 2)
        .env("SPLIT_DIR", dir.path())
        .run();
    assert!(run.output.status.success(), "{}", run.text);
    for (rank, outcome) in run.results.iter().enumerate() {
        assert!(
            outcome.starts_with("error") && outcome.contains("could be read by every rank"),
            "rank {rank}: {outcome}\n{}",
            run.text
        );
    }
}

#[test]
fn load_latest_picks_the_newest_complete_checkpoint() {
    let _rng = common::rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let mut fabric = Fabric::builder().accelerator("cpu").build().unwrap();
    let (mut vs, mut opt) = tiny();
    let mut step = 0u64;

    // Nothing yet: a fresh start, the state unchanged.
    let missing = dir.path().join("not-there");
    let none = fabric
        .load_latest(
            &missing,
            &mut State::new()
                .model("model", &mut vs)
                .value("step", &mut step),
        )
        .unwrap();
    assert!(none.is_none());
    let none = fabric
        .load_latest(
            dir.path(),
            &mut State::new()
                .model("model", &mut vs)
                .value("step", &mut step),
        )
        .unwrap();
    assert!(none.is_none());

    for s in [5u64, 10, 15, 20] {
        step = s;
        let path = fabric
            .save_step_keep_last(
                dir.path(),
                s,
                3,
                &State::new()
                    .model("model", &mut vs)
                    .optimizer("opt", &mut opt)
                    .value("step", &mut step),
            )
            .unwrap();
        assert_eq!(path, dir.path().join(format!("step-{s:09}")));
    }
    assert!(
        !dir.path().join("step-000000005").exists(),
        "keep_last(3) pruned step 5"
    );
    assert!(dir.path().join("step-000000010").exists());
    // Not a checkpoint of ours: ignored.
    std::fs::create_dir(dir.path().join("notes")).unwrap();

    step = 0;
    let latest = fabric
        .load_latest(
            dir.path(),
            &mut State::new()
                .model("model", &mut vs)
                .optimizer("opt", &mut opt)
                .value("step", &mut step),
        )
        .unwrap()
        .unwrap();
    assert_eq!((latest.step, step), (20, 20));
    assert_eq!(latest.path, dir.path().join("step-000000020"));

    // The newest damaged (a truncated file): the one before, with a warning.
    let model = dir.path().join("step-000000020/model.safetensors");
    let bytes = std::fs::read(&model).unwrap();
    std::fs::write(&model, &bytes[..bytes.len() / 2]).unwrap();
    step = 0;
    let latest = fabric
        .load_latest(
            dir.path(),
            &mut State::new()
                .model("model", &mut vs)
                .optimizer("opt", &mut opt)
                .value("step", &mut step),
        )
        .unwrap()
        .unwrap();
    assert_eq!((latest.step, step), (15, 15));
    // The newest without its meta.json (incomplete): the one before too.
    std::fs::remove_file(dir.path().join("step-000000015/meta.json")).unwrap();
    let latest = fabric
        .load_latest(
            dir.path(),
            &mut State::new()
                .model("model", &mut vs)
                .optimizer("opt", &mut opt)
                .value("step", &mut step),
        )
        .unwrap()
        .unwrap();
    assert_eq!((latest.step, step), (10, 10));

    // A state the checkpoints do not fit is an error, not a fresh start.
    let mut other = nn::VarStore::new(Device::Cpu);
    let _ = nn::linear(other.root() / "l", 3, 1, Default::default());
    let err = fabric
        .load_latest(dir.path(), &mut State::new().model("model", &mut other))
        .unwrap_err();
    assert!(matches!(err, Error::CheckpointMismatch { .. }), "{err}");

    let err = fabric
        .save_step_keep_last(dir.path(), 25, 0, &State::new().value("step", &mut step))
        .unwrap_err();
    assert!(
        err.to_string().contains("keep_last must be at least 1"),
        "{err}"
    );
}

#[test]
fn the_cpu_generator_state_is_pytorchs() {
    // The saved state is `torch.get_rng_state()`'s bytes: PyTorch, seeded
    // alike and after the same draw, has the same state, and draws the same
    // numbers once given the saved state.
    let _rng = common::rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let mut fabric = Fabric::builder().accelerator("cpu").build().unwrap();
    fabric.seed_everything(5);
    let _ = Tensor::rand([3], (Kind::Float, Device::Cpu));
    let path = dir.path().join("ckpt");
    fabric.save(&path, &State::new().rng()).unwrap();
    let next = Tensor::rand([4], (Kind::Float, Device::Cpu));
    let next: Vec<f32> = Vec::try_from(next).unwrap();
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path.join("meta.json")).unwrap()).unwrap();
    let saved = meta["entries"]["rng"]["ranks"][0]["cpu"]
        .as_str()
        .unwrap()
        .to_owned();
    let script = format!(
        "import torch\n\
         torch.manual_seed(5); torch.rand(3)\n\
         print(torch.get_rng_state().numpy().tobytes().hex() == '{saved}')\n\
         torch.manual_seed(0)\n\
         torch.set_rng_state(torch.frombuffer(bytearray.fromhex('{saved}'), dtype=torch.uint8))\n\
         print(' '.join(repr(v) for v in torch.rand(4).tolist()))\n"
    );
    let output = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"))
        .args(["-c", &script])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("True"), "the same state as PyTorch's");
    let theirs: Vec<f32> = lines
        .next()
        .unwrap()
        .split(' ')
        .map(|v| v.parse::<f64>().unwrap() as f32)
        .collect();
    assert_eq!(theirs, next, "PyTorch draws the same from the saved state");
}
