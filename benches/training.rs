//! Training-step throughput of fabric and of a raw tch loop written by hand,
//! the Rust side of `bench/train_lightning.py` (same models, batch,
//! optimizer, step count and thread settings). `bench/suite.py` runs both
//! and compares them; one run by hand:
//!
//! ```sh
//! cargo bench --bench training -- --system fabric --model medium --precision bf16-mixed
//! cargo bench --bench training -- --system fabric --model medium --devices 2   # ddp
//! cargo bench --bench training -- --system fabric --model large --devices 2 --overlap off
//! cargo bench --bench training -- --system raw --model wide --accelerator cuda --precision bf16-mixed
//! ```
//!
//! Each repeat times `--steps` steps after `--warmup` steps; rank 0 prints
//! `RESULT system=.. ms_per_step=<median over repeats> ..`, and every rank
//! `RSS rank=<r> kb=<peak resident set size>`. With `--accelerator cuda`
//! (one GPU, one process), the timed region starts and ends with a CUDA
//! synchronisation, and `CUDA used_mb=..` gives the device memory in use at
//! the end (`bench/gpu_training.py` compares the three systems on a GPU).

use std::time::Instant;

use anyhow::{Context, Result, bail};
use fabric::Fabric;
use fabric::precision::AutocastGuard;
use tch::nn::{self, Module, OptimizerConfig};
use tch::{Device, Kind, Tensor};

#[path = "training/cuda.rs"]
mod cuda;

struct Args {
    system: String,
    model: String,
    /// `cpu` (the default) or `cuda` (one GPU, one process).
    accelerator: String,
    precision: String,
    devices: usize,
    warmup: usize,
    repeats: usize,
    steps: usize,
    threads: i32,
    lr: f64,
    /// Diagnostic: ddp without averaging the gradients (each rank trains
    /// alone), to separate the cost of the averaging from the rest.
    no_sync: bool,
    /// ddp's averaging overlapped with the backward pass (`on`, the
    /// default) or after it (`off`): `DdpStrategy::overlap`.
    overlap: bool,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        system: String::new(),
        model: String::new(),
        accelerator: "cpu".into(),
        precision: "32-true".into(),
        devices: 1,
        warmup: 20,
        repeats: 5,
        steps: 100,
        threads: 1,
        lr: 0.01,
        no_sync: false,
        overlap: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        // `cargo bench` passes `--bench` to harness-less benches.
        if flag == "--bench" {
            continue;
        }
        if flag == "--no-sync" {
            args.no_sync = true;
            continue;
        }
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--system" => args.system = value,
            "--model" => args.model = value,
            "--accelerator" => args.accelerator = value,
            "--precision" => args.precision = value,
            "--devices" => args.devices = value.parse()?,
            "--warmup" => args.warmup = value.parse()?,
            "--repeats" => args.repeats = value.parse()?,
            "--steps" => args.steps = value.parse()?,
            "--threads" => args.threads = value.parse()?,
            "--lr" => args.lr = value.parse()?,
            "--overlap" => {
                args.overlap = match value.as_str() {
                    "on" => true,
                    "off" => false,
                    other => bail!("--overlap is on or off, not {other:?}"),
                }
            }
            other => bail!("unknown option {other}"),
        }
    }
    if args.repeats == 0 || args.steps == 0 {
        bail!("--repeats and --steps must be at least 1");
    }
    match args.accelerator.as_str() {
        "cpu" => {}
        "cuda" if args.devices == 1 => {}
        "cuda" => bail!("--accelerator cuda runs one process on one GPU (--devices 1)"),
        other => bail!("--accelerator is cpu or cuda, not {other:?}"),
    }
    Ok(args)
}

impl Args {
    /// The device the model and the batch live on.
    fn device(&self) -> Device {
        if self.accelerator == "cuda" {
            Device::Cuda(0)
        } else {
            Device::Cpu
        }
    }
}

