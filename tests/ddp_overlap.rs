//! `ddp`'s reduction overlapped with the backward pass, gradient
//! accumulation and per-model `no_backward_sync`, and ranks that set up
//! different models (issue 14), in real two-rank runs of `mpirun`.
//!
//! Each test runs this binary under `mpirun` with `FABRIC_SCENARIO` naming
//! the test (`common::Scenario`); in the ranks, the test body runs its
//! scenario and writes its result to a file the test reads.

mod common;

use fabric::optim::{LrScheduler, Schedule, Sgd};
use fabric::strategy::DdpStrategy;
use fabric::{Fabric, ReduceOp};
use tch::nn::{self, Module, ModuleT};
use tch::{Device, Kind, Tensor};

use common::{Scenario, in_scenario, report};

/// A variant of a test's scenario, for its ranks.
const MODE: &str = "FABRIC_DDP_MODE";

fn mode_here() -> String {
    std::env::var(MODE).unwrap_or_default()
}

/// Runs test `test` of this binary in two ranks of `mpirun`, with
/// `FABRIC_DDP_MODE=mode`.
fn two_ranks(test: &str, mode: &str) -> common::Run {
    Scenario::mpirun(test, 2).env(MODE, mode).run()
}

/// The variables of `vs`, sorted by name, with their gradients (NaN for
/// none), as the bits of each number.
fn bits(vs: &nn::VarStore) -> Vec<u64> {
    let mut variables: Vec<_> = vs.variables().into_iter().collect();
    variables.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = Vec::new();
    for (_, t) in variables {
        let values = t.to_kind(Kind::Double).view([-1]);
        out.extend(
            Vec::<f64>::try_from(&values)
                .unwrap()
                .iter()
                .map(|v| v.to_bits()),
        );
        let grad = t.grad();
        if grad.defined() {
            let grad = grad.to_kind(Kind::Double).view([-1]);
            out.extend(
                Vec::<f64>::try_from(&grad)
                    .unwrap()
                    .iter()
                    .map(|v| v.to_bits()),
            );
        } else {
            out.push(f64::NAN.to_bits());
        }
    }
    out
}

// ---- overlapped against not overlapped -------------------------------------

/// An MLP of `layers` layers, with a large first layer (over 1 MiB: a
/// bucket of its own) and an unused head.
struct Mlp {
    layers: Vec<nn::Linear>,
    unused: Option<nn::Linear>,
}

impl std::fmt::Debug for Mlp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Mlp")
    }
}

impl ModuleT for Mlp {
    fn forward_t(&self, xs: &Tensor, _train: bool) -> Tensor {
        let mut h = xs.shallow_clone();
        for (i, layer) in self.layers.iter().enumerate() {
            h = layer.forward(&h);
            if i + 1 < self.layers.len() {
                h = h.tanh();
            }
        }
        h
    }
}

fn mlp(vs: &nn::VarStore, widths: &[i64]) -> Mlp {
    let layers = widths
        .windows(2)
        .enumerate()
        .map(|(i, w)| {
            nn::linear(
                vs.root() / format!("layer{i}"),
                w[0],
                w[1],
                Default::default(),
            )
        })
        .collect();
    let last = *widths.last().unwrap();
    Mlp {
        layers,
        unused: Some(nn::linear(
            vs.root() / "unused",
            last,
            1,
            Default::default(),
        )),
    }
}

