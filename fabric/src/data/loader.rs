//! [`DataLoader`]: batches from a data set, in a sampled order, optionally
//! prepared on a background thread.

use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, sync_channel};
use std::thread;

use tch::Device;

use super::dataset::Dataset;
use super::sampler::{RandomSampler, Sampler, SequentialSampler};
use crate::device::ToDevice;
use crate::error::{Error, Result};
use crate::seed;

type Spawner<D> = fn(Arc<D>, Vec<Vec<usize>>, usize) -> Receiver<Result<<D as Dataset>::Batch>>;

/// Draws batches from a [`Dataset`], as PyTorch's `DataLoader`.
///
/// - `batch_size` samples per batch (1 by default); the last batch is
///   smaller unless [`drop_last`](Self::drop_last) drops it.
/// - [`shuffle`](Self::shuffle) visits the samples in a new order each epoch,
///   drawn from [`seed`](Self::seed), else from the seed given to
///   [`Fabric::seed_everything`](crate::Fabric::seed_everything), else from
///   a seed picked when the loader is made. The same seed gives the same
///   orders.
/// - [`sampler`](Self::sampler) replaces the order altogether.
/// - [`prefetch`](Self::prefetch) prepares the next batches on a background
///   thread while the current one trains.
///
/// Each call to [`iter`](Self::iter) is one epoch; the epoch number advances
/// after each call, or is set with [`set_epoch`](Self::set_epoch).
pub struct DataLoader<D: Dataset> {
    dataset: Arc<D>,
    batch_size: usize,
    drop_last: bool,
    shuffle: bool,
    seed: Option<u64>,
    fallback_seed: u64,
    sampler: Option<Box<dyn Sampler>>,
    epoch: u64,
    prefetch: Option<(usize, Spawner<D>)>,
    /// This rank's shard: (rank, world size).
    shard: Option<(usize, usize)>,
}

impl<D: Dataset> std::fmt::Debug for DataLoader<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataLoader")
            .field("samples", &self.dataset.len())
            .field("batch_size", &self.batch_size)
            .field("drop_last", &self.drop_last)
            .field("shuffle", &self.shuffle)
            .field("seed", &self.seed)
            .field("custom_sampler", &self.sampler.is_some())
            .field("epoch", &self.epoch)
            .field("prefetch", &self.prefetch.map(|(n, _)| n))
            .finish()
    }
}

impl<D: Dataset> DataLoader<D> {
    /// A loader over `dataset`: batches of 1, in order, no prefetching.
    pub fn new(dataset: D) -> Self {
        DataLoader {
            dataset: Arc::new(dataset),
            batch_size: 1,
            drop_last: false,
            shuffle: false,
            seed: None,
            fallback_seed: rand::random(),
            sampler: None,
            epoch: 0,
            prefetch: None,
            shard: None,
        }
    }

