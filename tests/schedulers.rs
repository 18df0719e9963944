//! Learning-rate schedulers, parameter groups and clipping over groups,
//! against the venv's PyTorch (`tests/python/scheduler_reference.py`), and
//! both through a checkpoint round trip.

mod common;

use std::path::Path;
use std::process::Command;

use fabric::checkpoint::State;
use fabric::optim::{AdamW, Anneal, LrScheduler, OneCycle, Optimizer, ParamGroup, Schedule, Sgd};
use fabric::{Fabric, FabricModule, FabricOptimizer, GradClip};
use serde_json::{Value, json};
use tch::{Device, Kind, Tensor, nn};

// libtorch's generator is process-wide: tests that seed it, or draw from it
// (initialising layers), hold this lock.
use common::rng_lock;

/// Runs the reference script on `jobs`; one result per job.
fn reference(jobs: &[Value]) -> Vec<Value> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("results.json");
    let result = Command::new(root.join(".venv/bin/python"))
        .arg(root.join("tests/python/scheduler_reference.py"))
        .arg(Value::Array(jobs.to_vec()).to_string())
        .arg(&out)
        .output()
        .expect("the venv's python (run ./dev setup)");
    assert!(
        result.status.success(),
        "reference script failed: {}",
        String::from_utf8_lossy(&result.stderr)
    );
    serde_json::from_slice(&std::fs::read(out).unwrap()).unwrap()
}

fn floats(bits: &Value) -> Vec<f64> {
    bits.as_array()
        .unwrap()
        .iter()
        .map(|b| f64::from_bits(b.as_u64().unwrap()))
        .collect()
}

/// An optimizer of two zero parameters, each in its own group with its
/// learning rate of `lrs`: SGD with momentum 0.9, or AdamW.
fn two_groups(sgd: bool, lrs: [f64; 2]) -> Optimizer {
    let params: Vec<(String, Tensor)> = (0..2)
        .map(|i| {
            (
                format!("p{i}"),
                Tensor::zeros([1], (Kind::Float, Device::Cpu)),
            )
        })
        .collect();
    let group = ParamGroup::names("g1", ["p1"]).lr(lrs[1]);
    let settings = if sgd {
        Sgd::new(lrs[0]).momentum(0.9).group(group)
    } else {
        AdamW::new(lrs[0]).group(group)
    };
    settings.build_for(params).unwrap()
}