/// Three steps of two models (an encoder, whose output the head takes) with
/// buckets of 16 KiB, each step with two backward passes (the second
/// through the head only), rank `rank`'s data; the head's extra layer is
/// used on rank 0 only, and from step 1 on; returns the variables and
/// gradients after each backward pass.
///
/// Two traps for the overlap: the head's `shift` is added through a view
/// to a tensor of the same shape, so that its gradient (adopted by the
/// accumulator) is a view of a gradient the rest of the backward pass
/// still reads; and the head is cast to f64 and back after it was set up,
/// which gives its parameters new gradient accumulators.
fn overlap_run(overlap: bool) -> fabric::Result<Vec<u64>> {
    let mut fabric = Fabric::builder()
        .accelerator("cpu")
        .strategy(
            DdpStrategy::new()
                .overlap(overlap)
                .bucket_cap_mb(1.0 / 64.0)
                .find_unused_parameters(true),
        )
        .build()?;
    let rank = fabric.global_rank();
    fabric.seed_everything(7);
    let mut encoder_vs = nn::VarStore::new(Device::Cpu);
    let encoder = mlp(&encoder_vs, &[600, 512, 64, 32]);
    let mut head_vs = nn::VarStore::new(Device::Cpu);
    let head = mlp(&head_vs, &[32, 48, 40, 48, 8]);
    let shift = head_vs.root().randn_standard("shift", &[16 * 8]);
    let encoder_opt = Sgd::new(0.05).momentum(0.9).build(&encoder_vs)?;
    let head_opt = Sgd::new(0.05).build(&head_vs)?;
    let (encoder, mut encoder_opt) = fabric.setup(&mut encoder_vs, encoder, encoder_opt)?;
    let (head, mut head_opt) = fabric.setup(&mut head_vs, head, head_opt)?;
    head_vs.double();
    head_vs.float();
    let mut out = Vec::new();
    for step in 0..3 {
        let xs = Tensor::randn([16, 600], (Kind::Float, Device::Cpu)) * (rank as f64 + 1.0);
        encoder_opt.zero_grad();
        head_opt.zero_grad();
        let features = encoder.forward(&xs);
        let output = head.forward(&features) + shift.view([16, 8]);
        let mut loss = output.square().mean(Kind::Float);
        if rank == 0 && step > 0 {
            let unused = head.inner().unused.as_ref().unwrap();
            loss += unused.forward(&output).mean(Kind::Float);
        }
        fabric.backward(&loss)?;
        out.extend(bits(&encoder_vs));
        out.extend(bits(&head_vs));
        let loss = head.forward(&features.detach()).mean(Kind::Float);
        fabric.backward(&loss)?;
        out.extend(bits(&head_vs));
        encoder_opt.step()?;
        head_opt.step()?;
    }
    out.extend(bits(&encoder_vs));
    out.extend(bits(&head_vs));
    Ok(out)
}

#[test]
fn the_overlapped_reduction_equals_the_reduction_after_backward_to_the_bit() {
    let test = "the_overlapped_reduction_equals_the_reduction_after_backward_to_the_bit";
    if in_scenario(test) {
        let overlapped = overlap_run(true).unwrap();
        let after = overlap_run(false).unwrap();
        assert_eq!(overlapped.len(), after.len());
        let differing = overlapped
            .iter()
            .zip(&after)
            .filter(|(a, b)| a != b)
            .count();
        let rank = fabric_rank();
        report(rank, &format!("differing={differing} of {}", after.len()));
        return;
    }
    let common::Run { text, results, .. } = two_ranks(test, "").assert_success();
    for result in &results {
        assert!(result.starts_with("differing=0 of "), "{result}\n{text}");
    }
}

