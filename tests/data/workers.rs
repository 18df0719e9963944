//! Worker threads: the batches and order of loading without workers for
//! any number of them, bounded prefetch, errors naming the worker, prompt
//! stops, pinned memory.

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use fabric::data::{DataLoader, Dataset, PinMemory, Sampler, TensorDataset};
use fabric::{Fabric, ToDevice};
use tch::{Device, Kind, TchError, Tensor};

use super::decode::Decode;

type Pair = (Tensor, Tensor);

/// Every batch of the next epoch.
fn batches<D: Dataset<Batch = Pair>>(loader: &mut DataLoader<D>) -> Vec<Pair> {
    loader.iter().map(|b| b.unwrap()).collect()
}

fn assert_same(expected: &[Pair], got: &[Pair], what: &str) {
    assert_eq!(expected.len(), got.len(), "{what}: number of batches");
    for (i, ((x, y), (gx, gy))) in expected.iter().zip(got).enumerate() {
        assert!(x.equal(gx) && y.equal(gy), "{what}: batch {i} differs");
    }
}

/// Samples with random features and their index as label.
fn random_pairs(n: i64) -> Pair {
    (
        Tensor::randn([n, 3], (Kind::Float, Device::Cpu)),
        Tensor::arange(n, (Kind::Int64, Device::Cpu)),
    )
}

fn dataset(data: &Pair) -> TensorDataset<Pair> {
    TensorDataset::new((data.0.shallow_clone(), data.1.shallow_clone())).unwrap()
}

/// An order that depends on the seed and the epoch and leaves samples out.
struct Scrambled {
    seed: u64,
}
impl Sampler for Scrambled {
    fn indices(&self, len: usize, epoch: u64) -> Vec<usize> {
        let k = (self.seed + epoch) as usize % 5 + 2;
        (0..len).rev().filter(|i| i % k != 1).collect()
    }
}

#[test]
fn worker_loading_equals_sequential_loading() {
    let data = random_pairs(103);
    for seed in [0, 7, 2026] {
        for drop_last in [false, true] {
            for custom_sampler in [false, true] {
                let make = |workers: usize, prefetch: usize| {
                    let loader = DataLoader::new(dataset(&data))
                        .batch_size(6)
                        .drop_last(drop_last)
                        .num_workers(workers)
                        .prefetch_factor(prefetch);
                    match custom_sampler {
                        true => loader.sampler(Scrambled { seed }),
                        false => loader.shuffle(true).seed(seed),
                    }
                };
                let mut sequential = make(0, 2);
                let expected: Vec<Vec<Pair>> = (0..3).map(|_| batches(&mut sequential)).collect();
                for workers in 1..=4 {
                    for prefetch in [1, 2, 5] {
                        let mut loader = make(workers, prefetch);
                        for (epoch, expected) in expected.iter().enumerate() {
                            let what = format!(
                                "seed {seed}, drop_last {drop_last}, custom sampler {custom_sampler}, {workers} workers, prefetch {prefetch}, epoch {epoch}"
                            );
                            assert_same(expected, &batches(&mut loader), &what);
                        }
                        loader.set_epoch(1);
                        assert_same(&expected[1], &batches(&mut loader), "set_epoch replays");
                    }
                }
            }
        }
    }
}

#[test]
fn worker_loading_equals_sequential_loading_for_a_data_set_that_computes() {
    let make = |workers| {
        DataLoader::new(Decode::new(40, 8))
            .batch_size(6)
            .shuffle(true)
            .seed(1)
            .num_workers(workers)
    };
    let expected = batches(&mut make(0));
    for workers in 1..=4 {
        assert_same(
            &expected,
            &batches(&mut make(workers)),
            &format!("{workers} workers"),
        );
    }
}

