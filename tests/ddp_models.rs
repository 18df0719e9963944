//! Several models and optimizers under `ddp` (issue 14): a GAN trained by
//! two ranks of `mpirun` equals one process on the whole batch, and a
//! parameter a backward pass does not reach is an error without
//! `find_unused_parameters` and takes part with a zero gradient with it.
//!
//! Each test runs this binary under `mpirun` with `FABRIC_SCENARIO` naming
//! the test (`common::Scenario`); in the ranks, the test body runs its
//! scenario and writes its result to a file the test reads.

mod common;

use fabric::optim::Adam;
use fabric::strategy::DdpStrategy;
use fabric::{Fabric, ReduceOp};
use tch::nn::{self, ModuleT};
use tch::{Device, Kind, Tensor};

use common::{Scenario, in_scenario, report};

/// Which strategy a GAN run's ranks use.
const MODE: &str = "FABRIC_DDP_MODE";

fn mode_here() -> String {
    std::env::var(MODE).unwrap_or_default()
}

/// Runs test `test` of this binary in two ranks of `mpirun`, with
/// `FABRIC_DDP_MODE=mode`.
fn two_ranks(test: &str, mode: &str) -> common::Run {
    Scenario::mpirun(test, 2).env(MODE, mode).run()
}

fn encode(values: &[f32]) -> String {
    let bits: Vec<String> = values
        .iter()
        .map(|p| format!("{:08x}", p.to_bits()))
        .collect();
    bits.join(",")
}

fn decode(values: &str) -> Vec<f32> {
    values
        .split(',')
        .map(|h| f32::from_bits(u32::from_str_radix(h, 16).unwrap()))
        .collect()
}

fn flatten(vs: &nn::VarStore) -> Vec<f32> {
    let mut variables: Vec<_> = vs.variables().into_iter().collect();
    variables.sort_by(|a, b| a.0.cmp(&b.0));
    variables
        .iter()
        .flat_map(|(_, t)| Vec::<f32>::try_from(t.view([-1])).unwrap())
        .collect()
}

// ---- the GAN both sides train ---------------------------------------------

const NOISE: i64 = 4;
const FEATURES: i64 = 6;
const CLASSES: i64 = 3;
const BATCH: i64 = 8;
const STEPS: i64 = 6;

struct Generator {
    hidden: nn::Linear,
    out: nn::Linear,
}

impl std::fmt::Debug for Generator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Generator")
    }
}

impl ModuleT for Generator {
    fn forward_t(&self, z: &Tensor, _train: bool) -> Tensor {
        z.apply(&self.hidden).tanh().apply(&self.out)
    }
}

/// A discriminator whose forward pass gives the real/fake logit; its
/// auxiliary head (the class of a real sample, as in an AC-GAN) runs only
/// in the discriminator's step, so the generator's loss never reaches it.
struct Discriminator {
    body: nn::Linear,
    real_or_fake: nn::Linear,
    class: Option<nn::Linear>,
}

impl std::fmt::Debug for Discriminator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Discriminator")
    }
}

impl ModuleT for Discriminator {
    fn forward_t(&self, xs: &Tensor, _train: bool) -> Tensor {
        xs.apply(&self.body).tanh().apply(&self.real_or_fake)
    }
}

impl Discriminator {
    fn class_logits(&self, xs: &Tensor) -> Option<Tensor> {
        let class = self.class.as_ref()?;
        Some(xs.apply(&self.body).tanh().apply(class))
    }
}

/// Step `step`'s whole batch: real samples, their classes, noise.
fn batch(step: i64) -> (Tensor, Tensor, Tensor) {
    let options = (Kind::Float, Device::Cpu);
    let start = (step * BATCH * FEATURES) as f64;
    let real = (Tensor::arange_start(start, start + (BATCH * FEATURES) as f64, options) * 0.37)
        .sin()
        .view([BATCH, FEATURES]);
    let classes = Tensor::arange(BATCH, (Kind::Int64, Device::Cpu)).remainder(CLASSES);
    let z = (Tensor::arange_start(start, start + (BATCH * NOISE) as f64, options) * 0.71)
        .cos()
        .view([BATCH, NOISE]);
    (real, classes, z)
}

