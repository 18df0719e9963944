//! Which process signals fabric's two signal handlings take: the failure
//! handling of a rank (`launcher`, which flushes the loggers when a launcher
//! ends the rank) and the opt-in preemption handling (`preemption`). Each
//! asks here what the other takes, so that neither module imports the other.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// The signals through which a launcher ends a rank.
pub(crate) const FAILURE_SIGNALS: [i32; 3] = [
    signal_hook::consts::SIGTERM,
    signal_hook::consts::SIGINT,
    signal_hook::consts::SIGHUP,
];

/// Whether the failure handling was installed in this process.
static FAILURE_HANDLING: AtomicBool = AtomicBool::new(false);

/// Records that the failure handling watches [`FAILURE_SIGNALS`] from now on.
pub(crate) fn failure_handling_installed() {
    FAILURE_HANDLING.store(true, Ordering::SeqCst);
}

/// Whether the failure handling of a rank watches `signal` (its default
/// action then follows the loggers' flush).
pub(crate) fn failure_handling_watches(signal: i32) -> bool {
    FAILURE_HANDLING.load(Ordering::SeqCst) && FAILURE_SIGNALS.contains(&signal)
}

/// Signal numbers below this (Linux's real-time signals end at 64).
const SIGNALS: usize = 65;

/// How many live preemption handlings catch each signal.
static CAUGHT: [AtomicUsize; SIGNALS] = [const { AtomicUsize::new(0) }; SIGNALS];

/// Counts one more (`caught`) or one fewer live preemption handling of
/// `signal`.
pub(crate) fn preemption_catching(signal: i32, caught: bool) {
    if let Some(count) = usize::try_from(signal).ok().and_then(|s| CAUGHT.get(s)) {
        if caught {
            count.fetch_add(1, Ordering::SeqCst);
        } else {
            let _ = count.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        }
    }
}

/// Whether a live preemption handling catches `signal`: the failure
/// handling then leaves it alone.
pub(crate) fn preemption_catches(signal: i32) -> bool {
    usize::try_from(signal)
        .ok()
        .and_then(|s| CAUGHT.get(s))
        .is_some_and(|count| count.load(Ordering::SeqCst) > 0)
}
