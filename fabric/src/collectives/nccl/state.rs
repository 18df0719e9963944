//! The lifecycle of an NCCL communicator: live until a collective fails,
//! then aborted at once and every later call refused; destroyed when
//! dropped (closed).
//!
//! The NCCL calls it makes go through [`Endpoint`], so that the state
//! machine is tested without a GPU.

use std::cell::RefCell;

use super::super::polite;
use super::super::watchdog::Armed;
use crate::error::{Error, Result};

/// The calls on a communicator that its lifecycle makes.
pub(super) trait Endpoint {
    /// The asynchronous error NCCL reports for the communicator (a peer
    /// failed, a network error), if any: `ncclCommGetAsyncError`.
    fn async_error(&self) -> Option<String>;
    /// Ends the communicator without waiting for its queued work, which
    /// NCCL stops: `ncclCommAbort`.
    fn abort(self);
    /// Ends the communicator once its work is done: `ncclCommDestroy`.
    fn destroy(self);
}

enum State<E> {
    /// Usable.
    Live(E),
    /// A collective failed (the reason); the communicator was aborted.
    Failed(String),
    /// Destroyed.
    Closed,
}

/// A communicator and its state, checked by every call.
pub(super) struct Lifecycle<E: Endpoint> {
    state: RefCell<State<E>>,
}

impl<E: Endpoint> Lifecycle<E> {
    pub(super) fn new(endpoint: E) -> Self {
        Lifecycle {
            state: RefCell::new(State::Live(endpoint)),
        }
    }

    /// A clear error unless the communicator is live.
    pub(super) fn ensure_live(&self, what: &str) -> Result<()> {
        match &*self.state.borrow() {
            State::Live(_) => Ok(()),
            State::Failed(reason) => Err(Error::Distributed(format!(
                "{what} refused: this rank's NCCL communicator was aborted when an earlier collective failed ({reason}); \
                 no collective can run on it any more, and the run must end"
            ))),
            State::Closed => Err(Error::Distributed(format!(
                "{what} refused: this rank's NCCL communicator was destroyed"
            ))),
        }
    }

    /// Runs one collective on the live communicator. When it fails, the
    /// communicator is aborted before this returns, so that NCCL no longer
    /// touches the tensors the collective was given when they go back to
    /// the caching allocator, and every later call is refused.
    pub(super) fn run<T>(&self, what: &str, collective: impl FnOnce(&E) -> Result<T>) -> Result<T> {
        self.ensure_live(what)?;
        let result = match &*self.state.borrow() {
            State::Live(endpoint) => collective(endpoint),
            _ => unreachable!("checked live above"),
        };
        if let Err(error) = &result {
            self.fail(error.to_string());
        }
        result
    }

    /// Aborts a live communicator, at once, for `reason`.
    fn fail(&self, reason: String) {
        if let State::Live(endpoint) = self.state.replace(State::Failed(reason)) {
            endpoint.abort();
        }
    }

    /// Destroys a live communicator (an aborted one is ended already).
    /// Later calls are refused.
    pub(super) fn close(&self) {
        let previous = self.state.replace(State::Closed);
        match previous {
            State::Live(endpoint) => endpoint.destroy(),
            // Keep the reason for later refusals.
            failed @ State::Failed(_) => drop(self.state.replace(failed)),
            State::Closed => {}
        }
    }
}

impl<E: Endpoint> Drop for Lifecycle<E> {
    fn drop(&mut self) {
        self.close();
    }
}

/// Waits, [politely](polite::wait_until), until `done` says the queued
/// collective finished; an asynchronous error that `endpoint` reports
/// meanwhile ends the wait with an error.
pub(super) fn wait<E: Endpoint>(
    endpoint: &E,
    armed: &Armed,
    what: &str,
    mut done: impl FnMut() -> Result<bool>,
) -> Result<()> {
    polite::wait_until(armed, || match endpoint.async_error() {
        Some(error) => Err(Error::Distributed(format!("{what}: {error}"))),
        None => done(),
    })
}