    /// Samples per batch (at least 1; 0 makes iteration yield an error).
    pub fn batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size;
        self
    }

    /// Whether to drop the last batch when it is smaller than `batch_size`.
    pub fn drop_last(mut self, drop_last: bool) -> Self {
        self.drop_last = drop_last;
        self
    }

    /// Whether to visit the samples in a new random order each epoch.
    pub fn shuffle(mut self, shuffle: bool) -> Self {
        self.shuffle = shuffle;
        self
    }

    /// The seed of the shuffled orders.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Visits samples in the order `sampler` gives, instead of in order or
    /// shuffled.
    pub fn sampler(mut self, sampler: impl Sampler + 'static) -> Self {
        self.sampler = Some(Box::new(sampler));
        self
    }

    /// Sets the number of the next epoch, which seeds its order.
    pub fn set_epoch(&mut self, epoch: u64) {
        self.epoch = epoch;
    }

    /// The number of the next epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The data set.
    pub fn dataset(&self) -> &D {
        &self.dataset
    }

    /// The number of batches in the next epoch (of this rank's shard, once
    /// set up for several processes): of the samples a custom
    /// [`sampler`](Self::sampler) visits in that epoch, else of the whole
    /// data set.
    pub fn len(&self) -> usize {
        let visited = match &self.sampler {
            Some(sampler) => sampler.indices(self.dataset.len(), self.epoch).len(),
            None => self.dataset.len(),
        };
        let samples = match self.shard {
            Some((_, world)) if world > 0 => visited.div_ceil(world),
            Some(_) => 0,
            None => visited,
        };
        match self.batch_size {
            0 => 0,
            b if self.drop_last => samples / b,
            b => samples.div_ceil(b),
        }
    }

    /// Whether an epoch has no batch.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The seed shuffling uses: the loader's, else the global one, else
    /// the one picked when the loader was made.
    pub(crate) fn effective_seed(&self) -> u64 {
        self.seed
            .or_else(seed::global_seed)
            .unwrap_or(self.fallback_seed)
    }

    /// Makes the loader visit only rank `rank`'s shard of each epoch.
    pub(crate) fn set_shard(&mut self, rank: usize, world: usize) {
        self.shard = Some((rank, world));
    }

    fn order(&self, epoch: u64) -> Vec<usize> {
        let len = self.dataset.len();
        let order = match &self.sampler {
            Some(sampler) => sampler.indices(len, epoch),
            None if self.shuffle => RandomSampler::new(self.effective_seed()).indices(len, epoch),
            None => SequentialSampler.indices(len, epoch),
        };
        match self.shard {
            Some((rank, world)) => shard(&order, rank, world),
            None => order,
        }
    }

    /// The batches of the next epoch, then advances the epoch number.
    pub fn iter(&mut self) -> Batches<D> {
        let epoch = self.epoch;
        self.epoch += 1;
        if self.batch_size == 0 {
            return Batches {
                state: State::Failed(Some(Error::Data("batch size must be at least 1".into()))),
            };
        }
        let order = self.order(epoch);
        let mut chunks: Vec<Vec<usize>> = order
            .chunks(self.batch_size)
            .map(<[usize]>::to_vec)
            .collect();
        if self.drop_last && chunks.last().is_some_and(|c| c.len() < self.batch_size) {
            chunks.pop();
        }
        let state = match self.prefetch {
            Some((depth, spawn)) => {
                State::Prefetch(spawn(Arc::clone(&self.dataset), chunks, depth))
            }
            None => State::Inline {
                dataset: Arc::clone(&self.dataset),
                chunks: chunks.into_iter(),
            },
        };
        Batches { state }
    }
}

impl<D> DataLoader<D>
where
    D: Dataset + Send + Sync + 'static,
    D::Batch: Send + 'static,
{
    /// Prepares up to `depth` batches ahead on a background thread (0 turns
    /// prefetching off).
    pub fn prefetch(mut self, depth: usize) -> Self {
        self.prefetch = (depth > 0).then_some((depth, spawn_prefetch::<D> as Spawner<D>));
        self
    }
}

/// Rank `rank`'s shard of `order`, as PyTorch's `DistributedSampler`:
/// `order` padded by repeating its start to a multiple of `world`, then every
/// `world`-th index from position `rank`.
pub(crate) fn shard(order: &[usize], rank: usize, world: usize) -> Vec<usize> {
    if order.is_empty() || world == 0 {
        return Vec::new();
    }
    let total = order.len().div_ceil(world) * world;
    (rank..total)
        .step_by(world)
        .map(|i| order[i % order.len()])
        .collect()
}

fn spawn_prefetch<D>(
    dataset: Arc<D>,
    chunks: Vec<Vec<usize>>,
    depth: usize,
) -> Receiver<Result<D::Batch>>
where
    D: Dataset + Send + Sync + 'static,
    D::Batch: Send + 'static,
{
    let (sender, receiver) = sync_channel(depth);
    thread::spawn(move || {
        for chunk in chunks {
            // A panic in the data set ends the epoch with an error, rather
            // than silently, as a closed channel would.
            let batch = panic::catch_unwind(AssertUnwindSafe(|| dataset.get_batch(&chunk)))
                .unwrap_or_else(|payload| {
                    Err(Error::Data(format!(
                        "the data set panicked while making a batch on the prefetching thread: {}",
                        panic_message(&*payload)
                    )))
                });
            let failed = batch.is_err();
            // A closed channel means the consumer stopped early: stop too.
            if sender.send(batch).is_err() || failed {
                break;
            }
        }
    });
    receiver
}

enum State<D: Dataset> {
    Inline {
        dataset: Arc<D>,
        chunks: std::vec::IntoIter<Vec<usize>>,
    },
    Prefetch(Receiver<Result<D::Batch>>),
    Failed(Option<Error>),
}

