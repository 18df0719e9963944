//! Waiting for the other ranks without spinning, for MPI and NCCL alike.
//!
//! Open MPI's blocking calls, and a hard loop on a CUDA stream, spin on the
//! CPU until the other ranks arrive, which on a busy machine takes the CPU
//! from the very rank being waited for (a 2-rank ddp step on 2 cores
//! shared with builds took 29-88 ms spinning, 18-22 ms waiting this way).

use std::time::Duration;

use super::watchdog::Armed;
use crate::error::Result;

/// Polls back to back this many times first: short waits end at once.
const SPIN_POLLS: u32 = 50;
/// Then yields the core between polls, up to this many polls.
const YIELD_POLLS: u32 = 200;
/// Then sleeps this long between polls, so that a rank that waits long
/// gives its core away; the sleeps add at most one interval to a wait.
const SLEEP: Duration = Duration::from_micros(20);

/// Polls `done` until it returns `true` (each poll may also progress the
/// operation waited for), politely: back to back at first, then yielding,
/// then sleeping [`SLEEP`] between polls. An error from `done` ends the
/// wait. `_armed` is the watchdog armed for the operation, which bounds
/// the wait when the other ranks never arrive.
pub(crate) fn wait_until(_armed: &Armed, mut done: impl FnMut() -> Result<bool>) -> Result<()> {
    let mut polls = 0u32;
    while !done()? {
        if polls >= YIELD_POLLS {
            std::thread::sleep(SLEEP);
        } else if polls >= SPIN_POLLS {
            std::thread::yield_now();
        }
        polls = polls.saturating_add(1);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectives::watchdog;
    use crate::error::Error;

    #[test]
    fn polls_until_done_and_stops_at_the_first_error() {
        let armed = watchdog::arm("test", Duration::from_secs(60));
        let mut polls = 0;
        wait_until(&armed, || {
            polls += 1;
            Ok(polls == YIELD_POLLS as usize + 5)
        })
        .unwrap();
        assert_eq!(polls, YIELD_POLLS as usize + 5);
        let mut polls = 0;
        let error = wait_until(&armed, || {
            polls += 1;
            if polls == 3 {
                Err(Error::Distributed("peer failed".into()))
            } else {
                Ok(false)
            }
        })
        .unwrap_err();
        assert_eq!(polls, 3);
        assert!(error.to_string().contains("peer failed"), "{error}");
    }
}