fn sizes(model: &str) -> Result<&'static [i64]> {
    match model {
        "tiny" => Ok(&[32, 64, 10]),
        "medium" => Ok(&[784, 1024, 1024, 10]),
        // 10.5M parameters (42 MB of gradients): ddp's averaging is not
        // negligible on CPUs, and overlapping it with the backward pass shows.
        "large" => Ok(&[1024, 2048, 2048, 2048, 10]),
        // For a GPU: 176M parameters, about 1.1 TFLOP per step at batch 1024.
        "wide" => Ok(&[4096, 8192, 8192, 8192, 1000]),
        other => bail!("unknown model {other} (tiny, medium, large, wide)"),
    }
}

/// The batch size of each model, as in the Python script.
fn batch_size(model: &str) -> i64 {
    match model {
        "tiny" => 32,
        "wide" => 1024,
        _ => 64,
    }
}

/// Linear layers with ReLU between them, as `nn.Sequential` of
/// `nn.Linear`/`nn.ReLU` in the Python script.
fn mlp(vs: &nn::Path, sizes: &[i64]) -> nn::Sequential {
    let mut net = nn::seq();
    for (i, pair) in sizes.windows(2).enumerate() {
        net = net.add(nn::linear(
            vs / format!("l{i}"),
            pair[0],
            pair[1],
            Default::default(),
        ));
        if i + 2 < sizes.len() {
            net = net.add_fn(|x| x.relu());
        }
    }
    net
}

fn peak_rss_kb() -> i64 {
    // SAFETY: getrusage writes into the struct it is given.
    unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage.ru_maxrss
    }
}

fn median(times: &[f64]) -> f64 {
    let mut sorted = times.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

/// CPU time of this process (every thread), in seconds.
fn cpu_seconds() -> f64 {
    // SAFETY: clock_gettime writes into the struct it is given.
    unsafe {
        let mut ts: libc::timespec = std::mem::zeroed();
        libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts);
        ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
    }
}

/// Milliseconds per step of each repeat: wall-clock and process CPU time.
struct Times {
    wall: Vec<f64>,
    cpu: Vec<f64>,
}

/// Runs `step` for the warm-up, then times the repeats; `barrier` lines
/// the ranks up before each repeat.
fn measure<S>(
    args: &Args,
    state: &mut S,
    mut step: impl FnMut(&mut S) -> Result<()>,
    barrier: impl Fn(&S) -> Result<()>,
) -> Result<Times> {
    for _ in 0..args.warmup {
        step(state)?;
    }
    let mut times = Times {
        wall: Vec::with_capacity(args.repeats),
        cpu: Vec::with_capacity(args.repeats),
    };
    for _ in 0..args.repeats {
        barrier(state)?;
        cuda::synchronize(args.device());
        let (start, cpu) = (Instant::now(), cpu_seconds());
        for _ in 0..args.steps {
            step(state)?;
        }
        cuda::synchronize(args.device());
        let per_step = 1000.0 / args.steps as f64;
        times.wall.push(start.elapsed().as_secs_f64() * per_step);
        times.cpu.push((cpu_seconds() - cpu) * per_step);
    }
    barrier(state)?;
    Ok(times)
}

