//! `strategy = "dp"`: one process, the batch split between replicas of the
//! model, their gradients added up on the first device.
//!
//! `dp` proper needs several CUDA devices (tests/gpu.rs runs it there).
//! Here the same code runs over replicas on the CPU
//! (`fabric::testing::simulate_dp_on_cpu`): the batch is split, each replica runs
//! its chunk, outputs are gathered and gradients reduced exactly as between
//! GPUs, so the results must equal one model trained on the whole batch.
//!
//! Every test holds `common::rng_lock()`: they seed tch's global generator,
//! or draw from it (initialising layers), which would change another's
//! stream.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use fabric::{Fabric, FabricBuilder};
use tch::nn::{self, Module, ModuleT, OptimizerConfig};
use tch::{Device, Kind, Tensor};

fn dp(replicas: usize) -> FabricBuilder {
    fabric::testing::simulate_dp_on_cpu(Fabric::builder().strategy("dp"), replicas)
}

fn mlp(p: &nn::Path) -> nn::Sequential {
    nn::seq()
        .add(nn::linear(p / "l1", 5, 16, Default::default()))
        .add_fn(|x| x.tanh())
        .add(nn::linear(p / "l2", 16, 3, Default::default()))
}

fn data(rows: i64) -> (Tensor, Tensor) {
    let x = Tensor::randn([rows, 5], (Kind::Double, Device::Cpu));
    let y = (&x * 0.5)
        .sum_dim_intlist(1, true, Kind::Double)
        .sin()
        .repeat([1, 3]);
    (x, y)
}

/// Trains the MLP for `steps` SGD steps on one fixed batch; returns the
/// losses and the final parameters by name.
fn train(builder: FabricBuilder, steps: usize, rows: i64) -> (Vec<f64>, Vec<(String, Tensor)>) {
    let mut fabric = builder.precision("64-true").build().unwrap();
    tch::manual_seed(7);
    let (x, y) = data(rows);
    let mut vs = nn::VarStore::new(Device::Cpu);
    let model = fabric.setup_module_with(&mut vs, mlp).unwrap();
    let mut opt = fabric
        .setup_optimizer(nn::Sgd::default().build(&vs, 0.2).unwrap())
        .unwrap();
    let mut losses = Vec::new();
    for _ in 0..steps {
        opt.zero_grad();
        let loss = model.forward(&x).mse_loss(&y, tch::Reduction::Mean);
        fabric.backward(&loss).unwrap();
        opt.step().unwrap();
        losses.push(loss.double_value(&[]));
    }
    let mut params: Vec<_> = vs.variables().into_iter().collect();
    params.sort_by(|a, b| a.0.cmp(&b.0));
    (losses, params)
}

fn max_difference(a: &[(String, Tensor)], b: &[(String, Tensor)]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|((na, ta), (nb, tb))| {
            assert_eq!(na, nb);
            (ta - tb).abs().max().double_value(&[])
        })
        .fold(0.0, f64::max)
}

#[test]
fn dp_trains_as_one_model_on_the_whole_batch() {
    let _rng = common::rng_lock();
    let (single_losses, single) = train(Fabric::builder().accelerator("cpu"), 40, 10);
    for replicas in [2, 3, 4] {
        // 10 rows over 3 replicas: chunks of 4, 4 and 2; over 4: 3, 3, 3, 1.
        let (losses, params) = train(dp(replicas), 40, 10);
        let difference = max_difference(&single, &params);
        assert!(
            difference < 1e-12,
            "{replicas} replicas: parameters differ by {difference}"
        );
        for (a, b) in single_losses.iter().zip(&losses) {
            assert!((a - b).abs() < 1e-12, "losses {a} and {b}");
        }
    }
    assert!(
        single_losses[39] < single_losses[0] * 0.5,
        "training does not converge: {single_losses:?}"
    );
}

/// A linear layer that records which replica ran how many rows.
#[derive(Debug)]
struct Recorder {
    id: usize,
    linear: nn::Linear,
    seen: Arc<Mutex<Vec<(usize, i64)>>>,
}

impl ModuleT for Recorder {
    fn forward_t(&self, xs: &Tensor, _train: bool) -> Tensor {
        self.seen.lock().unwrap().push((self.id, xs.size()[0]));
        self.linear.forward(xs)
    }
}