/// Trains the GAN for `STEPS` steps on this process's part of each batch
/// (`part` of `parts`); returns the generator's and the discriminator's
/// variables, flattened.
fn train_gan(
    fabric: &mut Fabric,
    part: i64,
    parts: i64,
    auxiliary: bool,
) -> fabric::Result<Vec<f32>> {
    fabric.seed_everything(0);
    let mut g_vs = nn::VarStore::new(Device::Cpu);
    let g = Generator {
        hidden: nn::linear(g_vs.root() / "hidden", NOISE, 16, Default::default()),
        out: nn::linear(g_vs.root() / "out", 16, FEATURES, Default::default()),
    };
    let mut d_vs = nn::VarStore::new(Device::Cpu);
    let d = Discriminator {
        body: nn::linear(d_vs.root() / "body", FEATURES, 16, Default::default()),
        real_or_fake: nn::linear(d_vs.root() / "real_or_fake", 16, 1, Default::default()),
        class: auxiliary
            .then(|| nn::linear(d_vs.root() / "class", 16, CLASSES, Default::default())),
    };
    let g_opt = Adam::new(1e-2).build(&g_vs)?;
    let d_opt = Adam::new(1e-2).build(&d_vs)?;
    let (g, mut g_opt) = fabric.setup(&mut g_vs, g, g_opt)?;
    let (d, mut d_opt) = fabric.setup(&mut d_vs, d, d_opt)?;
    let bce = |logits: &Tensor, target: f64| {
        logits.binary_cross_entropy_with_logits::<Tensor>(
            &logits.full_like(target),
            None,
            None,
            tch::Reduction::Mean,
        )
    };
    let rows = BATCH / parts;
    for step in 0..STEPS {
        let (real, classes, z) = batch(step);
        let real = real.narrow(0, part * rows, rows);
        let classes = classes.narrow(0, part * rows, rows);
        let z = z.narrow(0, part * rows, rows);
        // The discriminator's step, on real and detached fake samples.
        let fake = g.forward(&z);
        d_opt.zero_grad();
        let mut d_loss = bce(&d.forward(&real), 1.0) + bce(&d.forward(&fake.detach()), 0.0);
        // A method other than `forward`, run with the precision as `forward` is.
        if let Some(class_logits) = d.forward_with(&real, |d, real| d.class_logits(&real)) {
            d_loss += class_logits.cross_entropy_for_logits(&classes);
        }
        fabric.backward(&d_loss)?;
        d_opt.step()?;
        // The generator's step, through the discriminator.
        g_opt.zero_grad();
        let g_loss = bce(&d.forward(&fake), 1.0);
        fabric.backward(&g_loss)?;
        g_opt.step()?;
    }
    let mut params = flatten(&g_vs);
    params.extend(flatten(&d_vs));
    Ok(params)
}

/// The GAN under two ranks against one process on the whole batch.
fn gan_run(test: &str, mode: &str, auxiliary: bool) {
    if in_scenario(test) {
        let builder = Fabric::builder().accelerator("cpu");
        let builder = match mode_here().as_str() {
            "name" => builder.strategy("ddp_find_unused_parameters_true"),
            "static_graph" => builder.strategy(DdpStrategy::new().static_graph(true)),
            _ => builder.strategy("ddp"),
        };
        let mut fabric = builder.build().unwrap();
        assert_eq!(fabric.world_size(), 2);
        let rank = fabric.global_rank() as i64;
        let params = train_gan(&mut fabric, rank, 2, auxiliary).unwrap();
        report(rank as usize, &encode(&params));
        return;
    }
    let common::Run { text, results, .. } = two_ranks(test, mode).assert_success();
    assert!(!results[0].is_empty(), "no result from rank 0:\n{text}");
    assert_eq!(results[0], results[1], "the ranks differ");
    let mut one = Fabric::builder().accelerator("cpu").build().unwrap();
    let expected = {
        // Seeded, then initialised: no other test may draw in between.
        let _rng = common::rng_lock();
        train_gan(&mut one, 0, 1, auxiliary).unwrap()
    };
    let got = decode(&results[0]);
    assert_eq!(got.len(), expected.len());
    for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
        assert!(
            (g - e).abs() < 1e-4,
            "variable {i}: ddp {g}, one process {e}\nddp {got:?}\none process {expected:?}"
        );
    }
}

#[test]
fn a_gan_under_two_rank_ddp_with_find_unused_parameters_trains_like_one_process() {
    gan_run(
        "a_gan_under_two_rank_ddp_with_find_unused_parameters_trains_like_one_process",
        "name",
        true,
    );
}

#[test]
fn a_gan_under_two_rank_ddp_with_static_graph_trains_like_one_process() {
    gan_run(
        "a_gan_under_two_rank_ddp_with_static_graph_trains_like_one_process",
        "static_graph",
        true,
    );
}

/// Without an auxiliary head every parameter takes part in each step that
/// reaches its model: plain `ddp` reduces the discriminator alone in its
/// step (the generator's output is detached) and both in the generator's.
#[test]
fn a_gan_whose_losses_use_every_parameter_of_their_models_needs_no_find_unused() {
    gan_run(
        "a_gan_whose_losses_use_every_parameter_of_their_models_needs_no_find_unused",
        "plain",
        false,
    );
}

