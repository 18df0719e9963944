//! The global seed set by [`Fabric::seed_everything`](crate::Fabric::seed_everything).

use std::sync::Mutex;

static GLOBAL_SEED: Mutex<Option<u64>> = Mutex::new(None);

/// Seeds libtorch's generators (CPU and every CUDA device) and records the
/// seed for data loaders that shuffle without a seed of their own.
pub(crate) fn seed_everything(seed: u64) {
    // libtorch takes the seed's bits as a u64; tch's signature is i64.
    tch::manual_seed(seed as i64);
    *GLOBAL_SEED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(seed);
}

/// The seed last given to `seed_everything`, if any.
pub(crate) fn global_seed() -> Option<u64> {
    *GLOBAL_SEED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
