//! The character GPT of `examples/gpt.rs` trained with fabric, the Rust side
//! of `bench/gpt_lightning.py`: the same model
//! (`fabric_examples::gpt::Gpt`, 32 characters per attention head), text,
//! batch, AdamW with its parameter groups, warm-up and cosine schedule and
//! gradient clipping at norm 1. `bench/suite.py --only gpt` runs both and
//! compares them; one run by hand:
//!
//! ```sh
//! cargo bench --bench gpt -- --precision bf16-mixed --width 384
//! cargo bench --bench gpt -- --devices 2 --threads 1   # ddp
//! ```
//!
//! Times `--steps` steps after `--warmup`, each phase on its own (the
//! forward pass with the loss, `fabric.backward`, `fabric.clip_gradients`,
//! the optimizer's step with `zero_grad` and the scheduler's step); rank 0
//! prints `RESULT system=fabric tokens_per_s=.. step_ms=.. forward_ms=..
//! backward_ms=.. clip_ms=.. optimizer_ms=.. loss_first=.. loss_last=..`
//! (medians over the timed steps; tokens/s over all ranks from the total
//! time), and every rank `RSS rank=<r> kb=<peak resident set size>`.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use fabric::optim::{AdamW, LrScheduler, ParamGroup, Schedule};
use fabric::{Fabric, GradClip};
use fabric_examples::gpt::{self, Config, Corpus, Gpt};
use tch::{Device, Kind, Tensor};

struct Args {
    precision: String,
    devices: usize,
    width: i64,
    layers: i64,
    block: i64,
    batch: i64,
    warmup: usize,
    steps: usize,
    threads: i32,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        precision: "32-true".into(),
        devices: 1,
        width: 192,
        layers: 6,
        block: 128,
        batch: 16,
        warmup: 5,
        steps: 20,
        threads: 2,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--bench" {
            continue;
        }
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--precision" => a.precision = value,
            "--devices" => a.devices = value.parse()?,
            "--width" => a.width = value.parse()?,
            "--layers" => a.layers = value.parse()?,
            "--block" => a.block = value.parse()?,
            "--batch" => a.batch = value.parse()?,
            "--warmup" => a.warmup = value.parse()?,
            "--steps" => a.steps = value.parse()?,
            "--threads" => a.threads = value.parse()?,
            other => bail!("unknown option {other}"),
        }
    }
    if a.steps == 0 || a.width % 32 != 0 {
        bail!("--steps must be at least 1 and --width a multiple of 32");
    }
    Ok(a)
}

fn peak_rss_kb() -> i64 {
    // SAFETY: getrusage only writes into the struct it is given.
    unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage.ru_maxrss
    }
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

fn main() -> Result<()> {
    let a = parse_args()?;
    let mut builder = Fabric::builder()
        .accelerator("cpu")
        .devices(a.devices as i64)
        .precision(a.precision.as_str())
        .progress_bar(false);
    if a.devices > 1 {
        builder = builder.strategy("ddp");
    }
    // With ddp this starts the ranks under mpirun and does not return here.
    let mut fabric = builder.build_or_launch()?;
    tch::set_num_threads(a.threads);
    let (rank, world) = (fabric.global_rank(), fabric.world_size());
    fabric.seed_everything(1337);
    let corpus = Corpus::load(&gpt::default_path(), None)?;
    let config = Config {
        vocab: corpus.vocab(),
        block: a.block,
        layers: a.layers,
        heads: a.width / 32,
        width: a.width,
    };
    let mut vs = tch::nn::VarStore::new(Device::Cpu);
    let model = fabric.setup_module_with(&mut vs, |p| Gpt::new(p, config))?;
    let optimizer = AdamW::new(2e-3)
        .betas(0.9, 0.99)
        .weight_decay(0.1)
        .group(ParamGroup::no_weight_decay())
        .group(ParamGroup::names("positions", ["wpe.weight"]).weight_decay(0.0))
        .build(&vs)?;
    let mut optimizer = fabric.setup_optimizer(optimizer)?;
    let mut scheduler = LrScheduler::new(&mut optimizer, Schedule::warmup_cosine(80, 800, 0.1))?;
    // Random windows of the training text, as the Python side draws them.
    tch::manual_seed(1337 + rank as i64);
    let ids = corpus.train.shallow_clone();
    let offsets = Tensor::arange(a.block + 1, (Kind::Int64, Device::Cpu));
    let high = ids.size()[0] - a.block - 1;
    let batch = || {
        let starts = Tensor::randint(high, [a.batch], (Kind::Int64, Device::Cpu));
        let w = ids.index_select(0, &(starts.unsqueeze(1) + &offsets).flatten(0, 1));
        let w = w.view([a.batch, a.block + 1]);
        (
            w.narrow(1, 0, a.block).contiguous(),
            w.narrow(1, 1, a.block).contiguous(),
        )
    };

    let mut phases: [Vec<f64>; 4] = Default::default();
    let mut losses = Vec::new();
    let mut step = |fabric: &mut Fabric, record: bool| -> Result<()> {
        let (x, y) = batch();
        let t0 = Instant::now();
        let loss = gpt::loss(&model.forward(&x), &y);
        let t1 = Instant::now();
        fabric.backward(&loss)?;
        let t2 = Instant::now();
        fabric.clip_gradients(&mut optimizer, GradClip::norm(1.0))?;
        let t3 = Instant::now();
        optimizer.step()?;
        optimizer.zero_grad();
        scheduler.step(&mut optimizer)?;
        let t4 = Instant::now();
        losses.push(loss.double_value(&[]));
        if record {
            for (phase, (from, to)) in
                phases
                    .iter_mut()
                    .zip([(t0, t1), (t1, t2), (t2, t3), (t3, t4)])
            {
                phase.push((to - from).as_secs_f64() * 1000.0);
            }
        }
        Ok(())
    };
    for _ in 0..a.warmup {
        step(&mut fabric, false)?;
    }
    fabric.barrier()?;
    let start = Instant::now();
    for _ in 0..a.steps {
        step(&mut fabric, true)?;
    }
    fabric.barrier()?;
    let elapsed = start.elapsed().as_secs_f64();
    if rank == 0 {
        let tokens = (a.steps as i64 * a.batch * a.block * world as i64) as f64;
        let last = &losses[losses.len().saturating_sub(5)..];
        println!(
            "RESULT system=fabric tokens_per_s={:.1} step_ms={:.2} forward_ms={:.2} backward_ms={:.2} clip_ms={:.2} optimizer_ms={:.2} loss_first={:.4} loss_last={:.4} threads={} world={world}",
            tokens / elapsed,
            elapsed / a.steps as f64 * 1000.0,
            median(&phases[0]),
            median(&phases[1]),
            median(&phases[2]),
            median(&phases[3]),
            losses[0],
            last.iter().sum::<f64>() / last.len() as f64,
            tch::get_num_threads(),
        );
    }
    println!("RSS rank={rank} kb={}", peak_rss_kb());
    Ok(())
}