/// A data set that fails at sample `bad`, with an error or a panic.
struct BrokenAt {
    bad: usize,
    panics: bool,
}
impl Dataset for BrokenAt {
    type Batch = Pair;
    fn len(&self) -> usize {
        20
    }
    fn get_batch(&self, indices: &[usize]) -> fabric::Result<Pair> {
        if indices.contains(&self.bad) {
            assert!(!self.panics, "sample {} is broken (a panic)", self.bad);
            return Err(fabric::Error::Data(format!(
                "sample {} is broken",
                self.bad
            )));
        }
        let i: Vec<i64> = indices.iter().map(|&i| i as i64).collect();
        Ok((Tensor::from_slice(&i), Tensor::from_slice(&i)))
    }
}

#[test]
fn a_failing_worker_is_an_error_naming_the_worker_and_the_batch() {
    // Sample 11 is in batch 5 (batches of 2).
    let make = |workers, panics| {
        DataLoader::new(BrokenAt { bad: 11, panics })
            .batch_size(2)
            .num_workers(workers)
    };
    // Without workers an error ends the epoch the same way (a panic
    // unwinds through the loop, as any panic of the loop's thread).
    let sequential: Vec<_> = make(0, false).iter().collect();
    assert_eq!(sequential.len(), 6, "5 batches, then the error");
    let good: Vec<Pair> = sequential.into_iter().take(5).map(Result::unwrap).collect();
    for panics in [false, true] {
        let make = |workers| make(workers, panics);
        for workers in 1..=4 {
            let items: Vec<_> = make(workers).iter().collect();
            assert_eq!(
                items.len(),
                6,
                "{workers} workers: 5 batches, the error, then the end"
            );
            let made: Vec<Pair> = items.into_iter().map_while(Result::ok).collect();
            assert_same(&good, &made, &format!("{workers} workers before the error"));
            let mut loader = make(workers);
            let err = loader.iter().nth(5).unwrap().unwrap_err().to_string();
            let worker = 5 % workers;
            assert!(
                err.contains(&format!(
                    "data loading worker {worker} failed on batch 5 of epoch 0"
                )) && err.contains("sample 11 is broken"),
                "{err}"
            );
            assert_eq!(err.contains("panicked"), panics, "{err}");
        }
    }
}

static LIVE_WORKERS: AtomicUsize = AtomicUsize::new(0);

/// Counts the threads that made a batch and have not ended yet.
struct LiveGuard;
impl Drop for LiveGuard {
    fn drop(&mut self) {
        LIVE_WORKERS.fetch_sub(1, Ordering::SeqCst);
    }
}
thread_local! {
    static LIVE: RefCell<Option<LiveGuard>> = const { RefCell::new(None) };
}

/// Records the threads that make its batches, and its own drop.
struct Tracked {
    dropped: Arc<AtomicBool>,
}
impl Dataset for Tracked {
    type Batch = Tensor;
    fn len(&self) -> usize {
        10_000
    }
    fn get_batch(&self, indices: &[usize]) -> fabric::Result<Tensor> {
        LIVE.with(|live| {
            if live.borrow().is_none() {
                LIVE_WORKERS.fetch_add(1, Ordering::SeqCst);
                *live.borrow_mut() = Some(LiveGuard);
            }
        });
        Ok(Tensor::from_slice(&[indices[0] as i64]))
    }
}
impl Drop for Tracked {
    fn drop(&mut self) {
        self.dropped.store(true, Ordering::SeqCst);
    }
}

