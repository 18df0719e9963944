//! The process's MPI library: initialised when the first communicator
//! joins, finalised when the last one is dropped, and a lock that every
//! MPI call is made under.
//!
//! MPI is initialised with `MPI_THREAD_SERIALIZED`: any thread may call
//! MPI, but never two at once in the process. Holding [`lock`] for every
//! call keeps that true whichever threads the communicators are on.
//!
//! MPI cannot be initialised again once finalised: a process takes part in
//! one MPI world, which ends with its last communicator (its last
//! multi-process `Fabric`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use mpi::environment::Universe;

use super::watchdog;
use crate::error::{Error, Result};

/// The MPI library's state in this process.
pub(super) struct World {
    /// Initialised and not yet finalised (dropping it finalises).
    universe: Option<Universe>,
    /// Whether `MPI_Init` was called (it may be called once per process).
    initialised: bool,
    /// Live communicators ([`Member`]s).
    members: usize,
}

static WORLD: Mutex<World> = Mutex::new(World {
    universe: None,
    initialised: false,
    members: 0,
});

/// How long `MPI_Finalize` may take before the process ends anyway, in
/// milliseconds (outside the lock, which the exit handler cannot wait for).
static FAILURE_BOUND_MS: AtomicU64 = AtomicU64::new(10_000);

fn failure_bound() -> Duration {
    Duration::from_millis(FAILURE_BOUND_MS.load(Ordering::Relaxed))
}

/// The lock every MPI call of the process is made under.
pub(super) fn lock() -> MutexGuard<'static, World> {
    WORLD
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A communicator's share in the MPI world: MPI stays initialised while
/// one lives, and is finalised when the last is dropped.
#[derive(Debug)]
pub(super) struct Member(());

impl Member {
    /// Initialises MPI if no communicator has yet, starting the watchdog
    /// for `rank`; an error if MPI cannot be initialised or was finalised
    /// already. `failure_bound` bounds `MPI_Finalize`.
    pub(super) fn join(rank: usize, failure_bound: Duration) -> Result<Member> {
        let mut world = lock();
        if world.universe.is_none() {
            if world.initialised {
                return Err(Error::Distributed(
                    "MPI was finalised when this process's last multi-process Fabric was dropped, and MPI cannot start twice in one process: \
                     keep one Fabric for the whole run"
                        .into(),
                ));
            }
            world.initialised = true;
            let universe =
                mpi::initialize_with_threading(mpi::Threading::Serialized).map(|(u, _)| u);
            let Some(universe) = universe else {
                return Err(Error::Distributed(
                    "MPI could not be initialised (it was initialised outside fabric)".into(),
                ));
            };
            world.universe = Some(universe);
            // SAFETY: registers a plain `extern "C"` function, once (MPI
            // is initialised once).
            unsafe { libc::atexit(finalize_at_exit) };
        }
        watchdog::start(rank);
        world.members += 1;
        FAILURE_BOUND_MS.store(
            u64::try_from(failure_bound.as_millis()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        Ok(Member(()))
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let mut world = lock();
        world.members -= 1;
        if world.members == 0 {
            finalize(&mut world);
        }
    }
}

/// Finalises MPI (if it is initialised), bounded by the watchdog: the
/// other ranks may have failed, and `MPI_Finalize` waits for them.
fn finalize(world: &mut World) {
    let _armed = watchdog::arm("MPI_Finalize", failure_bound());
    // Dropping the universe calls MPI_Finalize.
    drop(world.universe.take());
}

/// The backstop for a communicator that was never dropped (a `Fabric`
/// leaked, or `exit` called while one lives): Open MPI's launcher counts a
/// rank that exits without `MPI_Finalize` as failed.
extern "C" fn finalize_at_exit() {
    // Armed before the lock is taken: a thread may hold it in a collective.
    let _armed = watchdog::arm("MPI_Finalize", failure_bound());
    let mut world = lock();
    if world.universe.is_some() {
        finalize(&mut world);
    }
}
