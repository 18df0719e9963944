//! Worker threads that make the batches of one epoch ahead of the loop that
//! consumes them, delivered in the epoch's order.
//!
//! The epoch's batches (their sample indices) are decided before the workers
//! start; worker `w` of `n` makes batches `w`, `w + n`, `w + 2n`, ... and
//! hands them over through its own bounded channel, which the consumer reads
//! round-robin. So the batches and their order are those made without
//! workers, whatever `n`, and at most `prefetch` batches per worker exist
//! that the consumer has not taken (in the channel, or being made).

use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::{self, JoinHandle};

use tch::{Device, TchError};

use super::dataset::Dataset;
use crate::error::{Error, Result};

/// The most worker threads a loader starts; more is an error, not a clamp
/// (a number that large is a mistake, and each thread reserves a stack).
pub(crate) const MAX_WORKERS: usize = 1024;

/// Puts a batch in pinned memory for copies to a device.
pub(crate) type PinFn<B> = fn(B, Device) -> std::result::Result<B, TchError>;

/// What each worker needs to know besides the data set and its batches.
pub(crate) struct Plan<B> {
    /// Worker threads (at least 1, at most the number of batches).
    pub workers: usize,
    /// Batches per worker made ahead (at least 1).
    pub prefetch: usize,
    /// The epoch, for messages.
    pub epoch: u64,
    /// Pinning of each batch, and the device it is pinned for.
    pub pin: Option<(PinFn<B>, Device)>,
}

/// Starts the workers of one epoch of `chunks` (the sample indices of each
/// batch, in order).
pub(crate) fn spawn<D>(
    dataset: Arc<D>,
    chunks: Vec<Vec<usize>>,
    plan: Plan<D::Batch>,
) -> Result<Workers<D::Batch>>
where
    D: Dataset + Send + Sync + 'static,
    D::Batch: Send + 'static,
{
    let n = plan.workers.clamp(1, chunks.len().max(1));
    let mut jobs: Vec<Vec<(usize, Vec<usize>)>> = (0..n).map(|_| Vec::new()).collect();
    let total = chunks.len();
    for (index, chunk) in chunks.into_iter().enumerate() {
        jobs[index % n].push((index, chunk));
    }
    let mut workers = Workers {
        receivers: Vec::with_capacity(n),
        handles: Vec::with_capacity(n),
        next: 0,
        total,
        epoch: plan.epoch,
    };
    for (worker, jobs) in jobs.into_iter().enumerate() {
        // The channel holds `prefetch - 1` batches and the worker blocks on
        // sending the next one: `prefetch` in all. No more than the worker's
        // share of the epoch, so a huge `prefetch` allocates nothing extra.
        let (sender, receiver) = sync_channel(plan.prefetch.saturating_sub(1).min(jobs.len()));
        let dataset = Arc::clone(&dataset);
        let (epoch, pin) = (plan.epoch, plan.pin);
        let spawned = thread::Builder::new()
            .name(format!("fabric-data-{worker}"))
            .spawn(move || work(worker, epoch, &*dataset, jobs, pin, sender));
        match spawned {
            Ok(handle) => {
                workers.receivers.push(receiver);
                workers.handles.push(handle);
            }
            // Dropping `workers` stops and joins those already started.
            Err(e) => {
                return Err(Error::Data(format!(
                    "could not start data loading worker {worker} of {n}: {e}"
                )));
            }
        }
    }
    Ok(workers)
}

/// One worker's loop: make each of its batches and send it, until the
/// batches are done, one fails, or the consumer is gone.
fn work<D: Dataset>(
    worker: usize,
    epoch: u64,
    dataset: &D,
    jobs: Vec<(usize, Vec<usize>)>,
    pin: Option<(PinFn<D::Batch>, Device)>,
    sender: SyncSender<Result<D::Batch>>,
) {
    for (index, indices) in jobs {
        let batch = panic::catch_unwind(AssertUnwindSafe(|| make_batch(dataset, &indices, pin)))
            .unwrap_or_else(|payload| {
                Err(Error::Data(format!(
                    "panicked: {}",
                    panic_message(&*payload)
                )))
            })
            .map_err(|e| {
                Error::Data(format!(
                    "data loading worker {worker} failed on batch {index} of epoch {epoch}: {}",
                    message(&e)
                ))
            });
        let failed = batch.is_err();
        // A closed channel means the consumer stopped early: stop too.
        if sender.send(batch).is_err() || failed {
            return;
        }
    }
}