#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};
    use std::rc::Rc;
    use std::time::Duration;

    use super::*;
    use crate::collectives::watchdog;

    /// A communicator that logs the calls made on it and reports an
    /// asynchronous error from the `fails_at`-th poll on.
    struct Fake {
        log: Rc<RefCell<Vec<&'static str>>>,
        polls: Cell<usize>,
        fails_at: usize,
    }

    impl Endpoint for Fake {
        fn async_error(&self) -> Option<String> {
            self.polls.set(self.polls.get() + 1);
            (self.polls.get() >= self.fails_at)
                .then(|| "remote process exited or there was a network error".into())
        }
        fn abort(self) {
            self.log.borrow_mut().push("abort");
        }
        fn destroy(self) {
            self.log.borrow_mut().push("destroy");
        }
    }

    fn fake(fails_at: usize) -> (Lifecycle<Fake>, Rc<RefCell<Vec<&'static str>>>) {
        let log = Rc::new(RefCell::new(Vec::new()));
        let endpoint = Fake {
            log: log.clone(),
            polls: Cell::new(0),
            fails_at,
        };
        (Lifecycle::new(endpoint), log)
    }

    /// One collective whose stream never finishes: only the asynchronous
    /// error ends its wait.
    fn collective(comm: &Lifecycle<Fake>, ran: &Cell<bool>) -> Result<()> {
        let armed = watchdog::arm("ncclAllReduce", Duration::from_secs(60));
        comm.run("ncclAllReduce", |endpoint| {
            ran.set(true);
            wait(endpoint, &armed, "ncclAllReduce", || Ok(false))
        })
    }

    #[test]
    fn an_asynchronous_error_aborts_at_once_and_every_later_call_is_refused() {
        let (comm, log) = fake(3);
        let ran = Cell::new(false);
        let error = collective(&comm, &ran).unwrap_err().to_string();
        assert!(ran.get());
        assert!(
            error.contains("ncclAllReduce: remote process exited"),
            "{error}"
        );
        // Aborted before the failed call returned, never destroyed.
        assert_eq!(*log.borrow(), ["abort"]);
        let ran = Cell::new(false);
        let refused = collective(&comm, &ran).unwrap_err().to_string();
        assert!(!ran.get(), "a refused call must not reach NCCL");
        assert!(
            refused.contains("ncclAllReduce refused")
                && refused.contains("aborted when an earlier collective failed")
                && refused.contains("remote process exited"),
            "{refused}"
        );
        let refused = comm.ensure_live("ncclBroadcast").unwrap_err().to_string();
        assert!(refused.contains("ncclBroadcast refused"), "{refused}");
        comm.close();
        assert!(
            comm.ensure_live("ncclAllGather")
                .unwrap_err()
                .to_string()
                .contains("aborted")
        );
        drop(comm);
        assert_eq!(
            *log.borrow(),
            ["abort"],
            "an aborted communicator is not destroyed"
        );
    }

    #[test]
    fn a_failed_enqueue_aborts_too() {
        let (comm, log) = fake(usize::MAX);
        let error = comm
            .run("ncclBroadcast", |_| -> Result<()> {
                Err(Error::Distributed("ncclBroadcast: invalid argument".into()))
            })
            .unwrap_err();
        assert!(error.to_string().contains("invalid argument"));
        assert_eq!(*log.borrow(), ["abort"]);
        assert!(comm.ensure_live("ncclBroadcast").is_err());
    }

    #[test]
    fn a_live_communicator_runs_and_is_destroyed_once() {
        let (comm, log) = fake(usize::MAX);
        let armed = watchdog::arm("ncclAllGather", Duration::from_secs(60));
        let mut polls = 0;
        comm.run("ncclAllGather", |endpoint| {
            wait(endpoint, &armed, "ncclAllGather", || {
                polls += 1;
                Ok(polls == 3)
            })
        })
        .unwrap();
        comm.run("ncclAllGather", |_| Ok(())).unwrap();
        assert!(log.borrow().is_empty());
        comm.close();
        assert!(
            comm.ensure_live("ncclAllGather")
                .unwrap_err()
                .to_string()
                .contains("destroyed")
        );
        drop(comm);
        assert_eq!(*log.borrow(), ["destroy"]);
    }
}
