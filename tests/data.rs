//! Data sets and loaders: batch sizes, drop_last, seeded shuffling, worker
//! threads (`tests/data/workers.rs`).

mod common;

use fabric::Fabric;
use fabric::data::{DataLoader, Dataset, Sampler, TensorDataset};
use tch::{Device, Kind, Tensor};

#[path = "data/decode.rs"]
mod decode;
#[path = "data/workers.rs"]
mod workers;

fn numbers(n: i64) -> TensorDataset<(Tensor, Tensor)> {
    let x = Tensor::arange(n, (Kind::Float, Device::Cpu)).view([n, 1]);
    let y = Tensor::arange(n, (Kind::Int64, Device::Cpu));
    TensorDataset::new((x, y)).unwrap()
}

/// The label sequence of each batch of one epoch.
fn epoch(loader: &mut DataLoader<TensorDataset<(Tensor, Tensor)>>) -> Vec<Vec<i64>> {
    loader
        .iter()
        .map(|b| Vec::<i64>::try_from(b.unwrap().1).unwrap())
        .collect()
}

#[test]
fn batch_sizes_and_drop_last() {
    let mut loader = DataLoader::new(numbers(10)).batch_size(4);
    assert_eq!(loader.len(), 3);
    let batches = epoch(&mut loader);
    assert_eq!(batches.iter().map(Vec::len).collect::<Vec<_>>(), [4, 4, 2]);
    assert_eq!(
        batches.concat(),
        (0..10).collect::<Vec<_>>(),
        "in order without shuffle"
    );

    let mut loader = DataLoader::new(numbers(10)).batch_size(4).drop_last(true);
    assert_eq!(loader.len(), 2);
    assert_eq!(
        epoch(&mut loader).iter().map(Vec::len).collect::<Vec<_>>(),
        [4, 4]
    );

    let mut exact = DataLoader::new(numbers(8)).batch_size(4).drop_last(true);
    assert_eq!(epoch(&mut exact).len(), 2, "drop_last keeps full batches");
}

#[test]
fn shuffling_is_a_permutation_fixed_by_seed_and_epoch() {
    let mut a = DataLoader::new(numbers(50))
        .batch_size(7)
        .shuffle(true)
        .seed(11);
    let mut b = DataLoader::new(numbers(50))
        .batch_size(7)
        .shuffle(true)
        .seed(11);
    let mut c = DataLoader::new(numbers(50))
        .batch_size(7)
        .shuffle(true)
        .seed(12);
    let (a0, b0, c0) = (epoch(&mut a), epoch(&mut b), epoch(&mut c));
    assert_eq!(a0, b0, "same seed, same order");
    assert_ne!(a0, c0, "another seed, another order");
    let mut sorted = a0.concat();
    assert_ne!(sorted, (0..50).collect::<Vec<_>>(), "shuffled");
    sorted.sort();
    assert_eq!(
        sorted,
        (0..50).collect::<Vec<_>>(),
        "every sample exactly once"
    );

    let a1 = epoch(&mut a);
    assert_ne!(a0, a1, "each epoch reshuffles");
    a.set_epoch(0);
    assert_eq!(epoch(&mut a), a0, "set_epoch replays an epoch's order");
}

#[test]
#[allow(deprecated)]
fn the_deprecated_prefetch_still_yields_the_same_batches() {
    let mut inline = DataLoader::new(numbers(100))
        .batch_size(9)
        .shuffle(true)
        .seed(5);
    let mut prefetched = DataLoader::new(numbers(100))
        .batch_size(9)
        .shuffle(true)
        .seed(5)
        .prefetch(3);
    for _ in 0..3 {
        assert_eq!(epoch(&mut inline), epoch(&mut prefetched));
    }
    // Stopping early does not hang: the background thread sees the closed channel.
    let first = prefetched.iter().next().unwrap().unwrap();
    assert_eq!(first.0.size(), [9, 1]);
}

#[test]
fn tensor_dataset_checks_its_tensors() {
    let x = Tensor::zeros([4, 2], (Kind::Float, Device::Cpu));
    let y = Tensor::zeros([5], (Kind::Int64, Device::Cpu));
    let err = TensorDataset::new((x, y)).unwrap_err().to_string();
    assert!(err.contains("must share their first dimension"), "{err}");
    assert!(err.contains("[4, 2]") && err.contains("[5]"), "{err}");
    let err = TensorDataset::new(Tensor::from(1.0))
        .unwrap_err()
        .to_string();
    assert!(err.contains("scalar"), "{err}");
    let err = numbers(3).get_batch(&[0, 3]).unwrap_err().to_string();
    assert!(
        err.contains("sample index 3 is out of range for a data set of 3 samples"),
        "{err}"
    );
}

