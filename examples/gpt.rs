//! A character-level GPT trained on the King James Bible.
//!
//! The model (`fabric_examples::gpt`): token and position embeddings, 6
//! pre-LayerNorm transformer blocks of width 192 (causal self-attention
//! with 6 heads through `scaled_dot_product_attention`, an MLP with GELU),
//! a final LayerNorm and an output layer tied to the token embedding: 2.7 M
//! parameters. It reads 128 characters and predicts the next one at each
//! position. The text is the whole KJV (4.2 M characters, 73 distinct),
//! shipped compressed in `examples/data/kjv.txt.gz`; the last tenth is held
//! out for validation.
//!
//! Training: `precision = "bf16-mixed"`, fabric's AdamW with two parameter
//! groups (weight decay 0.1 on the matrices, none on biases, LayerNorms and
//! the position embedding), a linear warm-up then a cosine schedule of the
//! learning rate, gradients clipped at norm 1, optional gradient
//! accumulation (`ACCUMULATE`, synchronised once per step under ddp), the
//! training and validation losses, learning rate and throughput logged to
//! TensorBoard (`runs/gpt/tensorboard`), and a checkpoint (model,
//! optimizer, scheduler, the loader's position, the random generators,
//! step) saved every 500 steps to `runs/gpt/checkpoints/step-<step>` (the
//! last two kept): started again, the run resumes from the newest and goes on exactly as if it had
//! not stopped. At the end it prints a sample of generated text.
//!
//! ```sh
//! cargo run --release --example gpt                # 800 steps
//! DEVICES=2 cargo run --release --example gpt      # 2 processes under ddp
//! PRECISION=32-true cargo run --release --example gpt
//! STEPS=200 cargo run --release --example gpt      # a short run
//! tensorboard --logdir runs/gpt/tensorboard
//! ```
//!
//! The default run is 800 steps of 16 windows of 128 characters (1.6 M
//! characters seen, about 0.4 of an epoch), sized for 10 minutes on a
//! quiet 2-core CPU whose bfloat16 matrix products are at least as fast as
//! its float32 ones (AVX-512 BF16 or AMX). On a CPU without bfloat16
//! instructions (AVX2 only, such as the AMD EPYC this was written on)
//! libtorch's bfloat16 matrix products are 10-20x slower than float32 and
//! a `bf16-mixed` step about 10x slower than a `32-true` one: there, run it
//! with `PRECISION=32-true`. See BENCHMARKS.md for the measurements and the
//! validation loss reached.
//! A run that finds a finished checkpoint in `runs/gpt/checkpoints` has
//! nothing left to do: delete it (or set `RUNS_DIR`) to train again.
//!
//! Settings from the environment: `DEVICES` (processes, under ddp when
//! more than 1), `PRECISION` (`bf16-mixed`; `32-true` for float32), `STEPS`,
//! `BATCH_SIZE`, `ACCUMULATE`, `LR`, `WARMUP`, `WIDTH`, `LAYERS`, `HEADS`,
//! `BLOCK`, `EVAL_EVERY`, `EVAL_BATCHES`, `CHECKPOINT_EVERY`, `STOP_AT`
//! (stop at that step after saving the checkpoint, as if interrupted),
//! `TEXT_LIMIT` (train on the first characters of the text only),
//! `SAMPLE_CHARS`, `SEED`, `RUNS_DIR` (`runs`).

use std::path::PathBuf;

use fabric::{Fabric, TensorBoardLogger};
use fabric_examples::env_or;
use fabric_examples::gpt::{self, Options};

fn options() -> anyhow::Result<Options> {
    let runs: PathBuf = env_or("RUNS_DIR", PathBuf::from("runs"))?;
    let mut o = Options::example(runs.join("gpt"));
    o.steps = env_or("STEPS", o.steps)?;
    o.batch_size = env_or("BATCH_SIZE", o.batch_size)?;
    o.accumulate = env_or("ACCUMULATE", o.accumulate)?;
    o.lr = env_or("LR", o.lr)?;
    o.warmup_steps = env_or("WARMUP", o.warmup_steps.min(o.steps / 10))?;
    o.model.width = env_or("WIDTH", o.model.width)?;
    o.model.layers = env_or("LAYERS", o.model.layers)?;
    o.model.heads = env_or("HEADS", o.model.heads)?;
    o.model.block = env_or("BLOCK", o.model.block)?;
    o.eval_every = env_or("EVAL_EVERY", o.eval_every)?;
    o.eval_batches = env_or("EVAL_BATCHES", o.eval_batches)?;
    o.checkpoint_every = env_or("CHECKPOINT_EVERY", o.checkpoint_every)?;
    o.sample_chars = env_or("SAMPLE_CHARS", o.sample_chars)?;
    o.seed = env_or("SEED", o.seed)?;
    o.stop_at = std::env::var("STOP_AT")
        .ok()
        .map(|s| s.parse())
        .transpose()?;
    o.text_limit = std::env::var("TEXT_LIMIT")
        .ok()
        .map(|s| s.parse())
        .transpose()?;
    anyhow::ensure!(
        o.batch_size > 0 && o.accumulate > 0 && o.steps > 0,
        "BATCH_SIZE, ACCUMULATE and STEPS must be positive"
    );
    anyhow::ensure!(
        o.eval_every > 0 && o.checkpoint_every > 0 && o.log_every > 0,
        "EVAL_EVERY and CHECKPOINT_EVERY must be positive"
    );
    Ok(o)
}

fn main() -> anyhow::Result<()> {
    let options = options()?;
    let devices: usize = env_or("DEVICES", 1)?;
    let precision: String = env_or("PRECISION", "bf16-mixed".to_string())?;
    let mut builder = Fabric::builder()
        .accelerator("cpu")
        .devices(devices as i64)
        .precision(precision)
        .logger(TensorBoardLogger::new(
            options.dir.join("tensorboard"),
            "gpt",
        ));
    if devices > 1 {
        builder = builder.strategy("ddp");
    }
    builder.launch(|fabric: &mut Fabric| -> anyhow::Result<()> {
        let summary = gpt::train(fabric, &options)?;
        if fabric.global_rank() != 0 {
            return Ok(());
        }
        let seconds = summary.train_time.as_secs_f64();
        println!(
            "trained steps {}..{} in {seconds:.0} s ({:.0} characters per second)",
            summary.start_step + 1,
            summary.step,
            summary.tokens as f64 / seconds
        );
        if summary.step == options.steps {
            println!(
                "final validation loss: {:.4} nats per character",
                summary.val_loss
            );
            println!("sample:\n{}", summary.sample);
        } else {
            println!(
                "stopped at step {}; run again to resume from {}",
                summary.step,
                gpt::checkpoint_dir(&options.dir).display()
            );
        }
        Ok(())
    })
}
