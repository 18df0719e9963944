//! The watchdog that keeps a rank from waiting forever on the others.
//!
//! Every collective records a deadline while it runs; a background thread
//! checks it and ends the process when it passes. Ending the process is
//! enough: the launcher (`mpirun`, `srun`) then ends every other rank, so a
//! whole run fails within a bounded time instead of hanging.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

struct Pending {
    what: &'static str,
    deadline: Instant,
    timeout: Duration,
}

static PENDING: Mutex<Option<Pending>> = Mutex::new(None);
static STARTED: AtomicBool = AtomicBool::new(false);
static RANK: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn pending() -> std::sync::MutexGuard<'static, Option<Pending>> {
    PENDING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Starts the watchdog thread (once per process).
// Started when a world of processes forms, which needs MPI.
#[cfg_attr(not(feature = "mpi"), allow(dead_code))]
pub(crate) fn start(rank: usize) {
    RANK.store(rank, Ordering::Relaxed);
    if STARTED.swap(true, Ordering::SeqCst) {
        return;
    }
    std::thread::Builder::new()
        .name("fabric-watchdog".into())
        .spawn(|| {
            loop {
                std::thread::sleep(Duration::from_millis(50));
                let expired = pending().as_ref().filter(|p| Instant::now() > p.deadline).map(|p| (p.what, p.timeout));
                if let Some((what, timeout)) = expired {
                    eprintln!(
                        "fabric: rank {}: `{what}` did not complete within {timeout:?}: another rank failed, hung, or took a different path; ending this rank so that the launcher ends the run",
                        RANK.load(Ordering::Relaxed)
                    );
                    // The loggers are flushed first; then the process ends
                    // at once, without destructors or `atexit` handlers,
                    // which could themselves wait on the other ranks.
                    crate::failure::run_handlers();
                    crate::failure::exit_now(1);
                }
            }
        })
        // Without a watchdog a failure elsewhere could hang this rank: say so.
        .map_err(|e| eprintln!("fabric: could not start the collective watchdog: {e}"))
        .ok();
}

/// Marks a blocking operation in progress until dropped.
pub(crate) struct Armed(());

/// Arms the watchdog for `what`, to fire after `timeout`.
pub(crate) fn arm(what: &'static str, timeout: Duration) -> Armed {
    *pending() = Some(Pending {
        what,
        deadline: Instant::now() + timeout,
        timeout,
    });
    Armed(())
}

impl Drop for Armed {
    fn drop(&mut self) {
        *pending() = None;
    }
}
