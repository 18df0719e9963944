//! [`DataLoader`]: batches from a data set, in a sampled order, made on the
//! consuming thread or by worker threads.

use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use tch::Device;

use super::dataset::Dataset;
use super::pin::PinMemory;
use super::sampler::{RandomSampler, Sampler, SequentialSampler};
use super::workers::{self, MAX_WORKERS, PinFn, Plan, Workers};
use crate::error::{Error, Result};
use crate::seed;

type Spawner<D> = fn(
    Arc<D>,
    Vec<Vec<usize>>,
    Plan<<D as Dataset>::Batch>,
) -> Result<Workers<<D as Dataset>::Batch>>;

/// How a batch type is pinned, and moved from pinned memory to a device.
pub(crate) struct Pinning<B> {
    pub pin: PinFn<B>,
    pub transfer: PinFn<B>,
}

impl<B> Clone for Pinning<B> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<B> Copy for Pinning<B> {}

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
/// - [`num_workers`](Self::num_workers) makes batches on worker threads
///   while the current one trains, [`prefetch_factor`](Self::prefetch_factor)
///   ahead per worker; the batches and their order are the same for any
///   number of workers.
/// - [`pin_memory`](Self::pin_memory) puts batches in pinned memory when
///   the run's device is CUDA.
///
/// Each call to [`iter`](Self::iter) is one epoch; the epoch number advances
/// after each call, or is set with [`set_epoch`](Self::set_epoch).
///
/// The loader knows how far its current epoch went: its
/// [`position`](Self::position) (epoch, batches taken, seed) is what a
/// checkpoint holds with [`State::loader`](crate::checkpoint::State::loader),
/// and a loader given a saved position goes on with the batches of that
/// epoch not yet taken, in the same order, without making the others.
///
/// ```
/// use fabric::data::{DataLoader, TensorDataset};
/// use tch::{Device, Kind, Tensor};
///
/// let x = Tensor::arange(100, (Kind::Float, Device::Cpu)).view([100, 1]);
/// let batches = |workers| -> Vec<Vec<f32>> {
///     let dataset = TensorDataset::new(x.shallow_clone()).unwrap();
///     let mut loader = DataLoader::new(dataset).batch_size(8).shuffle(true).seed(3).num_workers(workers);
///     loader.iter().map(|b| Vec::try_from(b.unwrap().view([-1])).unwrap()).collect()
/// };
/// assert_eq!(batches(3), batches(0), "3 workers make what the loop alone makes");
/// ```
pub struct DataLoader<D: Dataset> {
    dataset: Arc<D>,
    batch_size: usize,
    drop_last: bool,
    shuffle: bool,
    seed: Option<u64>,
    fallback_seed: u64,
    sampler: Option<Box<dyn Sampler>>,
    epoch: u64,
    /// The number of workers, and how to start them (0: none).
    workers: (usize, Option<Spawner<D>>),
    prefetch_factor: usize,
    pinning: Option<Pinning<D::Batch>>,
    /// The device batches are pinned for: set by fabric for CUDA runs.
    pin_device: Option<Device>,
    /// This rank's shard: (rank, world size).
    shard: Option<(usize, usize)>,
    /// Batches of the next epoch to skip (taken before a checkpoint).
    skip: usize,
    /// How far the epoch being iterated went, shared with its [`Batches`].
    cursor: Arc<Mutex<Cursor>>,
}

/// The epoch a [`Batches`] is iterating and the batches it yielded; which
/// `Batches` (the latest `iter`) it tracks.
#[derive(Debug, Default)]
struct Cursor {
    generation: u64,
    /// (epoch, batches yielded), while the latest `Batches` has not ended.
    active: Option<(u64, usize)>,
}

fn lock(cursor: &Mutex<Cursor>) -> MutexGuard<'_, Cursor> {
    cursor.lock().unwrap_or_else(|p| p.into_inner())
}

/// Where a [`DataLoader`] is in its epochs: what a checkpoint saves with
/// [`State::loader`](crate::checkpoint::State::loader) and
/// [`DataLoader::restore_position`] continues from. The order of an epoch
/// is a function of the seed and the epoch number (or of the custom
/// sampler's `indices(len, epoch)`), so the position needs no list of
/// indices; worker threads hold nothing between epochs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoaderPosition {
    /// The epoch in progress (or the next one, if none is).
    pub epoch: u64,
    /// Batches of `epoch` the loop has taken.
    pub consumed: usize,
    /// Batches in `epoch` (of this rank's shard).
    pub batches: usize,
    /// The seed of the shuffled order.
    pub seed: u64,
    /// Whether the order is shuffled.
    pub shuffle: bool,
    /// Whether a custom sampler gives the order.
    pub custom_sampler: bool,
    /// Samples per batch.
    pub batch_size: usize,
    /// Samples in the data set.
    pub samples: usize,
    /// This rank's shard, as (rank, world size), when the loader was set up
    /// for several processes.
    pub shard: Option<(usize, usize)>,
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
            .field("num_workers", &self.workers.0)
            .field("prefetch_factor", &self.prefetch_factor)
            .field("pin_memory", &self.pinning.is_some())
            .field("pin_device", &self.pin_device)
            .finish()
    }
}