/// This process's rank under `mpirun`.
fn fabric_rank() -> usize {
    std::env::var("OMPI_COMM_WORLD_RANK")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

// ---- gradient accumulation ------------------------------------------------

const K: i64 = 4;
const MICRO: i64 = 3;
const STEPS: i64 = 3;

fn accumulation_model(vs: &nn::VarStore) -> Mlp {
    let layers = vec![
        nn::linear(vs.root() / "layer0", 5, 7, Default::default()),
        nn::linear(vs.root() / "layer1", 7, 2, Default::default()),
    ];
    Mlp {
        layers,
        unused: None,
    }
}

/// Step `step`'s whole batch: `K * MICRO` rows for each of two ranks.
fn accumulation_batch(step: i64) -> (Tensor, Tensor) {
    let rows = K * MICRO * 2;
    let options = (Kind::Double, Device::Cpu);
    let start = (step * rows * 5) as f64;
    let xs = (Tensor::arange_start(start, start + (rows * 5) as f64, options) * 0.37)
        .sin()
        .view([rows, 5]);
    let ys = (Tensor::arange_start(start, start + (rows * 2) as f64, options) * 0.53)
        .cos()
        .view([rows, 2]);
    (xs, ys)
}

/// Trains `STEPS` optimizer steps, each over `micro_batches` micro-batches
/// of this rank's part of the batch, with a scheduler stepped once per
/// optimizer step; returns the variables, the learning rates, and whether
/// the ranks' gradients differed before the last micro-batch of each step.
fn accumulate(
    fabric: &mut Fabric,
    micro_batches: i64,
) -> fabric::Result<(Vec<f64>, Vec<f64>, bool)> {
    let ranks = fabric.world_size() as i64;
    let rank = fabric.global_rank() as i64;
    fabric.seed_everything(3);
    let mut vs = nn::VarStore::new(Device::Cpu);
    let model = accumulation_model(&vs);
    let opt = Sgd::new(0.1).momentum(0.5).build(&vs)?;
    let (model, mut opt) = fabric.setup(&mut vs, model, opt)?;
    let mut scheduler = LrScheduler::new(&mut opt, Schedule::step_lr(1, 0.5))?;
    let mut lrs = Vec::new();
    let mut local_before_sync = true;
    for step in 0..STEPS {
        let (xs, ys) = accumulation_batch(step);
        let rows = xs.size()[0] / ranks;
        let xs = xs.narrow(0, rank * rows, rows);
        let ys = ys.narrow(0, rank * rows, rows);
        let micro = rows / micro_batches;
        opt.zero_grad();
        for m in 0..micro_batches {
            let x = xs.narrow(0, m * micro, micro);
            let y = ys.narrow(0, m * micro, micro);
            let loss = model.forward(&x).mse_loss(&y, tch::Reduction::Mean) / micro_batches as f64;
            let last = m + 1 == micro_batches;
            fabric.no_backward_sync_for(&model, !last, |f| f.backward(&loss))??;
            if m + 2 == micro_batches && ranks > 1 {
                // Not averaged yet: the ranks' gradients are their own.
                let grad = vs.variables()["layer0.weight"].grad();
                let max = fabric.all_reduce(&grad, ReduceOp::Max)?;
                let min = fabric.all_reduce(&grad, ReduceOp::Min)?;
                local_before_sync &= !max.equal(&grad) || !min.equal(&grad);
            }
        }
        opt.step()?;
        scheduler.step(&mut opt)?;
        lrs.extend(scheduler.last_lr());
    }
    let mut variables: Vec<_> = vs.variables().into_iter().collect();
    variables.sort_by(|a, b| a.0.cmp(&b.0));
    let values = variables
        .iter()
        .flat_map(|(_, t)| Vec::<f64>::try_from(t.view([-1])).unwrap())
        .collect();
    Ok((values, lrs, local_before_sync))
}

fn encode(values: &[f64]) -> String {
    values
        .iter()
        .map(|v| format!("{:016x}", v.to_bits()))
        .collect::<Vec<_>>()
        .join(",")
}

fn decode(text: &str) -> Vec<f64> {
    text.split(',')
        .map(|h| f64::from_bits(u64::from_str_radix(h, 16).unwrap()))
        .collect()
}

#[test]
fn accumulating_four_micro_batches_under_ddp_equals_one_step_on_the_four_times_batch() {
    let test = "accumulating_four_micro_batches_under_ddp_equals_one_step_on_the_four_times_batch";
    if in_scenario(test) {
        let overlap = mode_here() != "after";
        let mut fabric = Fabric::builder()
            .accelerator("cpu")
            .precision("64-true")
            .strategy(DdpStrategy::new().overlap(overlap))
            .build()
            .unwrap();
        let (values, lrs, local) = accumulate(&mut fabric, K).unwrap();
        let rank = fabric.global_rank();
        report(
            rank,
            &format!("{};{};{local}", encode(&values), encode(&lrs)),
        );
        return;
    }
    for mode in ["overlapped", "after"] {
        let common::Run { text, results, .. } = two_ranks(test, mode).assert_success();
        assert_eq!(results[0], results[1], "the ranks differ ({mode})");
        let parts: Vec<&str> = results[0].split(';').collect();
        assert_eq!(parts.len(), 3, "{text}");
        assert_eq!(
            parts[2], "true",
            "gradients were averaged before the last micro-batch"
        );
        let mut one = Fabric::builder()
            .accelerator("cpu")
            .precision("64-true")
            .build()
            .unwrap();
        let (expected, expected_lrs, _) = {
            // Seeded, then initialised: no other test may draw in between.
            let _rng = common::rng_lock();
            accumulate(&mut one, 1).unwrap()
        };
        let got = decode(parts[0]);
        assert_eq!(got.len(), expected.len());
        for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
            assert!(
                (g - e).abs() < 1e-10,
                "variable {i} ({mode}): ddp {g}, one process {e}"
            );
        }
        // The scheduler stepped once per optimizer step: 0.1 halved 3 times.
        assert_eq!(decode(parts[1]), expected_lrs);
        assert_eq!(expected_lrs, [0.05, 0.025, 0.0125]);
    }
}