/// The batches of one epoch of a [`DataLoader`]; a batch that cannot be made
/// is an `Err` item, after which the epoch ends.
pub struct Batches<D: Dataset> {
    state: State<D>,
}

impl<D: Dataset> Iterator for Batches<D> {
    type Item = Result<D::Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        match &mut self.state {
            State::Inline { dataset, chunks } => {
                let batch = dataset.get_batch(&chunks.next()?);
                if batch.is_err() {
                    self.state = State::Failed(None);
                }
                Some(batch)
            }
            State::Prefetch(receiver) => receiver.recv().ok(),
            State::Failed(error) => error.take().map(Err),
        }
    }
}

impl<D: Dataset> IntoIterator for &mut DataLoader<D> {
    type Item = Result<D::Batch>;
    type IntoIter = Batches<D>;

    fn into_iter(self) -> Batches<D> {
        self.iter()
    }
}

/// A [`DataLoader`] set up by [`Fabric::setup_dataloaders`](crate::Fabric::setup_dataloaders):
/// its batches arrive on the run's device.
#[derive(Debug)]
pub struct FabricDataLoader<D: Dataset> {
    loader: DataLoader<D>,
    device: Device,
}

impl<D: Dataset> FabricDataLoader<D>
where
    D::Batch: ToDevice,
{
    pub(crate) fn new(loader: DataLoader<D>, device: Device) -> Self {
        FabricDataLoader { loader, device }
    }

    /// The batches of the next epoch, on the run's device.
    pub fn iter(&mut self) -> DeviceBatches<D> {
        DeviceBatches {
            batches: self.loader.iter(),
            device: self.device,
            failed: false,
        }
    }

    /// Sets the number of the next epoch, which seeds its order.
    pub fn set_epoch(&mut self, epoch: u64) {
        self.loader.set_epoch(epoch);
    }

    /// The number of batches in an epoch.
    pub fn len(&self) -> usize {
        self.loader.len()
    }

    /// Whether an epoch has no batch.
    pub fn is_empty(&self) -> bool {
        self.loader.is_empty()
    }

    /// The wrapped loader.
    pub fn loader(&self) -> &DataLoader<D> {
        &self.loader
    }
}

impl<D: Dataset> IntoIterator for &mut FabricDataLoader<D>
where
    D::Batch: ToDevice,
{
    type Item = Result<D::Batch>;
    type IntoIter = DeviceBatches<D>;

    fn into_iter(self) -> DeviceBatches<D> {
        self.iter()
    }
}

/// The batches of one epoch of a [`FabricDataLoader`], on the run's device;
/// a batch that cannot be moved there (the device is out of memory) is an
/// `Err` item, after which the epoch ends.
pub struct DeviceBatches<D: Dataset> {
    batches: Batches<D>,
    device: Device,
    failed: bool,
}

impl<D: Dataset> Iterator for DeviceBatches<D>
where
    D::Batch: ToDevice,
{
    type Item = Result<D::Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let moved = self
            .batches
            .next()?
            .and_then(|batch| move_to_device(batch, self.device));
        self.failed = moved.is_err();
        Some(moved)
    }
}

/// `batch` on `device`, or libtorch's error that prevented the move (a
/// CUDA device out of memory).
fn move_to_device<B: ToDevice>(batch: B, device: Device) -> Result<B> {
    batch
        .try_to_device(device)
        .map_err(|e| Error::Data(format!("moving a batch to {device:?} failed: {e}")))
}

/// The message of a caught panic.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "(a panic without a message)".into())
}

#[cfg(test)]
mod tests {
    use tch::{Kind, Tensor};

    use super::*;
    use crate::data::TensorDataset;

    #[test]
    fn a_batch_that_cannot_reach_the_device_is_an_err_not_a_panic() {
        let dataset = TensorDataset::new(Tensor::arange(6, (Kind::Float, Device::Cpu))).unwrap();
        // libtorch's builds have no Vulkan backend: the move fails.
        let mut loader =
            FabricDataLoader::new(DataLoader::new(dataset).batch_size(2), Device::Vulkan);
        let items: Vec<_> = loader.iter().collect();
        assert_eq!(items.len(), 1, "the epoch ends at the first error");
        let err = items[0].as_ref().unwrap_err().to_string();
        assert!(err.contains("moving a batch to Vulkan failed"), "{err}");
    }
}
