//! The same seed gives bit-identical training. In a test binary of its own,
//! and holding `common::rng_lock()`: libtorch's generator is process-wide,
//! and other tests seeding it in parallel would interleave with these runs.

mod common;

use fabric::Fabric;
use fabric::data::{DataLoader, TensorDataset};
use fabric_examples::digits;
use tch::nn::{self, OptimizerConfig};
use tch::{Device, Kind};

fn losses(seed: u64) -> Vec<u32> {
    let mut fabric = Fabric::builder().accelerator("cpu").build().unwrap();
    fabric.seed_everything(seed);
    let (x, y) = digits::load(&digits::default_path()).unwrap();
    let mut vs = nn::VarStore::new(Device::Cpu);
    let net = nn::seq()
        .add(nn::linear(vs.root() / "a", 64, 32, Default::default()))
        .add_fn(|x| x.relu().dropout(0.2, true))
        .add(nn::linear(vs.root() / "b", 32, 10, Default::default()));
    let opt = nn::Sgd {
        momentum: 0.9,
        ..Default::default()
    }
    .build(&vs, 0.05)
    .unwrap();
    let (model, mut opt) = fabric.setup(&mut vs, net, opt).unwrap();
    // No loader seed: the order comes from seed_everything.
    let mut loader = fabric
        .setup_dataloaders(
            DataLoader::new(TensorDataset::new((x, y)).unwrap())
                .batch_size(50)
                .shuffle(true),
        )
        .unwrap();
    let mut losses = Vec::new();
    for _ in 0..2 {
        for batch in &mut loader {
            let (x, y) = batch.unwrap();
            opt.zero_grad();
            let loss = model.forward(&x).cross_entropy_for_logits(&y);
            fabric.backward(&loss).unwrap();
            opt.step().unwrap();
            losses.push((loss.to_kind(Kind::Float).double_value(&[]) as f32).to_bits());
        }
    }
    losses
}

#[test]
fn same_seed_gives_bit_identical_losses() {
    let _rng = common::rng_lock();
    let first = losses(7);
    assert_eq!(first.len(), 2 * 36);
    assert_eq!(first, losses(7), "two runs with seed 7 differ");
    assert_ne!(first, losses(8), "the seed has no effect");
}