#[test]
fn dropping_an_epoch_midway_stops_and_joins_its_workers() {
    let dropped = Arc::new(AtomicBool::new(false));
    let mut loader = DataLoader::new(Tracked {
        dropped: Arc::clone(&dropped),
    })
    .num_workers(4);
    let mut epoch = loader.iter();
    for _ in 0..3 {
        assert!(epoch.next().unwrap().is_ok());
    }
    assert!(
        LIVE_WORKERS.load(Ordering::SeqCst) >= 3,
        "batches 0 to 2 came from three workers"
    );
    drop(epoch);
    assert_eq!(
        LIVE_WORKERS.load(Ordering::SeqCst),
        0,
        "every worker ended before the drop returned"
    );

    #[allow(clippy::never_loop)]
    for batch in &mut loader {
        assert!(batch.is_ok());
        break;
    }
    assert_eq!(
        LIVE_WORKERS.load(Ordering::SeqCst),
        0,
        "leaving a loop stops the workers"
    );

    // An epoch keeps the data set alive past its loader; dropping it ends
    // the workers, which release it.
    let mut epoch = loader.iter();
    assert!(epoch.next().unwrap().is_ok());
    drop(loader);
    assert!(!dropped.load(Ordering::SeqCst));
    drop(epoch);
    assert!(
        dropped.load(Ordering::SeqCst),
        "the workers released the data set"
    );
}

/// Counts the batches it starts making.
struct Counting {
    started: Arc<AtomicUsize>,
}
impl Dataset for Counting {
    type Batch = Tensor;
    fn len(&self) -> usize {
        40
    }
    fn get_batch(&self, indices: &[usize]) -> fabric::Result<Tensor> {
        self.started.fetch_add(1, Ordering::SeqCst);
        Ok(Tensor::from_slice(&[indices[0] as i64]))
    }
}

/// Waits until `started` reaches `expected` (failing if it never does),
/// then gives the workers time to go past it, and checks that they did not.
/// A correct loader passes however slow the machine; a loader that makes
/// too many batches ahead fails unless its workers are slower than 50 ms.
fn assert_started(started: &AtomicUsize, expected: usize, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while started.load(Ordering::SeqCst) < expected && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(started.load(Ordering::SeqCst), expected, "{what}");
}

#[test]
fn workers_make_at_most_prefetch_factor_batches_ahead_each() {
    for (workers, prefetch) in [(1, 1), (1, 3), (3, 1), (4, 2)] {
        let started = Arc::new(AtomicUsize::new(0));
        let mut loader = DataLoader::new(Counting {
            started: Arc::clone(&started),
        })
        .num_workers(workers)
        .prefetch_factor(prefetch);
        let mut epoch = loader.iter();
        let ahead = workers * prefetch;
        let what = format!("{workers} workers, prefetch_factor {prefetch}");
        assert_started(&started, ahead, &format!("{what}, nothing taken yet"));
        for taken in 1..=6 {
            assert!(epoch.next().unwrap().is_ok());
            assert_started(&started, ahead + taken, &format!("{what}, {taken} taken"));
        }
        assert_eq!(epoch.count(), 40 - 6);
    }
}

#[test]
fn bad_worker_settings_are_errors_or_clamps_not_hangs() {
    let numbers = || TensorDataset::new(Tensor::arange(5, (Kind::Int64, Device::Cpu))).unwrap();
    let items: Vec<_> = DataLoader::new(numbers())
        .num_workers(usize::MAX)
        .iter()
        .collect();
    assert_eq!(items.len(), 1);
    let err = items[0].as_ref().unwrap_err().to_string();
    assert!(err.contains("at most 1024 worker threads"), "{err}");

    let items: Vec<_> = DataLoader::new(numbers())
        .num_workers(2)
        .prefetch_factor(0)
        .iter()
        .collect();
    assert_eq!(items.len(), 1);
    let err = items[0].as_ref().unwrap_err().to_string();
    assert!(err.contains("prefetch_factor must be at least 1"), "{err}");

    // More workers than batches, a huge prefetch: as many workers as batches.
    let mut loader = DataLoader::new(numbers())
        .batch_size(2)
        .num_workers(1024)
        .prefetch_factor(usize::MAX);
    let sizes: Vec<i64> = loader.iter().map(|b| b.unwrap().size()[0]).collect();
    assert_eq!(sizes, [2, 2, 1]);
    // Without workers prefetch_factor does nothing.
    let mut loader = DataLoader::new(numbers()).prefetch_factor(0);
    assert_eq!(loader.iter().count(), 5);
    // No batch at all.
    let mut loader = DataLoader::new(numbers())
        .batch_size(10)
        .drop_last(true)
        .num_workers(3);
    assert_eq!(loader.iter().count(), 0);
}

