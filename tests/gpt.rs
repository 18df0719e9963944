//! The character GPT of `examples/gpt.rs`, shortened (a small model on the
//! first characters of the text): it learns, a run stopped and resumed
//! from its checkpoint ends bit-identical to one that did not stop, and the
//! example binary runs 2 ranks under ddp.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use fabric::Fabric;
use fabric_examples::gpt::{self, Config, Options};

/// A model and run small enough for seconds in a debug build.
fn short(dir: PathBuf, steps: u64) -> Options {
    let mut o = Options::example(dir);
    o.model = Config {
        vocab: 0,
        block: 32,
        layers: 2,
        heads: 2,
        width: 32,
    };
    o.batch_size = 16;
    o.steps = steps;
    o.warmup_steps = 5;
    o.lr = 3e-3;
    o.eval_every = steps;
    o.eval_batches = 8;
    o.checkpoint_every = 1000;
    o.log_every = 5;
    o.sample_chars = 40;
    o.text_limit = Some(40_000);
    o
}

fn fabric(precision: &str) -> Fabric {
    Fabric::builder()
        .accelerator("cpu")
        .precision(precision)
        .progress_bar(false)
        .build()
        .unwrap()
}

/// Every file of a checkpoint directory, by name.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

#[test]
fn the_short_gpt_learns_the_text() {
    // Seeded training: one at a time (libtorch's generator is global).
    let _rng = common::rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let summary = gpt::train(&mut fabric("32-true"), &short(dir.path().into(), 200)).unwrap();
    // A uniform guess over the 69 characters is 4.23 nats; the characters'
    // frequencies in the training part alone give 3.06 on the validation
    // part. This run reaches 2.38.
    assert!(
        summary.val_loss < 2.6,
        "validation loss {} after 200 steps",
        summary.val_loss
    );
    assert!(
        summary.train_losses[0] > 3.9,
        "{:?}",
        &summary.train_losses[..3]
    );
    assert_eq!(summary.sample.len(), "And ".len() + 40);
    assert!(summary.sample.starts_with("And "));
}

#[test]
fn the_short_gpt_learns_under_bf16_mixed_with_accumulation() {
    // Seeded training: one at a time (libtorch's generator is global).
    let _rng = common::rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let mut options = short(dir.path().into(), 100);
    options.accumulate = 2;
    options.batch_size = 8;
    let summary = gpt::train(&mut fabric("bf16-mixed"), &options).unwrap();
    // Below what the characters' frequencies give (3.06); it reaches 2.78
    // (2.76 in 32-true).
    assert!(
        summary.val_loss < 2.95,
        "validation loss {} after 100 steps",
        summary.val_loss
    );
}

/// Stopping at step 10 (mid-epoch), saving, and resuming gives the same
/// parameters, optimizer state, scheduler position, data order and losses,
/// bit for bit, as training 18 steps without stopping, with and without
/// gradient accumulation. The text is short, so that an epoch is 17
/// micro-batches and the runs cross epochs after the stop (with 2
/// micro-batches per step, the stop is in the middle of the second).
#[test]
fn resuming_mid_run_is_bit_identical_to_not_stopping() {
    // Seeded training: one at a time (libtorch's generator is global).
    let _rng = common::rng_lock();
    for accumulate in [1, 2] {
        let whole = tempfile::tempdir().unwrap();
        let split = tempfile::tempdir().unwrap();
        let options = |dir: &Path| {
            let mut o = short(dir.into(), 18);
            // 306 training characters: 274 windows, 17 batches of 16 (and
            // 34 validation characters, 2 windows).
            o.text_limit = Some(340);
            o.batch_size = 16;
            o.eval_batches = 2;
            o.accumulate = accumulate;
            o.checkpoint_every = 5;
            o
        };
        let full = gpt::train(&mut fabric("32-true"), &options(whole.path())).unwrap();
        assert_eq!((full.start_step, full.step), (0, 18));

        let mut first = options(split.path());
        first.stop_at = Some(10);
        let stopped = gpt::train(&mut fabric("32-true"), &first).unwrap();
        assert_eq!(stopped.step, 10);
        assert!(stopped.sample.is_empty());
        let resumed = gpt::train(&mut fabric("32-true"), &options(split.path())).unwrap();
        assert_eq!((resumed.start_step, resumed.step), (10, 18));

        // The losses of every step, before and after the stop.
        let losses: Vec<f64> = stopped
            .train_losses
            .iter()
            .chain(&resumed.train_losses)
            .copied()
            .collect();
        assert_eq!(losses, full.train_losses, "accumulate {accumulate}");
        assert_eq!(resumed.val_loss.to_bits(), full.val_loss.to_bits());
        assert_eq!(resumed.sample, full.sample);
        // The checkpoints at step 18: model, AdamW's moments and steps, the
        // scheduler and the step, byte for byte.
        let (a, b) = (
            files(&whole.path().join("checkpoints/step-000000018")),
            files(&split.path().join("checkpoints/step-000000018")),
        );
        assert_eq!(
            a.iter().map(|f| &f.0).collect::<Vec<_>>(),
            b.iter().map(|f| &f.0).collect::<Vec<_>>()
        );
        for ((name, x), (_, y)) in a.iter().zip(&b) {
            assert!(x == y, "{name} differs (accumulate {accumulate})");
        }
    }
}

#[cfg(feature = "mpi")]
#[test]
fn the_example_trains_two_ranks_under_ddp() {
    let runs = tempfile::tempdir().unwrap();
    let (output, text) = common::run(
        Command::new(common::example("gpt"))
            .env_remove("LD_LIBRARY_PATH")
            .envs([
                ("DEVICES", "2"),
                ("PRECISION", "32-true"),
                ("STEPS", "8"),
                ("WIDTH", "32"),
                ("LAYERS", "2"),
                ("HEADS", "2"),
                ("BLOCK", "32"),
                ("BATCH_SIZE", "4"),
                ("ACCUMULATE", "2"),
                ("TEXT_LIMIT", "20000"),
                ("EVAL_EVERY", "4"),
                ("EVAL_BATCHES", "4"),
                ("SAMPLE_CHARS", "30"),
            ])
            .env("RUNS_DIR", runs.path()),
    );
    assert!(output.status.success(), "{text}");
    assert!(text.contains("2 ranks x 4 windows"), "{text}");
    assert_eq!(
        text.matches("final validation loss: ").count(),
        1,
        "rank 0 reports: {text}"
    );
    assert!(text.contains("sample:\nAnd "), "{text}");
    assert!(
        runs.path()
            .join("gpt/checkpoints/step-000000008/meta.json")
            .exists()
    );
    assert!(runs.path().join("gpt/tensorboard").exists());
}
