//! Samplers: the order in which a loader visits a data set.

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

/// Decides which samples an epoch visits and in which order.
///
/// The distributed sampler of multi-process training is one of these: each
/// rank visits its own shard.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a sampler",
    note = "implement `fabric::data::Sampler` for `{Self}`"
)]
pub trait Sampler: Send {
    /// The sample indices of epoch `epoch` of a data set of `len` samples.
    /// It must be a function of `len` and `epoch` alone (draw from a
    /// generator seeded by them, not from libtorch's global one): the
    /// loader calls it again to count and to resume an epoch, and a
    /// checkpoint's position is only exact if the order comes back.
    fn indices(&self, len: usize, epoch: u64) -> Vec<usize>;
}

/// Visits every sample in order.
#[derive(Debug, Clone, Copy, Default)]
pub struct SequentialSampler;

impl Sampler for SequentialSampler {
    fn indices(&self, len: usize, _epoch: u64) -> Vec<usize> {
        (0..len).collect()
    }
}

/// Visits every sample in an order drawn from `seed + epoch`: the same seed
/// and epoch give the same order on every machine (ChaCha8, which is
/// portable), and each epoch a new one.
#[derive(Debug, Clone, Copy)]
pub struct RandomSampler {
    seed: u64,
}

impl RandomSampler {
    /// A sampler drawing from `seed`.
    pub fn new(seed: u64) -> Self {
        RandomSampler { seed }
    }
}

impl Sampler for RandomSampler {
    fn indices(&self, len: usize, epoch: u64) -> Vec<usize> {
        let mut indices: Vec<usize> = (0..len).collect();
        indices.shuffle(&mut ChaCha8Rng::seed_from_u64(
            self.seed.wrapping_add(epoch),
        ));
        indices
    }
}