// ---- unused parameters ---------------------------------------------------

/// A model of two heads; the loss uses head `a` on every rank, head `b` on
/// rank 0 only and head `c` on no rank.
fn unused_scenario(find_unused: bool) {
    let mut fabric = Fabric::builder()
        .accelerator("cpu")
        .strategy(DdpStrategy::new().find_unused_parameters(find_unused))
        .build()
        .unwrap();
    let rank = fabric.global_rank();
    let mut vs = nn::VarStore::new(Device::Cpu);
    let a = nn::linear(vs.root() / "a", 3, 1, Default::default());
    let b = nn::linear(vs.root() / "b", 3, 1, Default::default());
    let _c = nn::linear(vs.root() / "c", 3, 1, Default::default());
    let model = fabric
        .setup_module(&mut vs, nn::func_t(|xs, _| xs.shallow_clone()))
        .unwrap();
    let xs = Tensor::from_slice(&[1.0f32, 2.0, 3.0]).view([1, 3]) * (rank as f64 + 1.0);
    let hidden = model.forward(&xs);
    let mut loss = hidden.apply(&a).sum(Kind::Float);
    if rank == 0 {
        loss += hidden.apply(&b).sum(Kind::Float) * 10.0;
    }
    let result = fabric.backward(&loss);
    let weight = |name: &str| vs.variables()[&format!("{name}.weight")].grad();
    match result {
        Err(error) => {
            let message = error.to_string();
            assert!(!find_unused, "{message}");
            assert!(message.contains("`c.weight` of model 1"), "{message}");
            assert!(message.contains("find_unused_parameters"), "{message}");
            assert!(message.contains("`b.weight` of model 1"), "{message}");
            report(rank, "error=clear");
        }
        Ok(()) => {
            assert!(
                find_unused,
                "unused parameters without find_unused_parameters ran"
            );
            // `a`: the average of both ranks' gradients, 1.5 * (1, 2, 3).
            let a_grad = Vec::<f32>::try_from(weight("a").view([-1])).unwrap();
            assert_eq!(a_grad, [1.5, 3.0, 4.5]);
            // `b`: rank 0's gradient averaged with rank 1's zero.
            let b_grad = Vec::<f32>::try_from(weight("b").view([-1])).unwrap();
            assert_eq!(b_grad, [5.0, 10.0, 15.0]);
            // `c`: used nowhere, left without a gradient, as PyTorch does.
            assert!(!weight("c").defined());
            let same = fabric.all_reduce(&weight("b"), ReduceOp::Max).unwrap();
            assert!(same.equal(&weight("b")));
            report(rank, "ran=averaged");
        }
    }
}

#[test]
fn unused_parameters_are_a_clear_error_without_find_unused_parameters() {
    let test = "unused_parameters_are_a_clear_error_without_find_unused_parameters";
    if in_scenario(test) {
        return unused_scenario(false);
    }
    let common::Run { text, results, .. } = two_ranks(test, "").assert_success();
    assert_eq!(results, ["error=clear", "error=clear"], "{text}");
}

#[test]
fn unused_parameters_take_part_with_zero_gradients_with_find_unused_parameters() {
    let test = "unused_parameters_take_part_with_zero_gradients_with_find_unused_parameters";
    if in_scenario(test) {
        return unused_scenario(true);
    }
    let common::Run { text, results, .. } = two_ranks(test, "").assert_success();
    assert_eq!(results, ["ran=averaged", "ran=averaged"], "{text}");
}

/// The GAN with the auxiliary head under plain `ddp`: the generator's step
/// does not reach the head, which is an error on both ranks naming it.
#[test]
fn a_gan_whose_generator_loss_skips_a_discriminator_head_needs_find_unused() {
    let test = "a_gan_whose_generator_loss_skips_a_discriminator_head_needs_find_unused";
    if in_scenario(test) {
        let mut fabric = Fabric::builder()
            .accelerator("cpu")
            .strategy("ddp")
            .build()
            .unwrap();
        let rank = fabric.global_rank();
        let error = train_gan(&mut fabric, rank as i64, 2, true)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("`class.weight` of model 2 (on this rank)"),
            "{error}"
        );
        assert!(!error.contains("real_or_fake"), "{error}");
        assert!(error.contains("find_unused_parameters"), "{error}");
        report(rank, "error=clear");
        return;
    }
    let common::Run { text, results, .. } = two_ranks(test, "").assert_success();
    assert_eq!(results, ["error=clear", "error=clear"], "{text}");
}