#[test]
fn dp_splits_each_batch_between_the_replicas() {
    let _rng = common::rng_lock();
    let mut fabric = dp(3).build().unwrap();
    assert_eq!(fabric.strategy().name(), "dp");
    assert_eq!(fabric.world_size(), 1);
    assert_eq!(fabric.devices(), vec![Device::Cpu; 3]);
    let built = AtomicUsize::new(0);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut vs = nn::VarStore::new(Device::Cpu);
    let model = fabric
        .setup_module_with(&mut vs, |p| Recorder {
            id: built.fetch_add(1, Ordering::SeqCst),
            linear: nn::linear(p / "fc", 2, 1, Default::default()),
            seen: Arc::clone(&seen),
        })
        .unwrap();
    assert_eq!(built.load(Ordering::SeqCst), 3, "one model per device");
    assert_eq!(model.devices().len(), 3);

    let out = model.forward(&Tensor::ones([10, 2], (Kind::Float, Device::Cpu)));
    assert_eq!(out.size(), [10, 1]);
    assert_eq!(*seen.lock().unwrap(), [(0, 4), (1, 4), (2, 2)]);

    // Fewer rows than devices: as torch.chunk, fewer chunks.
    seen.lock().unwrap().clear();
    let out = model.forward(&Tensor::ones([2, 2], (Kind::Float, Device::Cpu)));
    assert_eq!(out.size(), [2, 1]);
    assert_eq!(*seen.lock().unwrap(), [(0, 1), (1, 1)]);
}

#[test]
fn dp_outputs_and_accumulated_gradients_equal_one_models() {
    let _rng = common::rng_lock();
    let build = |builder: FabricBuilder| {
        let mut fabric = builder.precision("64-true").build().unwrap();
        tch::manual_seed(11);
        let mut vs = nn::VarStore::new(Device::Cpu);
        let model = fabric.setup_module_with(&mut vs, mlp).unwrap();
        (fabric, vs, model)
    };
    let (mut one, one_vs, one_model) = build(Fabric::builder().accelerator("cpu"));
    let (mut many, many_vs, many_model) = build(dp(3));
    tch::manual_seed(12);
    let (x1, y1) = data(9);
    let (x2, y2) = data(7);

    // Replicas follow the first device's weights, in and out of no_grad.
    tch::no_grad(|| {
        let a = one_model.forward(&x1);
        let b = many_model.forward(&x1);
        assert!(a.allclose(&b, 1e-12, 1e-12, false));
    });

    // Two backward passes without zeroing accumulate: the replicas'
    // gradients are added once and cleared, never counted twice.
    for (x, y) in [(&x1, &y1), (&x2, &y2)] {
        let loss = one_model.forward(x).mse_loss(y, tch::Reduction::Mean);
        one.backward(&loss).unwrap();
        let loss = many_model.forward(x).mse_loss(y, tch::Reduction::Mean);
        many.backward(&loss).unwrap();
    }
    let grads = |vs: &nn::VarStore| {
        let mut grads: Vec<(String, Tensor)> = vs
            .trainable_variables()
            .iter()
            .zip(0..)
            .map(|(t, i)| (i.to_string(), t.grad()))
            .collect();
        grads.sort_by(|a, b| a.0.cmp(&b.0));
        grads
    };
    let difference = max_difference(&grads(&one_vs), &grads(&many_vs));
    assert!(difference < 1e-12, "gradients differ by {difference}");
    let norm: f64 = grads(&many_vs)
        .iter()
        .map(|(_, g)| g.norm().double_value(&[]))
        .sum();
    assert!(norm > 1e-3, "the gradients are not all zero: {norm}");
}