/// The cases: PyTorch's scheduler and ours, on SGD (momentum 0.9) or AdamW.
fn cases() -> Vec<(&'static str, bool, Value, Schedule, usize)> {
    vec![
        (
            "StepLR",
            true,
            json!({"kind": "step", "step_size": 3, "gamma": 0.5}),
            Schedule::step_lr(3, 0.5),
            12,
        ),
        (
            "LinearLR up",
            true,
            json!({"kind": "linear", "start_factor": 0.25, "end_factor": 1.0, "total_iters": 5}),
            Schedule::linear(0.25, 1.0, 5),
            10,
        ),
        (
            "LinearLR down",
            false,
            json!({"kind": "linear", "start_factor": 1.0, "end_factor": 0.1, "total_iters": 7}),
            Schedule::linear(1.0, 0.1, 7),
            12,
        ),
        (
            "CosineAnnealingLR",
            true,
            json!({"kind": "cosine_annealing", "t_max": 10, "eta_min": 1e-4}),
            Schedule::cosine_annealing(10, 1e-4),
            35,
        ),
        (
            "LambdaLR 0.95^step",
            false,
            json!({"kind": "lambda_pow", "base": 0.95}),
            Schedule::lambda(|e| 0.95f64.powf(e as f64)),
            15,
        ),
        (
            "warm-up cosine",
            false,
            json!({"kind": "warmup_cosine", "warmup_steps": 5, "total_steps": 30, "min_lr_ratio": 0.0}),
            Schedule::warmup_cosine(5, 30, 0.0),
            35,
        ),
        (
            "warm-up cosine min",
            true,
            json!({"kind": "warmup_cosine", "warmup_steps": 4, "total_steps": 20, "min_lr_ratio": 0.1}),
            Schedule::warmup_cosine(4, 20, 0.1),
            22,
        ),
        (
            "OneCycleLR",
            true,
            json!({"kind": "one_cycle", "max_lr": 0.5, "total_steps": 20, "pct_start": 0.3, "anneal": "cos", "three_phase": false, "div_factor": 25.0, "final_div_factor": 1e4}),
            OneCycle::new(0.5, 20).into(),
            21,
        ),
        (
            "OneCycleLR per group",
            false,
            json!({"kind": "one_cycle", "max_lr": [0.5, 0.02], "total_steps": 20, "pct_start": 0.3, "anneal": "cos", "three_phase": false, "div_factor": 25.0, "final_div_factor": 1e4}),
            OneCycle::per_group([0.5, 0.02], 20).into(),
            20,
        ),
        (
            "OneCycleLR three phases linear",
            false,
            json!({"kind": "one_cycle", "max_lr": 0.01, "total_steps": 30, "pct_start": 0.25, "anneal": "linear", "three_phase": true, "div_factor": 10.0, "final_div_factor": 100.0}),
            OneCycle::new(0.01, 30)
                .pct_start(0.25)
                .anneal(Anneal::Linear)
                .three_phase(true)
                .div_factor(10.0)
                .final_div_factor(100.0)
                .into(),
            30,
        ),
    ]
}

/// Every scheduler's learning rates (and OneCycle's momentums), over two
/// groups of their own learning rates, equal PyTorch's bit for bit at
/// construction and after every step; OneCycle stepped past its total is an
/// error where PyTorch raises.
#[test]
fn schedulers_match_torch_lr_scheduler_bit_for_bit() {
    let lrs = [0.1, 0.03];
    let cases = cases();
    let jobs: Vec<Value> = cases
        .iter()
        .map(|(_, sgd, spec, _, steps)| {
            json!({"job": "schedule", "optimizer": if *sgd {"sgd"} else {"adamw"}, "lrs": lrs, "steps": steps, "scheduler": spec})
        })
        .collect();
    let results = reference(&jobs);
    for ((name, sgd, _, schedule, steps), expected) in cases.into_iter().zip(results) {
        let mut opt = two_groups(sgd, lrs);
        let mut scheduler = LrScheduler::new(&mut opt, schedule).unwrap();
        let expected_lrs = expected["lrs"].as_array().unwrap();
        let expected_momentums = expected["momentums"].as_array().unwrap();
        let error_at = expected["error_at"].as_u64().map(|s| s as usize);
        let check = |step: usize, scheduler: &LrScheduler, opt: &Optimizer| {
            let want = floats(&expected_lrs[step]);
            let got = scheduler.last_lr().to_vec();
            assert_eq!(
                got.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                want.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                "{name} step {step}: ours {got:?}, torch {want:?}"
            );
            assert_eq!(opt.lrs(), got, "{name} step {step}: the optimizer's");
            let momentums: Vec<f64> = opt.groups().iter().map(|g| g.momentum()).collect();
            assert_eq!(
                momentums,
                floats(&expected_momentums[step]),
                "{name} step {step}: momentums"
            );
        };
        check(0, &scheduler, &opt);
        for step in 0..steps {
            let result = scheduler.step(&mut opt);
            if Some(step) == error_at {
                let error = result.unwrap_err().to_string();
                assert!(error.contains("one-cycle schedule has"), "{name}: {error}");
                assert_eq!(scheduler.last_step(), step as u64, "nothing changes");
                break;
            }
            result.unwrap();
            check(step + 1, &scheduler, &opt);
        }
        assert_eq!(
            error_at.is_some(),
            name == "OneCycleLR",
            "{name}: {error_at:?}"
        );
    }
}

