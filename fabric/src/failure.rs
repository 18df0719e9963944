//! How a failed rank ends: what must happen first (the loggers flushed),
//! then the process ends at once, so that the launcher ends the others
//! within the failure timeout.
//!
//! The launcher installs the failure handling of a rank
//! ([`launcher`](crate::launcher)); this module is the mechanism that the
//! launcher, the collectives' watchdog and a `Fabric` dropped by a panic
//! share: work registered with [`on_failure`] runs once, bounded in time,
//! before [`end_rank`] ends the process.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

type Handler = Arc<dyn Fn() + Send + Sync>;

static HANDLERS: Mutex<Vec<(u64, Handler)>> = Mutex::new(Vec::new());
static NEXT_ID: AtomicU64 = AtomicU64::new(0);
/// How long the handlers may take, in milliseconds (the run's failure
/// timeout; 10 s until a rank joins a run).
static BUDGET_MS: AtomicU64 = AtomicU64::new(10_000);

fn handlers() -> std::sync::MutexGuard<'static, Vec<(u64, Handler)>> {
    HANDLERS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Work to do before a failed rank ends (flushing a `Fabric`'s loggers),
/// until the returned registration is dropped.
pub(crate) fn on_failure(handler: impl Fn() + Send + Sync + 'static) -> Registration {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    handlers().push((id, Arc::new(handler)));
    Registration(id)
}

/// Sets how long the handlers may take before the rank ends anyway.
pub(crate) fn set_budget(budget: Duration) {
    BUDGET_MS.store(budget.as_millis() as u64, Ordering::Relaxed);
}

/// Keeps a handler registered until dropped.
#[derive(Debug)]
pub(crate) struct Registration(u64);

impl Drop for Registration {
    fn drop(&mut self) {
        handlers().retain(|(id, _)| *id != self.0);
    }
}

/// Runs the registered handlers once, on a thread of their own, waiting at
/// most the failure budget for them (a handler blocked on a dead file
/// system must not keep the rank alive). A second caller while they run
/// (the launcher's signal during a failing rank's own flush) waits for the
/// same flush, within the same budget.
pub(crate) fn run_handlers() {
    let budget = Duration::from_millis(BUDGET_MS.load(Ordering::Relaxed));
    let taken: Vec<Handler> = std::mem::take(&mut *handlers())
        .into_iter()
        .map(|(_, handler)| handler)
        .collect();
    if taken.is_empty() {
        wait_for_flush(budget);
        return;
    }
    FLUSHING.store(true, Ordering::SeqCst);
    let (done, finished) = mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("fabric-failure".into())
        .spawn(move || {
            for handler in taken {
                handler();
            }
            FLUSHING.store(false, Ordering::SeqCst);
            let _ = done.send(());
        });
    match spawned {
        Ok(_) => {
            if finished.recv_timeout(budget).is_err() {
                eprintln!(
                    "fabric: flushing the loggers took longer than {budget:?}; ending anyway"
                );
            }
        }
        Err(_) => FLUSHING.store(false, Ordering::SeqCst),
    }
}

/// Whether the handlers are running.
static FLUSHING: AtomicBool = AtomicBool::new(false);

/// Waits, at most `budget`, for handlers another thread runs.
fn wait_for_flush(budget: Duration) {
    let start = std::time::Instant::now();
    while FLUSHING.load(Ordering::SeqCst) && start.elapsed() < budget {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Ends this rank of a failed run after its message and the handlers,
/// without unwinding or `atexit` handlers (whose `MPI_Finalize` would wait
/// for ranks that may be blocked): the launcher then ends the others.
pub(crate) fn end_rank(rank: usize, message: &str) -> ! {
    let _ = std::io::stdout().flush();
    eprintln!("fabric: rank {rank} failed: {message}");
    run_handlers();
    exit_now(1)
}

/// Ends the process at once with `code`.
pub(crate) fn exit_now(code: i32) -> ! {
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: `_exit` ends the process without running destructors or
    // `atexit` handlers; nothing is left to run that must run.
    unsafe { libc::_exit(code) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn handlers_run_once_and_a_dropped_registration_does_not_run() {
        static RAN: AtomicUsize = AtomicUsize::new(0);
        let kept = on_failure(|| {
            RAN.fetch_add(1, Ordering::SeqCst);
        });
        let dropped = on_failure(|| {
            RAN.fetch_add(100, Ordering::SeqCst);
        });
        drop(dropped);
        run_handlers();
        run_handlers();
        assert_eq!(RAN.load(Ordering::SeqCst), 1);
        drop(kept);
    }
}