#[test]
fn dp_with_bf16_mixed_autocasts_every_replica() {
    let _rng = common::rng_lock();
    let run = |builder: FabricBuilder| {
        let mut fabric = builder.precision("bf16-mixed").build().unwrap();
        tch::manual_seed(5);
        let x = Tensor::randn([12, 5], (Kind::Float, Device::Cpu));
        let y = x.sum_dim_intlist(1, true, Kind::Float).repeat([1, 3]);
        let mut vs = nn::VarStore::new(Device::Cpu);
        let (model, mut opt) = fabric
            .setup_with(&mut vs, mlp, |vs| nn::Sgd::default().build(vs, 0.05))
            .unwrap();
        let mut losses = Vec::new();
        for _ in 0..30 {
            opt.zero_grad();
            let out = model.forward(&x);
            assert_eq!(out.kind(), Kind::Float, "outputs come back f32");
            let loss = out.mse_loss(&y, tch::Reduction::Mean);
            fabric.backward(&loss).unwrap();
            opt.step().unwrap();
            losses.push(loss.double_value(&[]));
        }
        losses
    };
    let single = run(Fabric::builder().accelerator("cpu"));
    let split = run(dp(2));
    assert!(split[29] < split[0] * 0.5, "no convergence: {split:?}");
    // bf16 matmuls over 6 rows instead of 12 round differently; the runs
    // stay close.
    for (a, b) in single.iter().zip(&split) {
        assert!((a - b).abs() <= 0.05 * a.abs().max(0.1), "{a} vs {b}");
    }
}

#[test]
fn dp_needs_cuda_devices() {
    let _rng = common::rng_lock();
    if tch::Cuda::device_count() > 0 {
        return; // the error is about machines without CUDA
    }
    let err = Fabric::builder()
        .strategy("dp")
        .devices(2)
        .build()
        .unwrap_err();
    let message = err.to_string();
    assert!(message.contains("\"dp\""), "{message}");
    assert!(message.contains("CUDA devices"), "{message}");
    assert!(message.contains("strategy = \"ddp\""), "{message}");
    // Named explicitly, the CPU is rejected with the attribute's message.
    let err = Fabric::builder()
        .accelerator("cpu")
        .strategy("dp")
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("strategy = \"ddp\""), "{err}");
}

#[test]
fn dp_asks_for_a_build_function() {
    let _rng = common::rng_lock();
    let mut fabric = dp(2).build().unwrap();
    let mut vs = nn::VarStore::new(Device::Cpu);
    let model = mlp(&vs.root());
    let err = fabric.setup_module(&mut vs, model).unwrap_err();
    assert!(err.to_string().contains("setup_module_with"), "{err}");
    // One device: nothing to replicate, a built model is fine.
    let mut fabric = dp(1).build().unwrap();
    let mut vs = nn::VarStore::new(Device::Cpu);
    let model = mlp(&vs.root());
    fabric.setup_module(&mut vs, model).unwrap();
}

#[test]
fn dp_rejects_a_build_function_that_builds_different_models() {
    let _rng = common::rng_lock();
    let mut fabric = dp(2).build().unwrap();
    let calls = AtomicUsize::new(0);
    let mut vs = nn::VarStore::new(Device::Cpu);
    let err = fabric
        .setup_module_with(&mut vs, |p| {
            let width = if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                4
            } else {
                5
            };
            nn::linear(p / "fc", 3, width, Default::default())
        })
        .unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("same variables on every call"),
        "{message}"
    );
    assert!(message.contains("fc.weight [4, 3]"), "{message}");
    assert!(message.contains("fc.weight [5, 3]"), "{message}");
}

/// `out = x * w` when the chunk's first value is positive, else `x`: a
/// parameter some chunks do not use.
#[derive(Debug)]
struct Gate {
    w: Tensor,
}

impl ModuleT for Gate {
    fn forward_t(&self, xs: &Tensor, _train: bool) -> Tensor {
        if xs.double_value(&[0, 0]) > 0.0 {
            xs * &self.w
        } else {
            xs.shallow_clone()
        }
    }
}

#[test]
fn dp_takes_gradients_of_parameters_only_some_replicas_used() {
    let _rng = common::rng_lock();
    let mut fabric = dp(2).precision("64-true").build().unwrap();
    let mut vs = nn::VarStore::new(Device::Cpu);
    let model = fabric
        .setup_module_with(&mut vs, |p| Gate {
            w: p.ones("w", &[3]),
        })
        .unwrap();
    let w = vs.trainable_variables()[0].shallow_clone();
    // Chunk 0 (rows 0-1) starts negative: only the replica uses `w`.
    let x = Tensor::from_slice(&[-1.0f64, 2., 3., 4., 5., 6., 1., 2., 3., 4., 5., 6.]).view([4, 3]);
    for step in 0..3 {
        let loss = model.forward(&x).sum(tch::Kind::Double);
        fabric.backward(&loss).unwrap();
        let grad = w.grad();
        assert!(
            grad.defined(),
            "step {step}: the replica's gradient reached the first device"
        );
        let expected = x.narrow(0, 2, 2).sum_dim_intlist(0, false, Kind::Double);
        assert!(
            grad.allclose(&expected, 1e-12, 1e-12, false),
            "step {step}: {grad:?}"
        );
        // As a tch optimizer's zero_grad: the gradient goes back to none.
        tch::no_grad(|| fabric::testing::clear_grad(&w).unwrap());
    }
}