/// The batch of the samples at `indices`, pinned when asked.
pub(crate) fn make_batch<D: Dataset>(
    dataset: &D,
    indices: &[usize],
    pin: Option<(PinFn<D::Batch>, Device)>,
) -> Result<D::Batch> {
    let batch = dataset.get_batch(indices)?;
    match pin {
        Some((pin, device)) => pin(batch, device).map_err(|e| {
            Error::Data(format!(
                "pinning a batch in host memory for {device:?} failed: {e}"
            ))
        }),
        None => Ok(batch),
    }
}

/// An error's message without the `data: ` its variant's display adds.
fn message(error: &Error) -> String {
    match error {
        Error::Data(message) => message.clone(),
        other => other.to_string(),
    }
}

/// The message of a caught panic.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "(a panic without a message)".into())
}

/// The running workers of one epoch. Dropping it stops them and waits for
/// each to end (a worker making a batch finishes that batch first).
pub(crate) struct Workers<B> {
    receivers: Vec<Receiver<Result<B>>>,
    handles: Vec<JoinHandle<()>>,
    /// The index of the next batch to hand out.
    next: usize,
    total: usize,
    epoch: u64,
}

impl<B> Workers<B> {
    /// The next batch in the epoch's order, `None` after the last.
    pub(crate) fn next_batch(&mut self) -> Option<Result<B>> {
        if self.next >= self.total || self.receivers.is_empty() {
            return None;
        }
        let index = self.next;
        self.next += 1;
        let worker = index % self.receivers.len();
        Some(self.receivers[worker].recv().unwrap_or_else(|_| {
            // Every worker sends each of its batches or an error before it
            // ends; a closed channel here means it ended some other way.
            Err(Error::Data(format!(
                "data loading worker {worker} ended without making batch {index} of epoch {}",
                self.epoch
            )))
        }))
    }
}

impl<B> Drop for Workers<B> {
    fn drop(&mut self) {
        // Closed channels make a worker's next send fail, which ends it.
        self.receivers.clear();
        for handle in self.handles.drain(..) {
            // A worker's panics are caught; one that escaped has nothing
            // left to report that the consumer did not already get.
            let _ = handle.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use tch::{Kind, Tensor};

    use super::*;
    use crate::data::{DataLoader, TensorDataset};

    #[test]
    fn a_worker_that_ends_without_its_batch_is_an_error_not_a_short_epoch() {
        let (sender, receiver) = sync_channel::<Result<()>>(1);
        sender.send(Ok(())).unwrap();
        drop(sender);
        let mut workers = Workers {
            receivers: vec![receiver],
            handles: Vec::new(),
            next: 0,
            total: 3,
            epoch: 4,
        };
        assert!(matches!(workers.next_batch(), Some(Ok(()))));
        let err = workers.next_batch().unwrap().unwrap_err().to_string();
        assert!(
            err.contains("data loading worker 0 ended without making batch 1 of epoch 4"),
            "{err}"
        );
    }

    /// Each rank's shard, batch by batch, as (features, labels).
    fn shard_batches(
        rank: usize,
        world: usize,
        workers: usize,
        x: &Tensor,
    ) -> Vec<(Tensor, Tensor)> {
        let n = x.size()[0];
        let labels = Tensor::arange(n, (Kind::Int64, tch::Device::Cpu));
        let dataset = TensorDataset::new((x.shallow_clone(), labels)).unwrap();
        let mut loader = DataLoader::new(dataset)
            .batch_size(4)
            .shuffle(true)
            .seed(9)
            .num_workers(workers);
        loader.set_shard(rank, world);
        loader.set_epoch(2);
        loader.iter().map(Result::unwrap).collect()
    }

    #[test]
    fn a_rank_s_shard_is_the_same_with_workers() {
        let x = Tensor::randn([37, 2], (Kind::Float, tch::Device::Cpu));
        for world in [2, 3] {
            for rank in 0..world {
                let expected = shard_batches(rank, world, 0, &x);
                assert_eq!(expected.len(), 37_usize.div_ceil(world).div_ceil(4));
                for workers in 1..=4 {
                    let got = shard_batches(rank, world, workers, &x);
                    assert_eq!(got.len(), expected.len());
                    for (i, ((a, b), (c, d))) in expected.iter().zip(&got).enumerate() {
                        assert!(
                            a.equal(c) && b.equal(d),
                            "rank {rank} of {world}, {workers} workers: batch {i}"
                        );
                    }
                }
            }
        }
    }
}