// ---- per-model no_backward_sync ---------------------------------------------

#[test]
fn no_backward_sync_for_one_model_leaves_the_other_averaged() {
    let test = "no_backward_sync_for_one_model_leaves_the_other_averaged";
    if in_scenario(test) {
        let overlap = mode_here() != "after";
        let mut fabric = Fabric::builder()
            .accelerator("cpu")
            .strategy(DdpStrategy::new().overlap(overlap))
            .build()
            .unwrap();
        let rank = fabric.global_rank();
        let mut a_vs = nn::VarStore::new(Device::Cpu);
        let a = nn::linear(a_vs.root() / "a", 3, 3, Default::default());
        let mut b_vs = nn::VarStore::new(Device::Cpu);
        let b = nn::linear(b_vs.root() / "b", 3, 1, Default::default());
        let a = fabric.setup_module(&mut a_vs, a).unwrap();
        let b = fabric.setup_module(&mut b_vs, b).unwrap();
        let xs = Tensor::from_slice(&[1.0f32, 2.0, 3.0]).view([1, 3]) * (rank as f64 + 1.0);
        let same = |f: &Fabric, t: &Tensor| {
            let max = f.all_reduce(t, ReduceOp::Max).unwrap();
            let min = f.all_reduce(t, ReduceOp::Min).unwrap();
            max.equal(t) && min.equal(t)
        };
        let a_grad = || a_vs.variables()["a.weight"].grad();
        let b_grad = || b_vs.variables()["b.weight"].grad();
        let loss = b.forward(&a.forward(&xs)).sum(Kind::Float);
        fabric
            .no_backward_sync_for(&a, true, |f| f.backward(&loss))
            .unwrap()
            .unwrap();
        let local_a = a_grad().copy();
        let (a_local, b_averaged) = (!same(&fabric, &a_grad()), same(&fabric, &b_grad()));
        // The next backward averages `a`'s accumulated gradients too.
        let loss = b.forward(&a.forward(&xs)).sum(Kind::Float);
        fabric.backward(&loss).unwrap();
        let a_averaged = same(&fabric, &a_grad());
        // Twice `a`'s local gradient, averaged over the ranks.
        let expected = fabric.all_reduce(&(local_a * 2.0), ReduceOp::Mean).unwrap();
        let a_right = a_grad().allclose(&expected, 1e-6, 1e-6, false);
        report(
            rank,
            &format!(
                "a_local={a_local} b_averaged={b_averaged} a_averaged={a_averaged} a_right={a_right}"
            ),
        );
        return;
    }
    for mode in ["overlapped", "after"] {
        let common::Run { text, results, .. } = two_ranks(test, mode).assert_success();
        let expected = "a_local=true b_averaged=true a_averaged=true a_right=true";
        assert_eq!(results, [expected, expected], "{mode}\n{text}");
    }
}