impl<D: Dataset> DataLoader<D> {
    /// A loader over `dataset`: batches of 1, in order, made on the thread
    /// that iterates.
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
            workers: (0, None),
            prefetch_factor: 2,
            pinning: None,
            pin_device: None,
            shard: None,
            skip: 0,
            cursor: Arc::default(),
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

    /// Batches each worker makes ahead of the loop, as PyTorch's
    /// `prefetch_factor` (2 by default): at most `num_workers *
    /// prefetch_factor` batches exist that the loop has not taken, counting
    /// those being made. At least 1 when there are workers (0 makes
    /// iteration yield an error); without workers it has no effect.
    pub fn prefetch_factor(mut self, prefetch_factor: usize) -> Self {
        self.prefetch_factor = prefetch_factor;
        self
    }

    /// Sets the number of the next epoch, which seeds its order. Another
    /// epoch than the current one starts at its first batch; the current
    /// one keeps a position restored from a checkpoint, so that the usual
    /// loop (`for e in start..epochs { loader.set_epoch(e); ... }`, with
    /// `start` the restored epoch) goes on with the batches not yet seen.
    pub fn set_epoch(&mut self, epoch: u64) {
        if epoch != self.epoch {
            self.epoch = epoch;
            self.skip = 0;
        }
    }

    /// Where the loader is: the epoch being iterated and the batches its
    /// loop took, while its [`Batches`] (of the latest [`iter`](Self::iter))
    /// has neither ended nor been dropped; otherwise the next epoch, from
    /// the batch it will start at.
    pub fn position(&self) -> LoaderPosition {
        let (epoch, consumed) = lock(&self.cursor).active.unwrap_or((self.epoch, self.skip));
        LoaderPosition {
            epoch,
            consumed,
            batches: self.len_of(epoch),
            seed: self.effective_seed(),
            shuffle: self.shuffle,
            custom_sampler: self.sampler.is_some(),
            batch_size: self.batch_size,
            samples: self.dataset.len(),
            shard: self.shard,
        }
    }

    /// Why `saved` cannot continue in this loader, if it cannot: a loader
    /// of another data set size, batch size, number of batches, order or
    /// shard.
    pub fn check_position(&self, saved: &LoaderPosition) -> Option<String> {
        let ours = self.position();
        let mut problems = Vec::new();
        let mut differ = |what: &str, theirs: String, ours: String| {
            if theirs != ours {
                problems.push(format!(
                    "{what} is {theirs} in the checkpoint and {ours} here"
                ));
            }
        };
        differ(
            "the data set size",
            saved.samples.to_string(),
            ours.samples.to_string(),
        );
        differ(
            "the batch size",
            saved.batch_size.to_string(),
            ours.batch_size.to_string(),
        );
        differ(
            "shuffling",
            saved.shuffle.to_string(),
            ours.shuffle.to_string(),
        );
        differ(
            "a custom sampler",
            saved.custom_sampler.to_string(),
            ours.custom_sampler.to_string(),
        );
        let shard = |s: Option<(usize, usize)>| match s {
            Some((rank, world)) => format!("rank {rank} of {world}"),
            None => "one process".into(),
        };
        differ("the shard", shard(saved.shard), shard(ours.shard));
        if problems.is_empty() {
            let batches = self.len_of(saved.epoch);
            if batches != saved.batches {
                problems.push(format!(
                    "epoch {} has {} batches in the checkpoint and {batches} here",
                    saved.epoch, saved.batches
                ));
            }
        }
        if saved.consumed > saved.batches {
            problems.push(format!(
                "{} batches of {} were taken",
                saved.consumed, saved.batches
            ));
        }
        (!problems.is_empty()).then(|| problems.join(", "))
    }

    /// Continues from `saved`: the next [`iter`](Self::iter) yields the
    /// batches of epoch `saved.epoch` after the first `saved.consumed`, in
    /// the order they had, with the seed it had; those before are not
    /// made. An iteration in progress stops counting. An error (and no
    /// change) if [`check_position`](Self::check_position) finds a problem.
    pub fn restore_position(&mut self, saved: &LoaderPosition) -> Result<()> {
        if let Some(problem) = self.check_position(saved) {
            return Err(Error::Data(format!(
                "cannot continue from the saved loader position: {problem}"
            )));
        }
        self.epoch = saved.epoch;
        self.skip = saved.consumed;
        self.seed = Some(saved.seed);
        let mut cursor = lock(&self.cursor);
        cursor.generation += 1;
        cursor.active = None;
        Ok(())
    }