fn report(args: &Args, rank: usize, world: usize, times: &Times) {
    let list = |v: &[f64]| {
        v.iter()
            .map(|t| format!("{t:.4}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    if rank == 0 {
        println!(
            "RESULT system={} ms_per_step={:.4} threads={} world={world} all={} cpu={}",
            args.system,
            median(&times.wall),
            tch::get_num_threads(),
            list(&times.wall),
            list(&times.cpu),
        );
    }
    println!("RSS rank={rank} kb={}", peak_rss_kb());
    if args.device().is_cuda() {
        println!("CUDA used_mb={:.0}", cuda::used_mb());
    }
}

fn batch(sizes: &[i64], model: &str) -> (Tensor, Tensor) {
    let n = batch_size(model);
    let x = Tensor::randn([n, sizes[0]], (Kind::Float, Device::Cpu));
    let y = Tensor::randint(sizes[sizes.len() - 1], [n], (Kind::Int64, Device::Cpu));
    (x, y)
}

/// The loop a fabric user writes.
fn run_fabric(args: &Args) -> Result<()> {
    let mut builder = Fabric::builder()
        .accelerator(args.accelerator.as_str())
        .devices(args.devices)
        .precision(args.precision.as_str());
    if args.devices > 1 {
        builder = builder.strategy(fabric::strategy::DdpStrategy::new().overlap(args.overlap));
    }
    // With `ddp`, this starts the ranks under mpirun (each re-runs this
    // program with the same arguments) and does not return here.
    let mut fabric = builder.build_or_launch()?;
    tch::set_num_threads(args.threads);
    let rank = fabric.global_rank();
    tch::manual_seed(42 + rank as i64);
    let sizes = sizes(&args.model)?;
    let mut vs = nn::VarStore::new(Device::Cpu);
    let net = mlp(&vs.root(), sizes);
    let optimizer = nn::Sgd::default().build(&vs, args.lr)?;
    let (model, mut optimizer) = fabric.setup(&mut vs, net, optimizer)?;
    let (x, y) = batch(sizes, &args.model);
    let (x, y) = fabric.to_device((x, y));
    let times = measure(
        args,
        &mut fabric,
        |fabric| {
            optimizer.zero_grad();
            let loss = model.forward(&x).cross_entropy_for_logits(&y);
            fabric.no_backward_sync(args.no_sync, |fabric| fabric.backward(&loss))?;
            optimizer.step()?;
            Ok(())
        },
        |fabric| Ok(fabric.barrier()?),
    )?;
    report(args, rank, fabric.world_size(), &times);
    Ok(())
}

/// The same work by hand with tch only: the floor fabric adds to.
fn run_raw(args: &Args) -> Result<()> {
    if args.devices != 1 {
        bail!("the raw tch loop runs on one process");
    }
    let device = args.device();
    if device.is_cuda() {
        cuda::require()?;
    }
    tch::set_num_threads(args.threads);
    tch::manual_seed(42);
    let sizes = sizes(&args.model)?;
    let mut vs = nn::VarStore::new(device);
    let net = mlp(&vs.root(), sizes);
    let mut optimizer = nn::Sgd::default().build(&vs, args.lr)?;
    let (x, y) = batch(sizes, &args.model);
    let (x, y) = (x.to_device(device), y.to_device(device));
    let times = match args.precision.as_str() {
        "32-true" => measure(
            args,
            &mut (),
            |_| {
                optimizer.zero_grad();
                let loss = net.forward(&x).cross_entropy_for_logits(&y);
                loss.backward();
                optimizer.step();
                Ok(())
            },
            |_| Ok(()),
        )?,
        // Parameters in bf16; the f32 batch is cast on the way in and the
        // logits back to f32 for the loss, every step, as fabric and
        // Lightning do.
        "bf16-true" => {
            vs.bfloat16();
            measure(
                args,
                &mut (),
                |_| {
                    optimizer.zero_grad();
                    let logits = net.forward(&x.to_kind(Kind::BFloat16));
                    let loss = logits.to_kind(Kind::Float).cross_entropy_for_logits(&y);
                    loss.backward();
                    optimizer.step();
                    Ok(())
                },
                |_| Ok(()),
            )?
        }
        // f32 parameters, forward pass under autocast to bf16 (tch has no
        // CPU autocast: this uses fabric's guard, a direct call to ATen's
        // autocast state, on either device), input cast to bf16, logits
        // back to f32.
        "bf16-mixed" => measure(
            args,
            &mut (),
            |_| {
                optimizer.zero_grad();
                let logits = {
                    let _autocast = AutocastGuard::new(device, Kind::BFloat16)?;
                    net.forward(&x.to_kind(Kind::BFloat16))
                };
                let loss = logits.to_kind(Kind::Float).cross_entropy_for_logits(&y);
                loss.backward();
                optimizer.step();
                Ok(())
            },
            |_| Ok(()),
        )?,
        other => bail!("the raw loop runs 32-true, bf16-true or bf16-mixed, not {other}"),
    };
    report(args, 0, 1, &times);
    Ok(())
}

fn main() -> Result<()> {
    let args = parse_args()?;
    match args.system.as_str() {
        "fabric" => run_fabric(&args),
        "raw" => run_raw(&args),
        other => bail!("--system is fabric or raw, not {other:?}"),
    }
}