#[test]
fn dp_allows_several_forward_passes_before_one_backward() {
    let _rng = common::rng_lock();
    let run = |builder: FabricBuilder| {
        let mut fabric = builder.precision("64-true").build().unwrap();
        tch::manual_seed(21);
        let (a, y) = data(8);
        let b = Tensor::randn([8, 5], (Kind::Double, Device::Cpu));
        let mut vs = nn::VarStore::new(Device::Cpu);
        let (model, mut opt) = fabric
            .setup_with(&mut vs, mlp, |vs| nn::Sgd::default().build(vs, 0.1))
            .unwrap();
        for _ in 0..5 {
            opt.zero_grad();
            // A siamese loss; in between, an evaluation forward without
            // gradients, as for pseudo-labels.
            let target = tch::no_grad(|| model.forward(&b));
            let loss = model.forward(&a).mse_loss(&y, tch::Reduction::Mean)
                + model
                    .forward(&b)
                    .mse_loss(&target.detach(), tch::Reduction::Mean);
            fabric.backward(&loss).unwrap();
            opt.step().unwrap();
        }
        let mut params: Vec<_> = vs.variables().into_iter().collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        params
    };
    let single = run(Fabric::builder().accelerator("cpu"));
    let split = run(dp(3));
    let difference = max_difference(&single, &split);
    assert!(difference < 1e-12, "parameters differ by {difference}");
}

#[test]
fn dp_follows_freezing_and_unfreezing_after_setup() {
    let _rng = common::rng_lock();
    let build = |builder: FabricBuilder| {
        let mut fabric = builder.precision("64-true").build().unwrap();
        tch::manual_seed(31);
        let mut vs = nn::VarStore::new(Device::Cpu);
        let model = fabric.setup_module_with(&mut vs, mlp).unwrap();
        (fabric, vs, model)
    };
    let (mut one, mut one_vs, one_model) = build(Fabric::builder().accelerator("cpu"));
    let (mut many, mut many_vs, many_model) = build(dp(2));
    tch::manual_seed(32);
    let (x, y) = data(6);
    for vs in [&mut one_vs, &mut many_vs] {
        vs.freeze();
    }
    // Frozen: no parameter requires a gradient, so the loss cannot be
    // backpropagated, on one device or split.
    let loss = many_model.forward(&x).mse_loss(&y, tch::Reduction::Mean);
    assert!(!loss.requires_grad());
    for vs in [&mut one_vs, &mut many_vs] {
        vs.unfreeze();
    }
    let loss = one_model.forward(&x).mse_loss(&y, tch::Reduction::Mean);
    one.backward(&loss).unwrap();
    let loss = many_model.forward(&x).mse_loss(&y, tch::Reduction::Mean);
    many.backward(&loss).unwrap();
    let grads = |vs: &nn::VarStore| {
        let mut g: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .map(|(n, t)| (n, t.grad()))
            .collect();
        g.sort_by(|a, b| a.0.cmp(&b.0));
        g
    };
    let difference = max_difference(&grads(&one_vs), &grads(&many_vs));
    assert!(
        difference < 1e-12,
        "after unfreezing, gradients differ by {difference}"
    );
}

#[test]
fn dp_gathers_scalar_outputs_into_a_vector() {
    let _rng = common::rng_lock();
    let mut fabric = dp(2).build().unwrap();
    let mut vs = nn::VarStore::new(Device::Cpu);
    let model = fabric
        .setup_module_with(&mut vs, |p| {
            let w = p.ones("w", &[2]);
            nn::func_t(move |xs, _| (xs * &w).sum(Kind::Float))
        })
        .unwrap();
    let out = model.forward(&Tensor::ones([4, 2], (Kind::Float, Device::Cpu)));
    // One value per chunk, as DataParallel gathers scalars.
    assert_eq!(out.size(), [2]);
    assert_eq!(Vec::<f32>::try_from(&out).unwrap(), [4.0, 4.0]);
}

