//! Checks that need NVIDIA GPUs, ignored elsewhere. On a GPU machine:
//!
//! ```sh
//! cargo test --release --test gpu -- --ignored --test-threads=1 --nocapture
//! ```
//!
//! With one GPU, `dp` runs two replicas on it and NCCL a world of one; with
//! two or more, `dp` spans the GPUs and `ddp` runs two ranks over NCCL.

mod common;

use fabric::data::{DataLoader, TensorDataset};
use fabric::{Fabric, FabricBuilder, ReduceOp};
use tch::nn::{self, OptimizerConfig};
use tch::{Device, Kind, Tensor};

use common::Scenario;

fn gpus() -> usize {
    // Building a Fabric loads libtorch's CUDA backend first.
    let fabric = Fabric::builder().accelerator("cuda").devices(1).build();
    assert!(
        fabric.is_ok(),
        "no CUDA device found through fabric: {:?}",
        fabric.err()
    );
    tch::Cuda::device_count() as usize
}

fn mlp(p: &nn::Path) -> nn::Sequential {
    nn::seq()
        .add(nn::linear(p / "l1", 32, 64, Default::default()))
        .add_fn(|x| x.relu())
        .add(nn::linear(p / "l2", 64, 4, Default::default()))
}

/// Trains the MLP for 30 steps on one batch; returns the losses and the
/// parameters (on the CPU, sorted by name).
fn train(builder: FabricBuilder, precision: &str) -> (Vec<f64>, Vec<Tensor>) {
    let mut fabric = builder.precision(precision).build().unwrap();
    tch::manual_seed(3);
    let x = Tensor::randn([48, 32], (Kind::Float, Device::Cpu));
    let y = x.narrow(1, 0, 4).sin();
    let (x, y) = fabric.to_device((x, y));
    let mut vs = nn::VarStore::new(Device::Cpu);
    let model = fabric.setup_module_with(&mut vs, mlp).unwrap();
    let mut opt = fabric
        .setup_optimizer(nn::Sgd::default().build(&vs, 0.1).unwrap())
        .unwrap();
    let mut losses = Vec::new();
    for _ in 0..30 {
        opt.zero_grad();
        let loss = model.forward(&x).mse_loss(&y, tch::Reduction::Mean);
        fabric.backward(&loss).unwrap();
        opt.step().unwrap();
        losses.push(loss.double_value(&[]));
    }
    let mut params: Vec<_> = vs.variables().into_iter().collect();
    params.sort_by(|a, b| a.0.cmp(&b.0));
    (
        losses,
        params
            .into_iter()
            .map(|(_, t)| t.to_device(Device::Cpu))
            .collect(),
    )
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn cuda_trains_in_every_precision() {
    let _rng = common::rng_lock();
    assert!(gpus() >= 1);
    for precision in ["32-true", "bf16-mixed", "16-mixed", "bf16-true"] {
        let (losses, _) = train(Fabric::builder().accelerator("cuda").devices(1), precision);
        println!("{precision}: loss {:.4} -> {:.4}", losses[0], losses[29]);
        assert!(losses[29] < losses[0] * 0.5, "{precision}: {losses:?}");
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn dp_over_gpus_trains_as_one_gpu() {
    let _rng = common::rng_lock();
    let count = gpus();
    let devices: Vec<Device> = if count >= 2 {
        (0..count).map(Device::Cuda).collect()
    } else {
        vec![Device::Cuda(0); 2]
    };
    println!("dp over {devices:?}");
    let (single, single_params) =
        train(Fabric::builder().accelerator("cuda").devices(1), "64-true");
    let dp = fabric::testing::simulate_dp(Fabric::builder().strategy("dp"), devices);
    let (split, split_params) = train(dp, "64-true");
    for (a, b) in single.iter().zip(&split) {
        assert!((a - b).abs() < 1e-9, "{a} vs {b}");
    }
    for (a, b) in single_params.iter().zip(&split_params) {
        let d = (a - b).abs().max().double_value(&[]);
        assert!(d < 1e-9, "parameters differ by {d}");
    }
    if count >= 2 {
        // Through the options, as a user writes it.
        let fabric = Fabric::builder()
            .strategy("dp")
            .devices(-1)
            .build()
            .unwrap();
        assert_eq!(fabric.devices().len(), count);
        let (losses, _) = train(Fabric::builder().strategy("dp").devices(-1), "bf16-mixed");
        assert!(losses[29] < losses[0] * 0.5, "{losses:?}");
    }
}

/// Whether this process is the child `name` started by its parent test; a
/// child test run directly (`--ignored` runs them all) passes without doing
/// anything.
/// What runs on the GPU around the training step: worker loading with
/// pinned memory (the batches of `num_workers(0)`, arriving on the GPU) and
/// clipping over parameter groups (`_foreach_norm` on CUDA tensors: the
/// norm and the clipped gradients of the same step on the CPU).
#[test]
#[ignore = "needs an NVIDIA GPU"]
fn pinned_worker_loading_and_grouped_clipping_on_cuda() {
    let _rng = common::rng_lock();
    gpus();
    let fabric = Fabric::builder()
        .accelerator("cuda")
        .devices(1)
        .build()
        .unwrap();
    tch::manual_seed(5);
    let x = Tensor::randn([100, 32], (Kind::Float, Device::Cpu));
    let y = Tensor::arange(100, (Kind::Int64, Device::Cpu));
    let epoch = |workers: usize, pin: bool| -> Vec<(Tensor, Tensor)> {
        let data = TensorDataset::new((x.shallow_clone(), y.shallow_clone())).unwrap();
        let loader = DataLoader::new(data)
            .batch_size(16)
            .num_workers(workers)
            .pin_memory(pin);
        let mut loader = fabric.setup_dataloaders(loader).unwrap();
        let mut batches = Vec::new();
        for batch in &mut loader {
            let (bx, by) = batch.unwrap();
            assert!(bx.device().is_cuda() && by.device().is_cuda());
            batches.push((bx.to_device(Device::Cpu), by.to_device(Device::Cpu)));
        }
        batches
    };
    let expected = epoch(0, false);
    assert_eq!(expected.len(), 7);
    for (workers, pin) in [(0, true), (2, true), (3, false)] {
        let got = epoch(workers, pin);
        assert_eq!(got.len(), expected.len(), "{workers} workers, pin {pin}");
        for ((gx, gy), (ex, ey)) in got.iter().zip(&expected) {
            assert!(gx.equal(ex) && gy.equal(ey), "{workers} workers, pin {pin}");
        }
    }

    let clipped = |accelerator: &str| -> (f64, Vec<Tensor>) {
        let mut fabric = Fabric::builder()
            .accelerator(accelerator)
            .devices(1)
            .build()
            .unwrap();
        tch::manual_seed(3);
        let x = Tensor::randn([48, 32], (Kind::Float, Device::Cpu));
        let mut vs = nn::VarStore::new(Device::Cpu);
        let model = fabric.setup_module_with(&mut vs, mlp).unwrap();
        let opt = fabric::optim::AdamW::new(1e-3)
            .weight_decay(0.1)
            .group(fabric::optim::ParamGroup::no_weight_decay())
            .build(&vs)
            .unwrap();
        let mut opt = fabric.setup_optimizer(opt).unwrap();
        let x = fabric.to_device(x);
        let loss = model.forward(&x).square().sum(Kind::Float) * 100.0;
        fabric.backward(&loss).unwrap();
        let norm = fabric
            .clip_gradients(&mut opt, fabric::GradClip::norm(1.0))
            .unwrap()
            .expect("a norm");
        let mut params: Vec<_> = vs.variables().into_iter().collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let grads = params
            .iter()
            .map(|(_, t)| t.grad().to_device(Device::Cpu))
            .collect();
        (norm, grads)
    };
    let (cpu_norm, cpu_grads) = clipped("cpu");
    let (cuda_norm, cuda_grads) = clipped("cuda");
    assert!(cpu_norm > 1.0, "the step must clip: norm {cpu_norm}");
    assert!(
        ((cuda_norm - cpu_norm) / cpu_norm).abs() < 1e-4,
        "norm on CUDA {cuda_norm}, on the CPU {cpu_norm}"
    );
    for (g, e) in cuda_grads.iter().zip(&cpu_grads) {
        assert!(g.allclose(e, 1e-4, 1e-6, false), "clipped gradients differ");
    }
}

fn is_child(name: &str) -> bool {
    let child = std::env::var("FABRIC_GPU_CHILD").as_deref() == Ok(name);
    if !child {
        println!("nothing to do: run by its parent test, with FABRIC_GPU_CHILD={name}");
    }
    child
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn nccl_collectives_on_one_gpu() {
    assert!(gpus() >= 1);
    // In a child: it joins an MPI world of its own.
    let text = Scenario::direct("nccl_child")
        .env("FABRIC_GPU_CHILD", "nccl")
        .arg("--ignored")
        .run()
        .assert_success()
        .text;
    assert!(text.contains("1 passed"), "{text}");
}

#[test]
#[ignore = "run by nccl_collectives_on_one_gpu"]
fn nccl_child() {
    if !is_child("nccl") {
        return;
    }
    // MPI forms the world first: without NCCL (or a GPU) this fails at
    // NCCL, past MPI's initialisation, which the GPU bundle's CPU-side
    // check relies on.
    fabric::testing::nccl_single_rank_check(0).unwrap();
    let (major, minor, patch) = fabric::collectives::nccl_version().unwrap();
    println!("NCCL {major}.{minor}.{patch}");
}

#[test]
#[ignore = "needs two NVIDIA GPUs"]
fn ddp_over_two_gpus_averages_with_nccl() {
    if gpus() < 2 {
        println!("skipped: ddp over NCCL needs two GPUs (NCCL refuses two ranks on one)");
        return;
    }
    let text = Scenario::direct("ddp_child")
        .env("FABRIC_GPU_CHILD", "ddp")
        .arg("--ignored")
        .run()
        .assert_success()
        .text;
    assert_eq!(text.matches("rank done").count(), 2, "{text}");
}

#[test]
#[ignore = "run by ddp_over_two_gpus_averages_with_nccl"]
fn ddp_child() {
    if !is_child("ddp") {
        return;
    }
    // Started plainly, this re-runs the binary under mpirun, 2 ranks.
    let mut fabric = Fabric::builder()
        .accelerator("cuda")
        .devices(2)
        .strategy("ddp")
        .build_or_launch()
        .unwrap();
    let rank = fabric.global_rank();
    assert_eq!(fabric.device(), Device::Cuda(rank));
    tch::manual_seed(rank as i64);
    let x = Tensor::randn([64, 32], (Kind::Float, Device::Cpu));
    let y = x.narrow(1, 0, 4).sin();
    let mut vs = nn::VarStore::new(Device::Cpu);
    let model = fabric.setup_module_with(&mut vs, mlp).unwrap();
    let mut opt = fabric
        .setup_optimizer(nn::Sgd::default().build(&vs, 0.1).unwrap())
        .unwrap();
    let mut loader = fabric
        .setup_dataloaders(DataLoader::new(TensorDataset::new((x, y)).unwrap()).batch_size(16))
        .unwrap();
    for batch in &mut loader {
        let (x, y) = batch.unwrap();
        opt.zero_grad();
        let loss = model.forward(&x).mse_loss(&y, tch::Reduction::Mean);
        fabric.backward(&loss).unwrap();
        opt.step().unwrap();
    }
    // Parameters equal on both ranks: the maximum and minimum agree.
    for p in vs.trainable_variables() {
        let max = fabric.all_reduce(&p, ReduceOp::Max).unwrap();
        let min = fabric.all_reduce(&p, ReduceOp::Min).unwrap();
        assert!(max.equal(&min), "ranks disagree");
        assert!(p.device().is_cuda());
    }
    let gathered = fabric
        .all_gather(&Tensor::from(rank as i64).to_device(fabric.device()))
        .unwrap();
    assert_eq!(
        Vec::<i64>::try_from(gathered.to_device(Device::Cpu)).unwrap(),
        [0, 1]
    );
    println!("rank done");
}
