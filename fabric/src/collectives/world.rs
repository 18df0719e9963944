//! The process's MPI library: initialised when the first communicator
//! joins, finalised when the process exits, and a lock that every MPI call
//! is made under.
//!
//! MPI is initialised with `MPI_THREAD_SERIALIZED`: any thread may call
//! MPI, but never two at once in the process. Holding [`lock`] for every
//! call keeps that true whichever threads the communicators are on.
//!
//! MPI cannot be initialised again once finalised, so it stays initialised
//! while the process lives: a `Fabric` dropped frees its communicator and
//! shared window at once, and a later `Fabric` joins the same world again.
//! `MPI_Finalize` runs when the process exits (Open MPI's launcher counts a
//! rank that exits without it as failed), bounded by the watchdog: the
//! other ranks may have failed, and `MPI_Finalize` waits for them.

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
}

static WORLD: Mutex<World> = Mutex::new(World {
    universe: None,
    initialised: false,
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

/// A communicator's share in the MPI world.
#[derive(Debug)]
pub(super) struct Member(());

impl Member {
    /// Initialises MPI if no communicator has yet, starting the watchdog
    /// for `rank`; an error if MPI cannot be initialised (or was finalised
    /// already: at exit). `failure_bound` bounds `MPI_Finalize`.
    pub(super) fn join(rank: usize, failure_bound: Duration) -> Result<Member> {
        let mut world = lock();
        if world.universe.is_none() {
            if world.initialised {
                return Err(Error::Distributed(
                    "MPI was finalised already (the process is exiting), and MPI cannot start twice in one process"
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
        FAILURE_BOUND_MS.store(
            u64::try_from(failure_bound.as_millis()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        Ok(Member(()))
    }
}

/// Finalises MPI (if it is initialised), bounded by the watchdog: the
/// other ranks may have failed, and `MPI_Finalize` waits for them.
fn finalize(world: &mut World) {
    let _armed = watchdog::arm("MPI_Finalize", failure_bound());
    // Dropping the universe calls MPI_Finalize.
    drop(world.universe.take());
}

/// Finalises MPI when the process exits: Open MPI's launcher counts a rank
/// that exits without `MPI_Finalize` as failed. Registered when MPI is
/// initialised, as MPI requires of a process that initialises it.
extern "C" fn finalize_at_exit() {
    // Armed before the lock is taken: a thread may hold it in a collective.
    let _armed = watchdog::arm("MPI_Finalize", failure_bound());
    let mut world = lock();
    if world.universe.is_some() {
        finalize(&mut world);
    }
}