    /// The number of the next epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The data set.
    pub fn dataset(&self) -> &D {
        &self.dataset
    }

    /// The number of worker threads (0: batches are made by the thread that
    /// iterates).
    pub fn workers(&self) -> usize {
        self.workers.0
    }

    /// The number of batches in the next epoch (of this rank's shard, once
    /// set up for several processes): of the samples a custom
    /// [`sampler`](Self::sampler) visits in that epoch, else of the whole
    /// data set.
    /// It counts the whole epoch, also the batches that a
    /// [restored position](Self::restore_position) skips.
    pub fn len(&self) -> usize {
        self.len_of(self.epoch)
    }

    /// The number of batches in epoch `epoch`.
    fn len_of(&self, epoch: u64) -> usize {
        let visited = match &self.sampler {
            Some(sampler) => sampler.indices(self.dataset.len(), epoch).len(),
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

    /// How batches are pinned, if [`pin_memory`](Self::pin_memory) asked.
    pub(crate) fn pinning(&self) -> Option<Pinning<D::Batch>> {
        self.pinning
    }

    /// Pins batches for `device` from the next epoch on (when
    /// [`pin_memory`](Self::pin_memory) asked).
    pub(crate) fn set_pin_device(&mut self, device: Device) {
        self.pin_device = Some(device);
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

    /// The batches of the next epoch, then advances the epoch number. After
    /// [`restore_position`](Self::restore_position), the batches of the
    /// restored epoch that were not taken.
    pub fn iter(&mut self) -> Batches<D> {
        let epoch = self.epoch;
        let skip = std::mem::take(&mut self.skip);
        self.epoch += 1;
        let generation = {
            let mut cursor = lock(&self.cursor);
            cursor.generation += 1;
            cursor.active = Some((epoch, skip));
            cursor.generation
        };
        let state = match self.start(epoch, skip) {
            Ok(state) => state,
            Err(error) => State::Done(Some(error)),
        };
        Batches {
            state,
            cursor: Arc::clone(&self.cursor),
            generation,
        }
    }

    fn start(&self, epoch: u64, skip: usize) -> Result<State<D>> {
        if self.batch_size == 0 {
            return Err(Error::Data("batch size must be at least 1".into()));
        }
        let (workers, spawn) = self.workers;
        if workers > MAX_WORKERS {
            return Err(Error::Data(format!(
                "num_workers is {workers}; a loader starts at most {MAX_WORKERS} worker threads"
            )));
        }
        if workers > 0 && self.prefetch_factor == 0 {
            return Err(Error::Data(
                "prefetch_factor must be at least 1 with workers (it is the number of batches each worker makes ahead)"
                    .into(),
            ));
        }
        let order = self.order(epoch);
        let mut chunks: Vec<Vec<usize>> = order
            .chunks(self.batch_size)
            .map(<[usize]>::to_vec)
            .collect();
        if self.drop_last && chunks.last().is_some_and(|c| c.len() < self.batch_size) {
            chunks.pop();
        }
        // Batches taken before a checkpoint: only their indices were made.
        chunks.drain(..skip.min(chunks.len()));
        let pin = self.pinning.zip(self.pin_device).map(|(p, d)| (p.pin, d));
        Ok(match spawn {
            Some(spawn) if workers > 0 && !chunks.is_empty() => {
                let plan = Plan {
                    workers,
                    prefetch: self.prefetch_factor,
                    epoch,
                    pin,
                };
                State::Workers(spawn(Arc::clone(&self.dataset), chunks, plan)?)
            }
            _ => State::Inline {
                dataset: Arc::clone(&self.dataset),
                chunks: chunks.into_iter(),
                pin,
            },
        })
    }
}

impl<D> DataLoader<D>
where
    D: Dataset + Send + Sync + 'static,
    D::Batch: Send + 'static,
{
    /// Makes the batches on `num_workers` threads, as PyTorch's
    /// `num_workers` (0, the default, makes them on the thread that
    /// iterates). The batches and their order do not depend on it: the
    /// epoch's sample indices are decided first, worker `w` makes batches
    /// `w`, `w + num_workers`, ..., and the loop receives them in order.
    /// The workers share the data set (it is `Sync`), start with each
    /// epoch, and are stopped and joined when its [`Batches`] is dropped.
    /// A batch a worker cannot make (an error, or a panic of the data set)
    /// is an `Err` item in its place naming the worker and the batch, after
    /// which the epoch ends. At most 1024 workers; fewer are started when
    /// the epoch has fewer batches.
    ///
    /// Workers pay off when [`Dataset::get_batch`] does work on the CPU
    /// (decoding, augmenting); a [`TensorDataset`](super::TensorDataset)
    /// makes one batch at a time (its tensors are behind a lock), so for
    /// it one worker, overlapping batches with training, is enough.
    ///
    /// The data set must be `Send + Sync` and its batches `Send`; one that
    /// is not (it keeps a `Cell`, an `Rc`) still loads without workers:
    ///
    /// ```compile_fail,E0599
    /// use std::cell::Cell;
    /// use fabric::data::{DataLoader, Dataset};
    ///
    /// struct Counted { calls: Cell<u64> }
    ///
    /// impl Dataset for Counted {
    ///     type Batch = u64;
    ///     fn len(&self) -> usize { 1 }
    ///     fn get_batch(&self, _: &[usize]) -> fabric::Result<u64> {
    ///         self.calls.set(self.calls.get() + 1); // a data race on two threads
    ///         Ok(self.calls.get())
    ///     }
    /// }
    ///
    /// let loader = DataLoader::new(Counted { calls: Cell::new(0) }).num_workers(2);
    /// ```
    pub fn num_workers(mut self, num_workers: usize) -> Self {
        self.workers = (num_workers, Some(workers::spawn::<D> as Spawner<D>));
        self
    }

    /// Prepares up to `depth` batches ahead on a background thread (0 turns
    /// prefetching off).
    #[deprecated(note = "use `.num_workers(1).prefetch_factor(depth)`, or `.num_workers(0)` for 0")]
    pub fn prefetch(self, depth: usize) -> Self {
        match depth {
            0 => self.num_workers(0),
            depth => self.num_workers(1).prefetch_factor(depth),
        }
    }
}

impl<D> DataLoader<D>
where
    D: Dataset,
    D::Batch: PinMemory,
{
    /// Whether to put batches in pinned (page-locked) host memory, as
    /// PyTorch's `pin_memory`: copies from it to a CUDA device are faster
    /// and do not make the host wait. Batches are pinned by the workers (or
    /// the iterating thread without workers), and take effect in the loader
    /// that [`Fabric::setup_dataloaders`](crate::Fabric::setup_dataloaders)
    /// returns when the run's device is CUDA, which then moves them with
    /// `non_blocking` copies. Elsewhere (a CPU run, a machine without CUDA)
    /// there is nothing to pin for and batches are made as without it.
    pub fn pin_memory(mut self, pin_memory: bool) -> Self {
        self.pinning = pin_memory.then_some(Pinning {
            pin: <D::Batch as PinMemory>::try_pin_memory,
            transfer: <D::Batch as PinMemory>::try_to_device_non_blocking,
        });
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

enum State<D: Dataset> {
    Inline {
        dataset: Arc<D>,
        chunks: std::vec::IntoIter<Vec<usize>>,
        pin: Option<(PinFn<D::Batch>, Device)>,
    },
    Workers(Workers<D::Batch>),
    /// Ended, with an error still to report.
    Done(Option<Error>),
}

/// The batches of one epoch of a [`DataLoader`]; a batch that cannot be made
/// is an `Err` item, after which the epoch ends. Dropping it before the end
/// stops the loader's workers and waits for them.
pub struct Batches<D: Dataset> {
    state: State<D>,
    cursor: Arc<Mutex<Cursor>>,
    generation: u64,
}

impl<D: Dataset> Batches<D> {
    /// Ends the loader's tracking of this epoch, unless a later `iter` or a
    /// restored position replaced it.
    fn end(&self) {
        let mut cursor = lock(&self.cursor);
        if cursor.generation == self.generation {
            cursor.active = None;
        }
    }
}

impl<D: Dataset> Drop for Batches<D> {
    fn drop(&mut self) {
        self.end();
    }
}

impl<D: Dataset> Iterator for Batches<D> {
    type Item = Result<D::Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        let batch = match &mut self.state {
            State::Inline {
                dataset,
                chunks,
                pin,
            } => chunks
                .next()
                .map(|chunk| workers::make_batch(&**dataset, &chunk, *pin)),
            State::Workers(workers) => workers.next_batch(),
            State::Done(error) => {
                let error = error.take();
                self.end();
                return error.map(Err);
            }
        };
        if matches!(batch, Some(Ok(_))) {
            let mut cursor = lock(&self.cursor);
            if cursor.generation == self.generation
                && let Some((_, taken)) = &mut cursor.active
            {
                *taken += 1;
            }
        } else {
            // The end or an error: the workers are done, join them now.
            self.state = State::Done(None);
            self.end();
        }
        batch
    }
}

impl<D: Dataset> IntoIterator for &mut DataLoader<D> {
    type Item = Result<D::Batch>;
    type IntoIter = Batches<D>;

    fn into_iter(self) -> Batches<D> {
        self.iter()
    }
}