#[test]
fn no_backward_sync_for_a_model_of_another_fabric_is_an_error() {
    // Initialising layers draws from the generator another test seeded.
    let _rng = common::rng_lock();
    let mut fabric = Fabric::builder().accelerator("cpu").build().unwrap();
    let mut other = Fabric::builder().accelerator("cpu").build().unwrap();
    let mut a_vs = nn::VarStore::new(Device::Cpu);
    let a = nn::linear(a_vs.root() / "a", 3, 1, Default::default());
    let mut b_vs = nn::VarStore::new(Device::Cpu);
    let b = nn::linear(b_vs.root() / "b", 3, 1, Default::default());
    let _a = fabric.setup_module(&mut a_vs, a).unwrap();
    let _b = other.setup_module(&mut b_vs, b).unwrap();
    let mut c_vs = nn::VarStore::new(Device::Cpu);
    let c = nn::linear(c_vs.root() / "c", 3, 1, Default::default());
    let c = other.setup_module(&mut c_vs, c).unwrap();
    // `c` is `other`'s second model: `fabric` set up one; `_b` is
    // `other`'s first.
    for model in [&c, &_b] {
        let error = fabric
            .no_backward_sync_for(model, true, |_| ())
            .unwrap_err()
            .to_string();
        assert!(error.contains("did not set up"), "{error}");
    }
}

// ---- ranks that set up different models ------------------------------------

#[test]
fn ranks_that_set_up_different_models_get_a_clear_error_on_every_rank() {
    let test = "ranks_that_set_up_different_models_get_a_clear_error_on_every_rank";
    if in_scenario(test) {
        let mode = mode_here();
        let mut fabric = Fabric::builder()
            .accelerator("cpu")
            .strategy(DdpStrategy::new())
            .build()
            .unwrap();
        let rank = fabric.global_rank();
        let result = (|| -> fabric::Result<()> {
            let mut a_vs = nn::VarStore::new(Device::Cpu);
            let width = if mode == "shape" && rank == 1 { 5 } else { 4 };
            let a = nn::linear(a_vs.root() / "a", 3, width, Default::default());
            let a = fabric.setup_module(&mut a_vs, a)?;
            let mut b_vs = nn::VarStore::new(Device::Cpu);
            let b = nn::linear(b_vs.root() / "b", width, 1, Default::default());
            let b = if mode == "count" && rank == 1 {
                None
            } else {
                Some(fabric.setup_module(&mut b_vs, b)?)
            };
            let xs = Tensor::ones([2, 3], (Kind::Float, Device::Cpu));
            let mut out = a.forward(&xs);
            if let Some(b) = &b {
                out = b.forward(&out);
            }
            fabric.backward(&out.sum(Kind::Float))
        })();
        let message = match result {
            Ok(()) => "ran".to_owned(),
            Err(e) => e.to_string(),
        };
        let clear = match mode.as_str() {
            "count" => message.contains("different numbers of models"),
            _ => message.contains("model 1 differs between the ranks"),
        };
        report(rank, &format!("clear={clear} {message}"));
        return;
    }
    for mode in ["count", "shape"] {
        let common::Run { text, results, .. } = two_ranks(test, mode).assert_success();
        for result in &results {
            assert!(result.starts_with("clear=true"), "{mode}: {result}\n{text}");
        }
    }
}
