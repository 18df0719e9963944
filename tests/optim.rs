//! fabric's optimizers against `torch.optim` (the venv's PyTorch), fused and
//! per-tensor, and inside `Fabric::setup`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use fabric::Fabric;
use fabric::optim::{Adam, AdamW, Optimizer, Sgd};
use tch::{Device, Kind, Tensor, nn};

// libtorch's generator is process-wide: tests that seed it and draw from it
// hold this lock, so that tests running in parallel do not interleave.
use common::rng_lock;

const STEPS: usize = 6;
const SHAPES: [&[i64]; 3] = [&[4, 3], &[3], &[2, 2, 2]];

fn python() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python")
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/optim_reference.py")
}

/// Initial parameters and per-step gradients, seeded.
fn inputs(kind: Kind, seed: i64) -> (Vec<Tensor>, Vec<Vec<Tensor>>) {
    tch::manual_seed(seed);
    let params = SHAPES
        .iter()
        .map(|s| Tensor::randn(*s, (kind, Device::Cpu)))
        .collect();
    let grads = (0..STEPS)
        .map(|_| {
            SHAPES
                .iter()
                .map(|s| Tensor::randn(*s, (kind, Device::Cpu)))
                .collect()
        })
        .collect();
    (params, grads)
}

type Build = Box<dyn Fn(Vec<(String, Tensor)>) -> Optimizer>;

/// The cases: a name, torch.optim's configuration, and ours.
fn cases() -> Vec<(&'static str, serde_json::Value, Build)> {
    let case = |name, config: serde_json::Value, build: Build| (name, config, build);
    vec![
        case(
            "sgd",
            serde_json::json!({"algorithm": "sgd", "kwargs": {"lr": 0.1}}),
            Box::new(|p| Sgd::new(0.1).build_for(p).unwrap()),
        ),
        case(
            "sgd momentum dampening weight_decay",
            serde_json::json!({"algorithm": "sgd",
                "kwargs": {"lr": 0.05, "momentum": 0.9, "dampening": 0.1, "weight_decay": 0.01}}),
            Box::new(|p| {
                Sgd::new(0.05)
                    .momentum(0.9)
                    .dampening(0.1)
                    .weight_decay(0.01)
                    .build_for(p)
                    .unwrap()
            }),
        ),
        case(
            "sgd nesterov maximize",
            serde_json::json!({"algorithm": "sgd",
                "kwargs": {"lr": 0.05, "momentum": 0.8, "nesterov": true, "weight_decay": 0.001, "maximize": true}}),
            Box::new(|p| {
                Sgd::new(0.05)
                    .momentum(0.8)
                    .nesterov(true)
                    .weight_decay(0.001)
                    .maximize(true)
                    .build_for(p)
                    .unwrap()
            }),
        ),
        case(
            "adam weight_decay",
            serde_json::json!({"algorithm": "adam",
                "kwargs": {"lr": 0.01, "betas": [0.8, 0.99], "eps": 1e-6, "weight_decay": 0.1}}),
            Box::new(|p| {
                Adam::new(0.01)
                    .betas(0.8, 0.99)
                    .eps(1e-6)
                    .weight_decay(0.1)
                    .build_for(p)
                    .unwrap()
            }),
        ),
        case(
            "adam amsgrad maximize",
            serde_json::json!({"algorithm": "adam",
                "kwargs": {"lr": 0.02, "amsgrad": true, "maximize": true}}),
            Box::new(|p| {
                Adam::new(0.02)
                    .amsgrad(true)
                    .maximize(true)
                    .build_for(p)
                    .unwrap()
            }),
        ),
        case(
            "adamw",
            serde_json::json!({"algorithm": "adamw", "kwargs": {"lr": 0.01}}),
            Box::new(|p| AdamW::new(0.01).build_for(p).unwrap()),
        ),
        case(
            "adamw amsgrad",
            serde_json::json!({"algorithm": "adamw",
                "kwargs": {"lr": 0.003, "weight_decay": 0.2, "amsgrad": true}}),
            Box::new(|p| {
                AdamW::new(0.003)
                    .weight_decay(0.2)
                    .amsgrad(true)
                    .build_for(p)
                    .unwrap()
            }),
        ),
    ]
}