/// A small transformer-like model: weights, biases, a norm.
fn model(vs: &nn::VarStore) -> nn::Sequential {
    let root = vs.root();
    nn::seq()
        .add(nn::linear(&root / "body", 3, 4, Default::default()))
        .add(nn::layer_norm(&root / "norm", vec![4], Default::default()))
        .add_fn(|x| x.relu())
        .add(nn::linear(&root / "head", 4, 2, Default::default()))
}

fn transformer_recipe(vs: &nn::VarStore) -> Optimizer {
    AdamW::new(0.01)
        .weight_decay(0.1)
        .group(ParamGroup::no_weight_decay())
        .group(
            ParamGroup::names("head", ["head.weight"])
                .lr(0.03)
                .weight_decay(0.3),
        )
        .build(vs)
        .unwrap()
}

/// AdamW with three parameter groups (the default, no decay on biases and
/// norms, a head with its own learning rate and decay), with and without a
/// warm-up cosine schedule, fused and per-tensor, in f64 and f32, equals
/// torch.optim.AdamW over the same groups: parameters and every state.
#[test]
fn parameter_groups_match_torch_adamw_with_the_same_groups() {
    let _rng = rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let steps = 6;
    let kinds = [(Kind::Double, 1e-12), (Kind::Float, 2e-6)];
    let schedules = [
        None,
        Some(
            json!({"kind": "warmup_cosine", "warmup_steps": 2, "total_steps": 6, "min_lr_ratio": 0.0}),
        ),
    ];
    let mut jobs = Vec::new();
    let mut runs = Vec::new();
    for (k, (kind, tolerance)) in kinds.iter().enumerate() {
        for (s, schedule) in schedules.iter().enumerate() {
            tch::manual_seed(3 + k as i64);
            let mut vs = nn::VarStore::new(Device::Cpu);
            let _ = model(&vs);
            vs.set_kind(*kind);
            for (_, mut var) in vs.variables() {
                tch::no_grad(|| var.copy_(&var.randn_like()));
            }
            let opt = transformer_recipe(&vs);
            let names = opt.parameter_names().to_vec();
            let variables = vs.variables();
            let grads: Vec<Vec<Tensor>> = (0..steps)
                .map(|_| names.iter().map(|n| variables[n].randn_like()).collect())
                .collect();
            let mut saved: Vec<(String, Tensor)> = names
                .iter()
                .enumerate()
                .map(|(i, n)| (format!("param/{i}"), variables[n].copy()))
                .collect();
            for (step, gs) in grads.iter().enumerate() {
                for (i, g) in gs.iter().enumerate() {
                    saved.push((format!("grad/{step}/{i}"), g.shallow_clone()));
                }
            }
            let input = dir.path().join(format!("in-{k}-{s}.safetensors"));
            let output = dir.path().join(format!("out-{k}-{s}.safetensors"));
            Tensor::write_safetensors(&saved, &input).unwrap();
            let groups: Vec<Value> = opt
                .groups()
                .iter()
                .map(|g| {
                    let params: Vec<usize> = g
                        .parameters()
                        .iter()
                        .map(|p| names.iter().position(|n| n == p).unwrap())
                        .collect();
                    json!({"params": params, "lr": g.lr(), "weight_decay": g.weight_decay()})
                })
                .collect();
            assert_eq!(groups.len(), 3);
            jobs.push(json!({"job": "groups", "input": input, "output": output, "groups": groups,
                "kwargs": {"lr": 0.01, "weight_decay": 0.1}, "steps": steps, "scheduler": schedule}));
            runs.push((*kind, *tolerance, s, saved, output));
        }
    }
    reference(&jobs);
    for (kind, tolerance, s, saved, output) in runs {
        let expected = Tensor::read_safetensors(&output).unwrap();
        let find = |key: &str| {
            &expected
                .iter()
                .find(|(k, _)| k == key)
                .unwrap_or_else(|| panic!("reference lacks {key}"))
                .1
        };
        for fused in [true, false] {
            let mut vs = nn::VarStore::new(Device::Cpu);
            let _ = model(&vs);
            vs.set_kind(kind);
            let opt = transformer_recipe(&vs).fused(fused);
            let names = opt.parameter_names().to_vec();
            let variables = vs.variables();
            for (i, n) in names.iter().enumerate() {
                let initial = &saved
                    .iter()
                    .find(|(k, _)| *k == format!("param/{i}"))
                    .unwrap()
                    .1;
                tch::no_grad(|| variables[n].shallow_clone().copy_(initial));
            }
            let mut opt = opt;
            let mut scheduler = (s == 1)
                .then(|| LrScheduler::new(&mut opt, Schedule::warmup_cosine(2, 6, 0.0)).unwrap());
            for step in 0..steps {
                for (i, n) in names.iter().enumerate() {
                    let grad = &saved
                        .iter()
                        .find(|(k, _)| *k == format!("grad/{step}/{i}"))
                        .unwrap()
                        .1;
                    let var = &variables[n];
                    let mut g = var.grad();
                    if !g.defined() {
                        (var * grad).sum(kind).backward();
                    } else {
                        tch::no_grad(|| g.copy_(grad));
                    }
                }
                opt.step().unwrap();
                if let Some(scheduler) = &mut scheduler {
                    scheduler.step(&mut opt).unwrap();
                }
            }
            for (i, n) in names.iter().enumerate() {
                let diff = max_diff(&variables[n], find(&format!("param/{i}")));
                assert!(
                    diff <= tolerance,
                    "{n} {kind:?} fused={fused} schedule={s}: differs by {diff}"
                );
                for (key, state) in opt.state(n).unwrap() {
                    let diff = max_diff(state, find(&format!("state/{i}/{key}")));
                    assert!(
                        diff <= tolerance * 10.0,
                        "{n}/{key} {kind:?} fused={fused}: differs by {diff}"
                    );
                }
            }
        }
    }
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

type Run = (
    nn::VarStore,
    FabricModule<nn::Sequential>,
    FabricOptimizer,
    LrScheduler,
);

/// A fresh run: model, grouped optimizer set up by fabric, scheduler.
fn fresh(fabric: &mut Fabric, seed: i64, schedule: &Schedule) -> Run {
    tch::manual_seed(seed);
    let mut vs = nn::VarStore::new(Device::Cpu);
    let net = model(&vs);
    let opt = transformer_recipe(&vs);
    let (net, mut opt) = fabric.setup(&mut vs, net, opt).unwrap();
    let scheduler = LrScheduler::new(&mut opt, schedule.clone()).unwrap();
    (vs, net, opt, scheduler)
}

/// Trains `run` for `steps`, from `start` (the steps already taken),
/// clipping the gradients.
fn train(fabric: &mut Fabric, run: &mut Run, start: usize, steps: usize) {
    let (_, net, opt, scheduler) = run;
    for step in start..start + steps {
        let x = Tensor::arange(24, (Kind::Float, Device::Cpu))
            .reshape([8, 3])
            .sin()
            * (step as f64 + 1.0);
        opt.zero_grad();
        let loss = net.forward(&x).pow_tensor_scalar(2).mean(None);
        fabric.backward(&loss).unwrap();
        fabric.clip_gradients(opt, GradClip::norm(0.5)).unwrap();
        opt.step().unwrap();
        scheduler.step(opt).unwrap();
    }
}

/// N steps, save, load into a run in another state, M steps equals N + M
/// steps bit for bit: parameters, optimizer state, every group's learning
/// rate and momentum, the scheduler's position, for a recursive schedule
/// (cosine) and one that cycles the momentum (one-cycle).
#[test]
fn schedulers_and_groups_resume_exactly_from_a_checkpoint() {
    let _rng = rng_lock();
    let (n, m) = (4, 5);
    for schedule in [
        Schedule::cosine_annealing(6, 1e-4),
        OneCycle::new(0.05, 9).into(),
        Schedule::warmup_cosine(3, 9, 0.1),
    ] {
        let mut fabric = Fabric::builder().accelerator("cpu").build().unwrap();
        let mut whole = fresh(&mut fabric, 11, &schedule);
        train(&mut fabric, &mut whole, 0, n + m);
        let (vs, _, opt, scheduler) = &whole;

        let mut first = fresh(&mut fabric, 11, &schedule);
        train(&mut fabric, &mut first, 0, n);
        let (vs_a, _, opt_a, sched_a) = &mut first;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ckpt");
        fabric
            .save(
                &path,
                &State::new()
                    .model("model", vs_a)
                    .optimizer("optimizer", opt_a)
                    .scheduler("scheduler", sched_a),
            )
            .unwrap();
        // Another run, two steps in: its state differs everywhere.
        let mut second = fresh(&mut fabric, 12, &schedule);
        train(&mut fabric, &mut second, 0, 2);
        let (vs_b, _, opt_b, sched_b) = &mut second;
        let report = fabric
            .load(
                &path,
                &mut State::new()
                    .model("model", vs_b)
                    .optimizer("optimizer", opt_b)
                    .scheduler("scheduler", sched_b),
            )
            .unwrap();
        assert!(report.is_complete(), "{report}");
        assert_eq!(sched_b.last_step(), n as u64);
        train(&mut fabric, &mut second, n, m);
        let (vs_b, _, opt_b, sched_b) = &second;

        let name = schedule.name();
        for (var, tensor) in vs.variables() {
            assert!(tensor.equal(&vs_b.variables()[&var]), "{name}: {var}");
        }
        let (one, two) = (opt.optimizer().unwrap(), opt_b.optimizer().unwrap());
        assert_eq!(
            one.groups(),
            two.groups(),
            "{name}: groups, learning rates and momentums"
        );
        assert_eq!(scheduler.last_lr(), sched_b.last_lr(), "{name}");
        assert_eq!(scheduler.last_step(), sched_b.last_step(), "{name}");
        for param in one.parameter_names() {
            for (key, state) in one.state(param).unwrap() {
                assert!(
                    state.equal(&two.state(param).unwrap()[key]),
                    "{name}: {param}/{key}"
                );
            }
        }
    }
}

/// Clipping the gradients of an optimizer with three groups, of float32
/// and float64 parameters, equals torch.nn.utils.clip_grad_norm_ over all
/// of them: the total norm and every clipped gradient, bit for bit, for the
/// 2-, 1- and infinity-norms, clipped or within bounds.
#[test]
fn clipping_over_groups_matches_clip_grad_norm_over_all_parameters() {
    let _rng = rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let mut fabric = Fabric::builder().accelerator("cpu").build().unwrap();
    let cases = [(0.5, 2.0), (1e6, 2.0), (0.3, 1.0), (0.2, f64::INFINITY)];
    let kinds = [
        Kind::Float,
        Kind::Float,
        Kind::Double,
        Kind::Float,
        Kind::Double,
    ];
    let shapes: [&[i64]; 5] = [&[5, 3], &[5], &[7], &[2, 2, 3], &[4, 4]];
    let mut jobs = Vec::new();
    let mut inputs = Vec::new();
    for (c, (max_norm, norm_type)) in cases.iter().enumerate() {
        tch::manual_seed(20 + c as i64);
        let grads: Vec<Tensor> = shapes
            .iter()
            .zip(kinds)
            .map(|(s, k)| Tensor::randn(*s, (k, Device::Cpu)))
            .collect();
        let named: Vec<(String, Tensor)> = grads
            .iter()
            .enumerate()
            .map(|(i, g)| (format!("grad/{i}"), g.shallow_clone()))
            .collect();
        let input = dir.path().join(format!("clip-{c}.safetensors"));
        let output = dir.path().join(format!("clipped-{c}.safetensors"));
        Tensor::write_safetensors(&named, &input).unwrap();
        let norm_type = if norm_type.is_infinite() {
            json!("inf")
        } else {
            json!(norm_type)
        };
        jobs.push(json!({"job": "clip", "input": input, "output": output, "max_norm": max_norm, "norm_type": norm_type}));
        inputs.push((grads, output));
    }
    // json!("inf") is a string; the script takes float("inf") from it.
    let results = reference(&jobs);
    for ((grads, output), ((max_norm, norm_type), result)) in
        inputs.into_iter().zip(cases.iter().zip(results))
    {
        let params: Vec<(String, Tensor)> = grads
            .iter()
            .enumerate()
            .map(|(i, g)| {
                let p = g.zeros_like().set_requires_grad(true);
                fabric_set_grad(&p, g);
                (format!("p{i}"), p)
            })
            .collect();
        let opt = Sgd::new(0.1)
            .group(ParamGroup::names("a", ["p1", "p2"]).lr(0.2))
            .group(ParamGroup::names("b", ["p4"]).weight_decay(0.1))
            .build_for(
                params
                    .iter()
                    .map(|(n, p)| (n.clone(), p.shallow_clone()))
                    .collect(),
            )
            .unwrap();
        assert_eq!(opt.groups().len(), 3);
        let mut opt = fabric.setup_optimizer(opt).unwrap();
        let clip = GradClip::Norm {
            max_norm: *max_norm,
            norm_type: *norm_type,
            error_if_nonfinite: true,
        };
        let total = fabric.clip_gradients(&mut opt, clip).unwrap().unwrap();
        let want = f64::from_bits(result["total"].as_u64().unwrap());
        assert_eq!(
            total.to_bits(),
            want.to_bits(),
            "max_norm {max_norm} norm {norm_type}: {total} vs torch {want}"
        );
        let expected = Tensor::read_safetensors(&output).unwrap();
        for (i, (_, p)) in params.iter().enumerate() {
            let reference = &expected
                .iter()
                .find(|(k, _)| *k == format!("grad/{i}"))
                .unwrap()
                .1;
            assert_eq!(p.grad().kind(), reference.kind());
            assert!(
                p.grad().equal(reference),
                "max_norm {max_norm} norm {norm_type}: gradient {i}"
            );
        }
    }
}

/// Gives `p` the gradient `g` (a copy) through autograd.
fn fabric_set_grad(p: &Tensor, g: &Tensor) {
    (p * g).sum(p.kind()).backward();
}

/// float16 gradients whose norm is past float16's range (65504) have their
/// norm computed in float32: finite, and the clipped gradients are finite.
#[test]
fn the_norm_of_half_gradients_is_accumulated_in_float32() {
    let _rng = rng_lock();
    let mut fabric = Fabric::builder().accelerator("cpu").build().unwrap();
    let p = Tensor::zeros([100_000], (Kind::Half, Device::Cpu)).set_requires_grad(true);
    let g = Tensor::full([100_000], 300.0, (Kind::Half, Device::Cpu));
    fabric_set_grad(&p, &g);
    let opt = Sgd::new(0.1)
        .build_for(vec![("p".into(), p.shallow_clone())])
        .unwrap();
    let mut opt = fabric.setup_optimizer(opt).unwrap();
    let total = fabric
        .clip_gradients(&mut opt, GradClip::norm(1.0))
        .unwrap()
        .unwrap();
    let exact = 300.0 * 100_000f64.sqrt();
    assert!((total - exact).abs() / exact < 1e-3, "{total} vs {exact}");
    let clipped = p.grad().to_kind(Kind::Float);
    let norm = clipped.norm().double_value(&[]);
    assert!((norm - 1.0).abs() < 1e-2, "{norm}");
}

#[test]
fn bad_groups_and_schedules_are_clear_errors() {
    let params = || {
        ["a.weight", "a.bias", "b.weight"]
            .into_iter()
            .map(|n| {
                (
                    n.to_owned(),
                    Tensor::zeros([2, 2], (Kind::Float, Device::Cpu)),
                )
            })
            .collect::<Vec<_>>()
    };
    let error = |r: fabric::Result<Optimizer>| r.unwrap_err().to_string();
    let e = error(
        AdamW::new(0.1)
            .group(ParamGroup::new("empty", |n, _| n.starts_with("c.")))
            .build_for(params()),
    );
    assert!(e.contains("parameter group `empty` selects no parameter; the parameters are: a.weight, a.bias, b.weight"), "{e}");
    let e = error(
        AdamW::new(0.1)
            .group(ParamGroup::new("x", |n, _| n.starts_with("a.")))
            .group(ParamGroup::names("y", ["a.bias"]))
            .build_for(params()),
    );
    assert!(
        e.contains("the parameter `a.bias` is in the parameter groups `x` and `y`"),
        "{e}"
    );
    let e = error(
        AdamW::new(0.1)
            .group(ParamGroup::names("x", ["a.bias"]))
            .group(ParamGroup::names("x", ["b.weight"]))
            .build_for(params()),
    );
    assert!(e.contains("two parameter groups are named `x`"), "{e}");
    let e = error(
        AdamW::new(0.1)
            .group(ParamGroup::names("default", ["a.bias"]))
            .build_for(params()),
    );
    assert!(e.contains("cannot be named `default`"), "{e}");
    let e = error(
        AdamW::new(0.1)
            .group(ParamGroup::names("x", ["a.bias", "c.bias"]))
            .build_for(params()),
    );
    assert!(
        e.contains("names `c.bias`, which is not a parameter"),
        "{e}"
    );
    let e = error(
        AdamW::new(0.1)
            .group(ParamGroup::names("x", ["a.bias"]).lr(-1.0))
            .build_for(params()),
    );
    assert!(e.contains("parameter group `x`: Adam needs lr >= 0"), "{e}");

    let mut opt = AdamW::new(0.1).build_for(params()).unwrap();
    let schedule_error =
        |opt: &mut Optimizer, s: Schedule| LrScheduler::new(opt, s).unwrap_err().to_string();
    let e = schedule_error(&mut opt, Schedule::warmup_cosine(20, 10, 0.0));
    assert!(
        e.contains("warmup_steps <= total_steps")
            && e.contains("warmup_steps = 20, total_steps = 10"),
        "{e}"
    );
    let e = schedule_error(&mut opt, Schedule::cosine_annealing(0, 0.0));
    assert!(e.contains("t_max >= 1"), "{e}");
    let e = schedule_error(&mut opt, Schedule::linear(0.0, 1.0, 5));
    assert!(e.contains("0 < start_factor <= 1"), "{e}");
    let e = schedule_error(&mut opt, OneCycle::new(0.1, 3).into());
    assert!(e.contains("has a phase of no steps"), "{e}");
    let e = schedule_error(&mut opt, Schedule::step_lr(0, 0.5));
    assert!(e.contains("step_size >= 1"), "{e}");
    // One peak per group: `opt` has one group.
    let e = schedule_error(&mut opt, OneCycle::per_group([0.1, 0.2], 20).into());
    assert!(
        e.contains("has 2 peak learning rates") && e.contains("the optimizer 1 parameter groups"),
        "{e}"
    );
    let e = schedule_error(&mut opt, OneCycle::per_group([-0.1], 20).into());
    assert!(
        e.contains("a finite max_lr > 0 for each parameter group"),
        "{e}"
    );
    let e = schedule_error(&mut opt, OneCycle::per_group([], 20).into());
    assert!(
        e.contains("a finite max_lr > 0 for each parameter group"),
        "{e}"
    );
    let mut lambda = LrScheduler::new(
        &mut opt,
        Schedule::lambda(|e| if e < 2 { 1.0 } else { f64::NAN }),
    )
    .unwrap();
    lambda.step(&mut opt).unwrap();
    let e = lambda.step(&mut opt).unwrap_err().to_string();
    assert!(e.contains("the learning rate NaN is not accepted"), "{e}");

    // A scheduler stepped with an optimizer of another number of groups.
    let mut grouped = AdamW::new(0.1)
        .group(ParamGroup::names("x", ["a.bias"]))
        .build_for(params())
        .unwrap();
    let mut scheduler = LrScheduler::new(&mut opt, Schedule::step_lr(2, 0.5)).unwrap();
    let e = scheduler.step(&mut grouped).unwrap_err().to_string();
    assert!(
        e.contains("made for an optimizer of 1 parameter groups, and this one has 2"),
        "{e}"
    );

    // tch's optimizer has no readable learning rate.
    let mut fabric = Fabric::builder().accelerator("cpu").build().unwrap();
    let vs = nn::VarStore::new(Device::Cpu);
    {
        // Initialising draws from the generator the other tests seed.
        let _rng = rng_lock();
        let _ = nn::linear(vs.root(), 2, 2, Default::default());
    }
    let tch_opt = nn::OptimizerConfig::build(nn::Sgd::default(), &vs, 0.1).unwrap();
    let mut tch_opt = fabric.setup_optimizer(tch_opt).unwrap();
    let e = LrScheduler::new(&mut tch_opt, Schedule::step_lr(2, 0.5))
        .unwrap_err()
        .to_string();
    assert!(e.contains("build it with `fabric::optim`"), "{e}");
}

/// A checkpoint's scheduler of another kind, or of other groups, and an
/// optimizer of other groups are errors naming the problem; nothing loads.
#[test]
fn checkpoints_of_other_schedules_or_groups_are_refused() {
    let _rng = rng_lock();
    let mut fabric = Fabric::builder().accelerator("cpu").build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ckpt");
    let mut run = fresh(&mut fabric, 1, &Schedule::cosine_annealing(10, 0.0));
    train(&mut fabric, &mut run, 0, 2);
    let (_, _, opt, scheduler) = &mut run;
    fabric
        .save(
            &path,
            &State::new()
                .optimizer("optimizer", opt)
                .scheduler("scheduler", scheduler),
        )
        .unwrap();

    let (_vs, _net, mut opt_b, mut step_lr) = fresh(&mut fabric, 1, &Schedule::step_lr(2, 0.5));
    let before = opt_b.optimizer().unwrap().groups().to_vec();
    let e = fabric
        .load(
            &path,
            &mut State::new()
                .optimizer("optimizer", &mut opt_b)
                .scheduler("scheduler", &mut step_lr),
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("scheduler `scheduler` is a cosine_annealing schedule in the checkpoint and a step schedule in the state"), "{e}");
    assert_eq!(
        opt_b.optimizer().unwrap().groups(),
        before,
        "nothing was loaded"
    );
    assert_eq!(step_lr.last_step(), 0);

    // The same parameters in other groups.
    let vs_c = nn::VarStore::new(Device::Cpu);
    let _ = model(&vs_c);
    let mut opt_c = AdamW::new(0.01)
        .group(ParamGroup::no_weight_decay())
        .build(&vs_c)
        .unwrap();
    let e = fabric
        .load(&path, &mut State::new().optimizer("optimizer", &mut opt_c))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("its parameter groups are default [body.weight]; no_decay [body.bias, head.bias, norm.bias, norm.weight]; head [head.weight] in the checkpoint and default [body.weight, head.weight]; no_decay [body.bias, head.bias, norm.bias, norm.weight] in the state"),
        "{e}"
    );
}