#[test]
fn a_zero_batch_size_is_an_error_not_a_hang() {
    let mut loader = DataLoader::new(numbers(3)).batch_size(0);
    let items: Vec<_> = loader.iter().collect();
    assert_eq!(items.len(), 1);
    assert!(
        items[0]
            .as_ref()
            .unwrap_err()
            .to_string()
            .contains("batch size must be at least 1")
    );
}

struct EveryOther;
impl Sampler for EveryOther {
    fn indices(&self, len: usize, _epoch: u64) -> Vec<usize> {
        (0..len).step_by(2).collect()
    }
}

struct OutOfRange;
impl Sampler for OutOfRange {
    fn indices(&self, len: usize, _epoch: u64) -> Vec<usize> {
        vec![0, len + 10, 1]
    }
}

#[test]
fn custom_samplers_choose_the_order_and_bad_ones_fail_cleanly() {
    let mut loader = DataLoader::new(numbers(7))
        .batch_size(2)
        .sampler(EveryOther);
    assert_eq!(epoch(&mut loader), vec![vec![0, 2], vec![4, 6]]);
    for workers in [0, 2] {
        let mut loader = DataLoader::new(numbers(7))
            .batch_size(2)
            .sampler(OutOfRange)
            .num_workers(workers);
        let items: Vec<_> = loader.iter().collect();
        assert_eq!(items.len(), 1, "the epoch ends at the first error");
        assert!(
            items[0]
                .as_ref()
                .unwrap_err()
                .to_string()
                .contains("out of range")
        );
    }
}

#[test]
fn the_length_counts_the_batches_a_custom_sampler_makes() {
    // EveryOther visits 4 of 7 samples: 2 batches of 2, not 4.
    let mut loader = DataLoader::new(numbers(7))
        .batch_size(2)
        .sampler(EveryOther);
    assert_eq!(loader.len(), 2);
    assert_eq!(loader.len(), epoch(&mut loader).len());
    let loader = DataLoader::new(numbers(7))
        .batch_size(3)
        .drop_last(true)
        .sampler(EveryOther);
    assert_eq!(loader.len(), 1, "4 samples make one full batch of 3");
}

#[test]
fn fabric_loaders_deliver_batches_on_the_device_and_follow_the_global_seed() {
    // The loaders read the global seed at each epoch: no other test may
    // set it meanwhile.
    let _rng = common::rng_lock();
    let fabric = Fabric::builder().accelerator("cpu").build().unwrap();
    fabric.seed_everything(1234);
    let mut a = fabric
        .setup_dataloaders(DataLoader::new(numbers(20)).batch_size(5).shuffle(true))
        .unwrap();
    let mut b = fabric
        .setup_dataloaders(DataLoader::new(numbers(20)).batch_size(5).shuffle(true))
        .unwrap();
    let order = |l: &mut fabric::data::FabricDataLoader<_>| -> Vec<i64> {
        l.iter()
            .flat_map(|b: fabric::Result<(Tensor, Tensor)>| {
                let (x, y) = b.unwrap();
                assert_eq!(x.device(), fabric.device());
                Vec::<i64>::try_from(y).unwrap()
            })
            .collect()
    };
    assert_eq!(
        order(&mut a),
        order(&mut b),
        "loaders without a seed of their own follow seed_everything"
    );
    assert_eq!(a.len(), 4);
}

/// A data set whose third batch panics.
struct PanicsAtTwo;
impl Dataset for PanicsAtTwo {
    type Batch = Tensor;
    fn len(&self) -> usize {
        4
    }
    fn get_batch(&self, indices: &[usize]) -> fabric::Result<Tensor> {
        assert!(indices[0] != 2, "sample 2 is broken");
        Ok(Tensor::from_slice(&[indices[0] as i64]))
    }
}

#[test]
fn a_panic_on_a_worker_thread_is_an_error_not_a_short_epoch() {
    let mut loader = DataLoader::new(PanicsAtTwo).num_workers(1);
    let items: Vec<_> = loader.iter().collect();
    assert_eq!(items.len(), 3, "two batches, then the error");
    let err = items[2].as_ref().unwrap_err().to_string();
    assert!(
        err.contains("panicked") && err.contains("sample 2 is broken"),
        "{err}"
    );
}