#[test]
fn dp_replicas_take_the_weights_of_every_optimizer_step() {
    let _rng = common::rng_lock();
    let run = |builder: FabricBuilder| {
        let mut fabric = builder.precision("64-true").build().unwrap();
        tch::manual_seed(41);
        let (x, y) = data(9);
        let mut vs = nn::VarStore::new(Device::Cpu);
        let (model, mut opt) = fabric
            .setup_with(&mut vs, mlp, |vs| nn::Sgd::default().build(vs, 0.1))
            .unwrap();
        let mut metrics = Vec::new();
        for _ in 0..4 {
            opt.zero_grad();
            let loss = model.forward(&x).mse_loss(&y, tch::Reduction::Mean);
            fabric.backward(&loss).unwrap();
            // A metric between backward and step: a forward that must not
            // leave the replicas behind the step that follows.
            metrics.push(
                tch::no_grad(|| model.forward(&x))
                    .sum(Kind::Double)
                    .double_value(&[]),
            );
            opt.step().unwrap();
        }
        metrics
    };
    let single = run(Fabric::builder().accelerator("cpu"));
    let split = run(dp(3));
    for (a, b) in single.iter().zip(&split) {
        assert!((a - b).abs() < 1e-10, "{a} vs {b}: {single:?} {split:?}");
    }
}

fn bn_net(p: &nn::Path) -> nn::SequentialT {
    nn::seq_t()
        .add(nn::linear(p / "l1", 5, 8, Default::default()))
        .add(nn::batch_norm1d(p / "bn", 8, Default::default()))
        .add_fn(|x| x.relu())
}

#[test]
fn dp_evaluates_with_the_first_devices_batch_norm_statistics() {
    let _rng = common::rng_lock();
    let mut fabric = dp(2).precision("64-true").build().unwrap();
    tch::manual_seed(51);
    let mut vs = nn::VarStore::new(Device::Cpu);
    let model = fabric.setup_module_with(&mut vs, bn_net).unwrap();
    // Recalibration: training-mode forwards without gradients update each
    // replica's statistics from its own chunk.
    for shift in [0.0, 3.0, -2.0] {
        let x = Tensor::randn([10, 5], (Kind::Double, Device::Cpu)) + shift;
        let _ = tch::no_grad(|| model.forward(&x));
    }
    model.eval();
    let x = Tensor::randn([10, 5], (Kind::Double, Device::Cpu));
    let split = tch::no_grad(|| model.forward(&x));
    // Every chunk normalised with the first device's statistics.
    let alone = tch::no_grad(|| model.inner().forward_t(&x, false));
    assert!(split.allclose(&alone, 1e-12, 1e-12, false));
}

#[test]
fn dp_keeps_a_models_graph_across_another_models_backward() {
    let _rng = common::rng_lock();
    let mut fabric = dp(2).precision("64-true").build().unwrap();
    tch::manual_seed(61);
    let mut vs_a = nn::VarStore::new(Device::Cpu);
    let mut vs_b = nn::VarStore::new(Device::Cpu);
    let (a, mut opt_a) = fabric
        .setup_with(&mut vs_a, mlp, |vs| nn::Sgd::default().build(vs, 0.1))
        .unwrap();
    let (b, _opt_b) = fabric
        .setup_with(&mut vs_b, mlp, |vs| nn::Sgd::default().build(vs, 0.1))
        .unwrap();
    let (x, y) = data(6);
    for _ in 0..2 {
        opt_a.zero_grad();
        let first = a.forward(&x);
        // Another model's backward in between, as in GAN or actor-critic
        // loops.
        let other = b.forward(&x).mse_loss(&y, tch::Reduction::Mean);
        fabric.backward(&other).unwrap();
        let second = a.forward(&(&x * 2.0));
        let loss = (first - second).square().mean(Kind::Double);
        fabric.backward(&loss).unwrap();
        opt_a.step().unwrap();
    }
}