/// Runs one of ours on the inputs: the gradient of sum(p * g) is g.
fn ours(
    build: &dyn Fn(Vec<(String, Tensor)>) -> Optimizer,
    params: &[Tensor],
    grads: &[Vec<Tensor>],
) -> (Vec<Tensor>, Optimizer) {
    let vars: Vec<Tensor> = params
        .iter()
        .map(|p| p.copy().set_requires_grad(true))
        .collect();
    let named = vars
        .iter()
        .enumerate()
        .map(|(i, v)| (format!("p{i}"), v.shallow_clone()))
        .collect();
    let mut opt = build(named);
    for gs in grads {
        opt.zero_grad();
        let loss = vars
            .iter()
            .zip(gs)
            .map(|(v, g)| (v * g).sum(v.kind()))
            .fold(Tensor::zeros([], (vars[0].kind(), Device::Cpu)), |a, b| {
                a + b
            });
        loss.backward();
        opt.step().unwrap();
    }
    (vars, opt)
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

/// Every case, in f64 and f32, fused and per-tensor, against one run of
/// the reference script (PyTorch's single-tensor implementation, the
/// default on CPU): parameters and every state tensor.
#[test]
fn optimizers_match_torch_optim() {
    let _rng = rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let kinds = [(Kind::Double, 1e-12), (Kind::Float, 2e-6)];
    let cases = cases();
    let mut jobs = Vec::new();
    for (c, (_, config, _)) in cases.iter().enumerate() {
        for (k, (kind, _)) in kinds.iter().enumerate() {
            let (params, grads) = inputs(*kind, 7 + c as i64);
            let mut named: Vec<(String, Tensor)> = params
                .iter()
                .enumerate()
                .map(|(i, p)| (format!("param/{i}"), p.shallow_clone()))
                .collect();
            for (step, gs) in grads.iter().enumerate() {
                for (i, g) in gs.iter().enumerate() {
                    named.push((format!("grad/{step}/{i}"), g.shallow_clone()));
                }
            }
            let input = dir.path().join(format!("in-{c}-{k}.safetensors"));
            let output = dir.path().join(format!("out-{c}-{k}.safetensors"));
            Tensor::write_safetensors(&named, &input).unwrap();
            let mut config = config.clone();
            config["steps"] = STEPS.into();
            jobs.push(serde_json::json!({"input": input, "output": output, "config": config}));
        }
    }
    let result = Command::new(python())
        .arg(script())
        .arg(serde_json::Value::Array(jobs).to_string())
        .output()
        .expect("the venv's python (run ./dev setup)");
    assert!(
        result.status.success(),
        "reference script failed: {}",
        String::from_utf8_lossy(&result.stderr)
    );
    for (c, (name, _, build)) in cases.iter().enumerate() {
        for (k, (kind, tolerance)) in kinds.iter().enumerate() {
            let (params, grads) = inputs(*kind, 7 + c as i64);
            let output = dir.path().join(format!("out-{c}-{k}.safetensors"));
            let expected = Tensor::read_safetensors(&output).unwrap();
            let find = |key: &str| {
                &expected
                    .iter()
                    .find(|(k, _)| k == key)
                    .unwrap_or_else(|| panic!("{name}: the reference lacks {key}"))
                    .1
            };
            for fused in [true, false] {
                let (vars, opt) = ours(&|p| build(p).fused(fused), &params, &grads);
                for (i, var) in vars.iter().enumerate() {
                    let diff = max_diff(var, find(&format!("param/{i}")));
                    assert!(
                        diff <= *tolerance,
                        "{name} {kind:?} fused={fused}: param {i} differs by {diff}"
                    );
                    let state = opt.state(&format!("p{i}")).unwrap();
                    let prefix = format!("state/{i}/");
                    let mut reference_names: Vec<&str> = expected
                        .iter()
                        .filter_map(|(k, _)| k.strip_prefix(&prefix))
                        .collect();
                    reference_names.sort();
                    let ours_names: Vec<&str> = state.keys().map(String::as_str).collect();
                    assert_eq!(ours_names, reference_names, "{name}: state names");
                    for (key, tensor) in state {
                        assert_eq!(
                            tensor.kind(),
                            find(&format!("{prefix}{key}")).kind(),
                            "{name}: {key}"
                        );
                        let diff = max_diff(tensor, find(&format!("{prefix}{key}")));
                        assert!(
                            diff <= tolerance * 10.0,
                            "{name} {kind:?} fused={fused}: state {i}/{key} differs by {diff}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn invalid_settings_are_errors() {
    let _rng = rng_lock();
    let p = || {
        vec![(
            "w".to_owned(),
            Tensor::zeros([2], (Kind::Float, Device::Cpu)),
        )]
    };
    let err = Sgd::new(0.1).nesterov(true).build_for(p()).unwrap_err();
    assert!(
        err.to_string()
            .contains("Nesterov momentum requires a momentum"),
        "{err}"
    );
    let err = Adam::new(-1.0).build_for(p()).unwrap_err();
    assert!(err.to_string().contains("lr >= 0"), "{err}");
    let err = Adam::new(0.1).betas(1.0, 0.9).build_for(p()).unwrap_err();
    assert!(err.to_string().contains("betas"), "{err}");
    let twice = vec![
        (
            "w".to_owned(),
            Tensor::zeros([2], (Kind::Float, Device::Cpu)),
        ),
        (
            "w".to_owned(),
            Tensor::zeros([2], (Kind::Float, Device::Cpu)),
        ),
    ];
    let err = Sgd::new(0.1).build_for(twice).unwrap_err();
    assert!(err.to_string().contains("given twice"), "{err}");
    let ints = vec![(
        "w".to_owned(),
        Tensor::zeros([2], (Kind::Int64, Device::Cpu)),
    )];
    let err = Sgd::new(0.1).build_for(ints).unwrap_err();
    assert!(err.to_string().contains("not a floating-point"), "{err}");
}

#[test]
fn parameters_without_gradients_are_skipped() {
    let _rng = rng_lock();
    let a = Tensor::ones([2], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let b = Tensor::ones([2], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let mut opt = AdamW::new(0.1)
        .build_for(vec![
            ("a".into(), a.shallow_clone()),
            ("b".into(), b.shallow_clone()),
        ])
        .unwrap();
    (&a * 2.0).sum(Kind::Float).backward();
    opt.step().unwrap();
    assert!(opt.state("b").unwrap().is_empty());
    assert_eq!(opt.state("a").unwrap()["step"].double_value(&[]), 1.0);
    assert_eq!(Vec::<f32>::try_from(&b).unwrap(), [1.0, 1.0]);
    assert!(opt.state("c").is_none());
}

#[test]
fn fabric_optimizers_train_through_setup_and_clip() {
    let _rng = rng_lock();
    let mut fabric = Fabric::builder().accelerator("cpu").build().unwrap();
    tch::manual_seed(0);
    let mut vs = nn::VarStore::new(Device::Cpu);
    let net = nn::linear(vs.root() / "l", 3, 1, Default::default());
    let opt = Sgd::new(0.1).momentum(0.9).build(&vs).unwrap();
    let (model, mut opt) = fabric.setup(&mut vs, net, opt).unwrap();
    assert_eq!(opt.parameters().len(), 2);
    assert!(opt.inner_mut().is_none());
    let x = Tensor::randn([64, 3], (Kind::Float, Device::Cpu));
    let y = x.sum_dim_intlist(1, true, Kind::Float);
    let mut last = f64::INFINITY;
    for _ in 0..100 {
        opt.zero_grad();
        let loss = model.forward(&x).mse_loss(&y, tch::Reduction::Mean);
        fabric.backward(&loss).unwrap();
        fabric
            .clip_gradients(&mut opt, fabric::GradClip::norm(10.0))
            .unwrap();
        assert!(opt.step().unwrap());
        last = loss.double_value(&[]);
    }
    assert!(last < 1e-3, "loss {last}");
    opt.set_lr(0.5);
    assert_eq!(opt.optimizer().unwrap().lr(), 0.5);
    let state = opt.optimizer().unwrap().state("l.weight").unwrap();
    assert_eq!(state["momentum_buffer"].size(), [1, 3]);
}

/// Timing of one step, fused against per-tensor, on an MLP's parameters:
/// `cargo test --release --test optim -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement, run on demand"]
fn fused_against_per_tensor_timing() {
    let _rng = rng_lock();
    let layers: [(&str, &[&[i64]]); 2] = [
        (
            "small MLP 32-64-10 (4 tensors)",
            &[&[64, 32], &[64], &[10, 64], &[10]],
        ),
        (
            "MLP 784-1024-1024-10 (6 tensors, 1.8M params)",
            &[
                &[1024, 784],
                &[1024],
                &[1024, 1024],
                &[1024],
                &[10, 1024],
                &[10],
            ],
        ),
    ];
    type Plain = fn(Vec<(String, Tensor)>) -> Optimizer;
    let algorithms: [(&str, Plain); 3] = [
        ("sgd momentum", |p| {
            Sgd::new(0.01).momentum(0.9).build_for(p).unwrap()
        }),
        ("adam", |p| Adam::new(1e-3).build_for(p).unwrap()),
        ("adamw amsgrad", |p| {
            AdamW::new(1e-3).amsgrad(true).build_for(p).unwrap()
        }),
    ];
    for (model, shapes) in layers {
        for (name, build) in algorithms {
            let mut line = format!("{model:<48} {name:<14}");
            for fused in [true, false] {
                let vars: Vec<Tensor> = shapes
                    .iter()
                    .map(|s| Tensor::randn(*s, (Kind::Float, Device::Cpu)).set_requires_grad(true))
                    .collect();
                let named = vars
                    .iter()
                    .enumerate()
                    .map(|(i, v)| (format!("p{i}"), v.shallow_clone()))
                    .collect();
                let mut opt = build(named).fused(fused);
                let loss = vars
                    .iter()
                    .map(|v| v.sum(Kind::Float))
                    .fold(Tensor::zeros([], (Kind::Float, Device::Cpu)), |a, b| a + b);
                loss.backward();
                for _ in 0..20 {
                    opt.step().unwrap();
                }
                // The median of 15 batches of 20 steps: other processes on a
                // shared machine make single batches slow at times.
                let mut batches: Vec<f64> = (0..15)
                    .map(|_| {
                        let start = Instant::now();
                        for _ in 0..20 {
                            opt.step().unwrap();
                        }
                        start.elapsed().as_secs_f64() * 1e6 / 20.0
                    })
                    .collect();
                batches.sort_by(f64::total_cmp);
                let per_step = batches[batches.len() / 2];
                line += &format!(
                    " {}: {per_step:>8.1} us",
                    if fused { "fused" } else { "per-tensor" }
                );
            }
            println!("{line}");
        }
    }
}

/// float32 weights with dynamic loss scaling on the CPU: the path
/// `16-mixed` takes on CUDA, through a precision plugin of our own.
struct ScaledF32;

impl fabric::precision::PrecisionPlugin for ScaledF32 {
    fn loss_scaling(&self) -> Option<fabric::precision::GradScalerConfig> {
        Some(fabric::precision::GradScalerConfig {
            init_scale: 1024.0,
            growth_interval: 2,
            ..Default::default()
        })
    }
}

#[test]
fn loss_scaling_unscales_and_skips_non_finite_steps_with_fabrics_optimizers() {
    let _rng = rng_lock();
    use fabric::checkpoint::State;
    let build = |scaled: bool| {
        let builder = Fabric::builder().accelerator("cpu");
        let builder = if scaled {
            builder.plugin(fabric::Plugin::precision(ScaledF32))
        } else {
            builder
        };
        builder.build().unwrap()
    };
    let run = |fabric: &mut Fabric| {
        tch::manual_seed(5);
        let mut vs = nn::VarStore::new(Device::Cpu);
        let net = nn::linear(vs.root() / "l", 4, 1, Default::default());
        let opt = AdamW::new(0.01).build(&vs).unwrap();
        let (model, mut opt) = fabric.setup(&mut vs, net, opt).unwrap();
        let x = Tensor::randn([16, 4], (Kind::Float, Device::Cpu));
        let mut stepped = Vec::new();
        for step in 0..4 {
            opt.zero_grad();
            let mut loss = model.forward(&x).pow_tensor_scalar(2).mean(None);
            if step == 1 {
                // An overflow: the scaled step is skipped.
                loss *= f64::INFINITY;
            }
            fabric.backward(&loss).unwrap();
            stepped.push(opt.step().unwrap());
        }
        (vs, opt, stepped)
    };

    let mut scaled = build(true);
    let (mut vs, mut opt, stepped) = run(&mut scaled);
    assert_eq!(stepped, [true, false, true, true]);
    // Backed off once (1024 -> 512), then grew after two clean steps.
    assert_eq!(scaled.loss_scale(), Some(1024.0));
    let state = opt.optimizer().unwrap().state("l.weight").unwrap();
    assert_eq!(
        state["step"].double_value(&[]),
        3.0,
        "the skipped step is not counted"
    );

    // The same run without the overflowing step and without scaling gives
    // the same weights: scaling by a power of two and unscaling is exact.
    let mut plain = build(false);
    tch::manual_seed(5);
    let mut plain_vs = nn::VarStore::new(Device::Cpu);
    let net = nn::linear(plain_vs.root() / "l", 4, 1, Default::default());
    let plain_opt = AdamW::new(0.01).build(&plain_vs).unwrap();
    let (model, mut plain_opt) = plain.setup(&mut plain_vs, net, plain_opt).unwrap();
    let x = Tensor::randn([16, 4], (Kind::Float, Device::Cpu));
    for _ in 0..3 {
        plain_opt.zero_grad();
        let loss = model.forward(&x).pow_tensor_scalar(2).mean(None);
        plain.backward(&loss).unwrap();
        plain_opt.step().unwrap();
    }
    for (name, tensor) in vs.variables() {
        assert!(tensor.equal(&plain_vs.variables()[&name]), "{name}");
    }

    // The scaler travels with the checkpoint.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ckpt");
    scaled
        .save(
            &path,
            &State::new()
                .model("model", &mut vs)
                .optimizer("optimizer", &mut opt)
                .grad_scaler("scaler", scaled.grad_scaler()),
        )
        .unwrap();
    let mut fresh = build(true);
    let (mut vs2, mut opt2, _) = run(&mut fresh);
    // A different scale before loading.
    let scaler = fresh.grad_scaler().unwrap();
    let state = scaler.lock().unwrap().state();
    scaler
        .lock()
        .unwrap()
        .load_state(fabric::precision::GradScalerState {
            scale: 8.0,
            ..state
        })
        .unwrap();
    assert_eq!(fresh.loss_scale(), Some(8.0));
    fresh
        .load(
            &path,
            &mut State::new()
                .model("model", &mut vs2)
                .optimizer("optimizer", &mut opt2)
                .grad_scaler("scaler", fresh.grad_scaler()),
        )
        .unwrap();
    assert_eq!(fresh.loss_scale(), Some(1024.0));
}