/// A batch type of the user's, counting the batches pinned (in the
/// counter its data set hands it).
struct Recorded(Tensor, Arc<AtomicUsize>);
impl PinMemory for Recorded {
    fn try_pin_memory(self, device: Device) -> Result<Self, TchError> {
        let pinned = self.0.try_pin_memory(device)?;
        if pinned.f_is_pinned(device)? {
            self.1.fetch_add(1, Ordering::SeqCst);
        }
        Ok(Recorded(pinned, self.1))
    }
    fn try_to_device_non_blocking(self, device: Device) -> Result<Self, TchError> {
        Ok(Recorded(self.0.try_to_device_non_blocking(device)?, self.1))
    }
}
impl ToDevice for Recorded {
    fn try_to_device(self, device: Device) -> Result<Self, TchError> {
        Ok(Recorded(self.0.try_to_device(device)?, self.1))
    }
}

struct Numbers {
    pinned: Arc<AtomicUsize>,
}
impl Dataset for Numbers {
    type Batch = Recorded;
    fn len(&self) -> usize {
        30
    }
    fn get_batch(&self, indices: &[usize]) -> fabric::Result<Recorded> {
        let i: Vec<i64> = indices.iter().map(|&i| i as i64).collect();
        Ok(Recorded(Tensor::from_slice(&i), Arc::clone(&self.pinned)))
    }
}

/// The epoch's batches on `fabric`'s device, as vectors.
fn pinned_epoch(
    fabric: &Fabric,
    pinned: &Arc<AtomicUsize>,
    workers: usize,
    pin: bool,
) -> Vec<Vec<i64>> {
    let pinned = Arc::clone(pinned);
    let loader = DataLoader::new(Numbers { pinned })
        .batch_size(4)
        .shuffle(true)
        .seed(3)
        .num_workers(workers);
    let mut loader = fabric.setup_dataloaders(loader.pin_memory(pin)).unwrap();
    loader
        .iter()
        .map(|b| {
            let b = b.unwrap().0;
            assert_eq!(b.device(), fabric.device());
            Vec::try_from(b.to_device(Device::Cpu)).unwrap()
        })
        .collect()
}

#[test]
fn pin_memory_on_a_cpu_run_pins_nothing_and_changes_nothing() {
    let fabric = Fabric::builder().accelerator("cpu").build().unwrap();
    let pinned = Arc::new(AtomicUsize::new(0));
    let expected = pinned_epoch(&fabric, &pinned, 0, false);
    for workers in [0, 2] {
        assert_eq!(pinned_epoch(&fabric, &pinned, workers, true), expected);
    }
    assert_eq!(
        pinned.load(Ordering::SeqCst),
        0,
        "no CUDA device, nothing pinned"
    );
}

/// On a machine with a GPU: `cargo test --release --test data -- --ignored pin_memory_on_cuda`.
#[test]
#[ignore = "needs a CUDA device"]
fn pin_memory_on_cuda_pins_every_batch_in_the_workers() {
    let fabric = Fabric::builder()
        .accelerator("cuda")
        .devices(1)
        .build()
        .unwrap();
    let pinned = Arc::new(AtomicUsize::new(0));
    let expected = pinned_epoch(&fabric, &pinned, 0, false);
    assert_eq!(
        pinned.load(Ordering::SeqCst),
        0,
        "pin_memory(false) pins nothing"
    );
    for workers in [0, 1, 3] {
        assert_eq!(
            pinned_epoch(&fabric, &pinned, workers, true),
            expected,
            "{workers} workers"
        );
    }
    assert_eq!(
        pinned.load(Ordering::SeqCst),
        3 * expected.len(),
        "every batch pinned"
    );
}
