//! Preemption: stopping a run cleanly when the scheduler says it must end,
//! saving a checkpoint, and asking to be run again.
//!
//! SLURM sends a signal before a job's time limit or its preemption
//! (`#SBATCH --signal=USR1@90`: SIGUSR1 90 seconds before; SIGTERM when
//! the time is up, `KillWait` seconds before SIGKILL). With the opt-in
//! [`FabricBuilder::preemption`](crate::FabricBuilder::preemption), fabric
//! catches those signals instead of letting them end the process, and the
//! training loop asks at each step whether to stop:
//!
//! ```no_run
//! use fabric::{Fabric, checkpoint::State, preemption::Preemption};
//!
//! fn main() -> std::process::ExitCode {
//!     let result = Fabric::builder()
//!         .accelerator("cpu")
//!         .preemption(Preemption::new())
//!         .launch(|fabric| -> fabric::Result<()> {
//!             let mut step = 0u64;
//!             if std::path::Path::new("ckpt").exists() {
//!                 fabric.load("ckpt", &mut State::new().value("step", &mut step))?;
//!             }
//!             while step < 1000 {
//!                 // ... one training step ...
//!                 step += 1;
//!                 if fabric.preempted()? {
//!                     fabric.save("ckpt", &State::new().value("step", &mut step))?;
//!                     return fabric.requeue();
//!                 }
//!             }
//!             Ok(())
//!         });
//!     fabric::preemption::exit_code(&result)
//! }
//! ```
//!
//! - [`Fabric::preempted`](crate::Fabric::preempted) is a collective: every
//!   rank calls it at the same step, and it is true on every rank as soon as
//!   one rank received a signal (SLURM may signal one task, the batch
//!   shell, or all; `mpirun` forwards SIGUSR1 to every rank), so the ranks
//!   stop at the same step and none waits in a collective while the others
//!   save. It costs one all-reduce of one number per call with several
//!   processes ([`Preemption::check_every`] spaces them out), nothing with
//!   one.
//! - [`Fabric::requeue`](crate::Fabric::requeue), after the save, asks the
//!   scheduler to run the job again: in a SLURM job (`SLURM_JOB_ID` set),
//!   rank 0 runs `scontrol requeue <job id>` (`<array job id>_<task id>`
//!   for an array task) as Lightning's `SLURMEnvironment(auto_requeue=True)`
//!   does. It returns [`Error::Preempted`] on every
//!   rank, a value the training function returns: nothing ends the process
//!   behind the caller's back. Its [exit status](crate::Error::exit_code) is
//!   [`REQUEUE_EXIT_CODE`] (75, `EX_TEMPFAIL`: "try again"), which
//!   [`exit_code`] gives `main`, so that a wrapper outside SLURM
//!   (`until ./train; [ $? -ne 75 ] && break; done`) can tell a preempted
//!   run from a failed one.
//!
//! **Signal handlers are process-wide state**, so nothing is installed
//! without the opt-in: a program that does not ask keeps the signals'
//! behaviour (SIGUSR1 and SIGTERM end the process). With it, the `Fabric`
//! owns the handling: while it lives, the signals only set a flag; once it
//! is dropped, they act as before it (their default action, a handler the
//! program had installed, or ignored). A `Fabric` of a run of several
//! processes also keeps its failure handling (loggers flushed when
//! `mpirun` ends a rank with SIGTERM because another failed); a SIGTERM
//! that [`Preemption`] catches does not end the rank: it stops the run at
//! the next [`preempted`](crate::Fabric::preempted), so a rank whose peer
//! died then waits in that collective until `mpirun` kills it (its loggers
//! are not flushed). Leave SIGTERM out ([`Preemption::signals`]) to keep
//! the failure handling's reading of it.
//!
//! **Under SLURM**, start the ranks with `srun` (each rank is a task that
//! the signal reaches), with `mpirun` as the batch script's last command
//! (`exec mpirun ...`, with `--signal=B:USR1@90`: `mpirun` forwards SIGUSR1
//! to the ranks; it ends them on SIGTERM), or with fabric's own launcher
//! (`devices(N)` started plainly, `exec`'d with `--signal=B:USR1@90`): the
//! process that starts the ranks passes the preemption signals on to them
//! through `mpirun` (a SIGTERM as SIGUSR1, when the ranks catch SIGUSR1),
//! and exits with their status. `ddp_spawn` does not pass them on. The checkpoint must be written
//! before SLURM's SIGKILL: 90 seconds ahead with `--signal=USR1@90`,
//! `KillWait` (30 s by default) after a SIGTERM.

use std::io::Read;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// The signals' numbers, for [`Preemption::signals`].
pub use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1, SIGUSR2};

pub use crate::error::REQUEUE_EXIT_CODE;

/// How long rank 0 waits for `scontrol requeue` before giving up.
pub const REQUEUE_TIMEOUT: Duration = Duration::from_secs(60);

/// The preemption option of [`FabricBuilder::preemption`](crate::FabricBuilder::preemption):
/// which signals stop the run, how often the ranks agree, and whether the
/// SLURM job is requeued.
///
/// ```
/// use fabric::preemption::{Preemption, SIGUSR1};
///
/// let default = Preemption::new(); // SIGUSR1 and SIGTERM, every step, requeue under SLURM
/// let custom = Preemption::new()
///     .signals([SIGUSR1])
///     .check_every(10)
///     .requeue(false);
/// # let _ = (default, custom);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preemption {
    signals: Vec<i32>,
    check_every: u64,
    requeue: bool,
}

impl Default for Preemption {
    fn default() -> Self {
        Preemption::new()
    }
}

impl Preemption {
    /// SIGUSR1 and SIGTERM, checked at every call of
    /// [`preempted`](crate::Fabric::preempted), the SLURM job requeued.
    pub fn new() -> Self {
        Preemption {
            signals: vec![SIGUSR1, SIGTERM],
            check_every: 1,
            requeue: true,
        }
    }

    /// The signals that stop the run (SIGUSR1 and SIGTERM by default);
    /// SIGKILL, SIGSTOP and the signals of faults (SIGSEGV, SIGILL,
    /// SIGFPE, SIGBUS...) are refused when the `Fabric` is built.
    pub fn signals(mut self, signals: impl IntoIterator<Item = i32>) -> Self {
        self.signals = signals.into_iter().collect();
        self.signals.sort_unstable();
        self.signals.dedup();
        self
    }

    /// Agree between ranks every `calls` calls of
    /// [`preempted`](crate::Fabric::preempted) (1 by default: every call);
    /// the calls in between answer false without communicating. Every rank
    /// must use the same value.
    pub fn check_every(mut self, calls: u64) -> Self {
        self.check_every = calls;
        self
    }

    /// Whether [`requeue`](crate::Fabric::requeue) runs `scontrol requeue`
    /// in a SLURM job (true by default).
    pub fn requeue(mut self, requeue: bool) -> Self {
        self.requeue = requeue;
        self
    }

    pub(crate) fn caught_signals(&self) -> &[i32] {
        &self.signals
    }

    pub(crate) fn check(&self) -> Result<()> {
        if self.check_every == 0 {
            return Err(Error::InvalidArgument(
                "preemption: `check_every` must be at least 1".into(),
            ));
        }
        if self.signals.is_empty() {
            return Err(Error::InvalidArgument(
                "preemption: no signal given; `Preemption::new()` catches SIGUSR1 and SIGTERM"
                    .into(),
            ));
        }
        // Only signals a scheduler or a person sends to stop a job: not the
        // uncatchable or fault signals, not those the system sends for other
        // reasons (SIGCHLD at every child's exit, SIGWINCH, SIGCONT), nor
        // real-time ones, which signal-hook may refuse after others of the
        // list were registered.
        const ACCEPTED: [i32; 7] = [
            libc::SIGUSR1,
            libc::SIGUSR2,
            libc::SIGTERM,
            libc::SIGINT,
            libc::SIGHUP,
            libc::SIGQUIT,
            libc::SIGALRM,
        ];
        for &signal in &self.signals {
            if !ACCEPTED.contains(&signal) {
                return Err(Error::InvalidArgument(format!(
                    "preemption: signal {signal} ({}) cannot stop a run: use SIGUSR1, SIGUSR2, SIGTERM, SIGINT, SIGHUP, SIGQUIT or SIGALRM",
                    signal_name(signal)
                )));
            }
        }
        Ok(())
    }
}

/// A signal's name, such as `SIGUSR1`.
pub(crate) fn signal_name(signal: i32) -> String {
    match signal {
        libc::SIGUSR1 => "SIGUSR1".into(),
        libc::SIGUSR2 => "SIGUSR2".into(),
        libc::SIGTERM => "SIGTERM".into(),
        libc::SIGINT => "SIGINT".into(),
        libc::SIGHUP => "SIGHUP".into(),
        libc::SIGQUIT => "SIGQUIT".into(),
        libc::SIGALRM => "SIGALRM".into(),
        other => format!("signal {other}"),
    }
}

/// The status `main` returns for the result of a training function:
/// success, [`REQUEUE_EXIT_CODE`] for a run stopped by
/// [`Fabric::requeue`](crate::Fabric::requeue), 1 for any other error
/// (printed first). The error is [`fabric::Error`](crate::Error), or one
/// found inside an `anyhow::Error` or a `Box<dyn std::error::Error>` (with
/// or without `Send + Sync`), as the `?` of a training function returning
/// `anyhow::Result` puts it there; for other error types use
/// [`Error::exit_code`](crate::Error::exit_code) directly.
pub fn exit_code<T, E: std::fmt::Debug + 'static>(
    result: &std::result::Result<T, E>,
) -> std::process::ExitCode {
    let Err(error) = result else {
        return std::process::ExitCode::SUCCESS;
    };
    let any: &dyn std::any::Any = error;
    let found = any
        .downcast_ref::<Error>()
        .or_else(|| {
            any.downcast_ref::<anyhow::Error>()
                .and_then(|e| e.downcast_ref::<Error>())
        })
        .or_else(|| {
            any.downcast_ref::<Box<dyn std::error::Error + Send + Sync>>()
                .and_then(|e| e.downcast_ref::<Error>())
        })
        .or_else(|| {
            any.downcast_ref::<Box<dyn std::error::Error>>()
                .and_then(|e| e.downcast_ref::<Error>())
        });
    let code = found.map_or(1, Error::exit_code);
    if code != REQUEUE_EXIT_CODE {
        eprintln!("Error: {error:?}");
    }
    std::process::ExitCode::from(code)
}

// ---- the process-wide signal handling ----------------------------------

/// Signal numbers handled: every standard and real-time signal of Linux.
const SIGNALS: usize = 65;

/// The last preemption signal received while a [`Handling`] was active
/// (0: none).
static RECEIVED: AtomicUsize = AtomicUsize::new(0);

struct Slot {
    /// How many live handlings watch the signal.
    active: usize,
    /// Whether the signal's action was its default before fabric
    /// registered: then, with no handling active, its default action runs.
    default_before: bool,
    /// Read in the signal handler: run the default action.
    run_default: Arc<AtomicBool>,
}

static SLOTS: Mutex<Vec<Option<Slot>>> = Mutex::new(Vec::new());

fn slots() -> std::sync::MutexGuard<'static, Vec<Option<Slot>>> {
    let mut slots = SLOTS.lock().unwrap_or_else(|p| p.into_inner());
    if slots.is_empty() {
        slots.resize_with(SIGNALS, || None);
    }
    slots
}

/// The signal received since the handling began, if any.
pub(crate) fn received() -> Option<i32> {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => None,
        signal => Some(signal as i32),
    }
}

/// Catching the preemption signals, for as long as it lives: owned by the
/// `Fabric` built with the option. Dropped, the signals act as they did
/// before.
#[derive(Debug)]
pub(crate) struct Handling {
    signals: Vec<i32>,
}

impl Handling {
    pub(crate) fn install(signals: &[i32]) -> Result<Self> {
        let mut slots = slots();
        if slots.iter().flatten().all(|slot| slot.active == 0) {
            RECEIVED.store(0, Ordering::SeqCst);
        }
        for &signal in signals {
            let index = signal as usize;
            if slots[index].is_none() {
                let default_before = disposition_is_default(signal);
                let run_default = Arc::new(AtomicBool::new(false));
                let failed = |e: std::io::Error| Error::Io {
                    context: format!("preemption: cannot catch {}", signal_name(signal)),
                    source: e,
                };
                // Registered once per process and never removed (signal-hook
                // cannot restore the previous action): while no handling is
                // active, the first runs the default action where it was
                // the default, and a handler the program had installed
                // before runs as signal-hook chains it.
                signal_hook::flag::register_conditional_default(signal, Arc::clone(&run_default))
                    .map_err(failed)?;
                signal_hook::flag::register_usize(signal, &RECEIVED, signal as usize)
                    .map_err(failed)?;
                slots[index] = Some(Slot {
                    active: 0,
                    default_before,
                    run_default,
                });
            }
            let slot = slots[index].as_mut().expect("registered above");
            slot.active += 1;
            crate::signals::preemption_catching(signal, true);
            slot.run_default.store(false, Ordering::SeqCst);
        }
        Ok(Handling {
            signals: signals.to_vec(),
        })
    }
}

impl Drop for Handling {
    fn drop(&mut self) {
        let mut slots = slots();
        for &signal in &self.signals {
            if let Some(slot) = slots[signal as usize].as_mut() {
                slot.active -= 1;
                crate::signals::preemption_catching(signal, false);
                if slot.active == 0 {
                    // The failure handling of a rank watches SIGTERM (and
                    // SIGINT, SIGHUP) itself: it flushes the loggers before
                    // the default action.
                    let default =
                        slot.default_before && !crate::signals::failure_handling_watches(signal);
                    slot.run_default.store(default, Ordering::SeqCst);
                }
            }
        }
    }
}

/// Whether `signal`'s action is its default one.
fn disposition_is_default(signal: i32) -> bool {
    // SAFETY: reads the current action into a zeroed `sigaction`; a null
    // new action changes nothing.
    unsafe {
        let mut current: libc::sigaction = std::mem::zeroed();
        libc::sigaction(signal, std::ptr::null(), &mut current) == 0
            && current.sa_sigaction == libc::SIG_DFL
    }
}

// ---- a Fabric's preemption state ---------------------------------------

/// What a `Fabric` built with the option holds.
#[derive(Debug)]
pub(crate) struct PreemptionState {
    config: Preemption,
    _handling: Handling,
    calls: u64,
    /// The signal the ranks agreed on (the highest number received).
    agreed: Option<i32>,
    /// Whether `requeue` ran: the training function's error is then a
    /// clean stop, not a failed rank.
    pub(crate) requeued: bool,
}

impl PreemptionState {
    pub(crate) fn new(config: Preemption) -> Result<Self> {
        config.check()?;
        let handling = Handling::install(&config.signals)?;
        Ok(PreemptionState {
            config,
            _handling: handling,
            calls: 0,
            agreed: None,
            requeued: false,
        })
    }

    /// Counts a call; whether the ranks agree at this one.
    pub(crate) fn due(&mut self) -> bool {
        self.calls += 1;
        self.calls.is_multiple_of(self.config.check_every)
    }

    pub(crate) fn agreed(&self) -> Option<i32> {
        self.agreed
    }

    pub(crate) fn agree(&mut self, signal: i32) {
        if signal != 0 {
            self.agreed = Some(signal);
        }
    }

    pub(crate) fn requeues(&self) -> bool {
        self.config.requeue
    }
}

/// Runs `scontrol requeue <job>`, bounded by [`REQUEUE_TIMEOUT`].
pub(crate) fn scontrol_requeue(job: &str) -> Result<()> {
    let failed = |why: String| {
        Error::Requeue(format!(
            "`scontrol requeue {job}` {why}; the checkpoint is saved, but SLURM will not run the job again by itself"
        ))
    };
    let mut child = std::process::Command::new("scontrol")
        .args(["requeue", job])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| failed(format!("could not start: {e}")))?;
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => {
                let mut message = String::new();
                if let Some(mut stderr) = child.stderr.take() {
                    let _ = stderr.read_to_string(&mut message);
                }
                return Err(failed(format!("failed ({status}): {}", message.trim())));
            }
            Ok(None) if start.elapsed() < REQUEUE_TIMEOUT => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(failed(format!("did not finish within {REQUEUE_TIMEOUT:?}")));
            }
            Err(e) => return Err(failed(format!("could not be waited for: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The requeue status comes through the error types training
    /// functions return: fabric's, `anyhow`'s, boxed errors.
    #[test]
    fn the_requeue_status_is_found_inside_other_error_types() {
        let preempted = || Error::Preempted {
            signal: "SIGUSR1".into(),
            job: None,
        };
        let requeue = std::process::ExitCode::from(REQUEUE_EXIT_CODE);
        assert_eq!(exit_code(&Err::<(), _>(preempted())), requeue);
        assert_eq!(
            exit_code(&Err::<(), _>(anyhow::Error::new(preempted()))),
            requeue
        );
        assert_eq!(
            exit_code(&Err::<(), _>(
                anyhow::Error::new(preempted()).context("training")
            )),
            requeue
        );
        let boxed: Box<dyn std::error::Error + Send + Sync> = Box::new(preempted());
        assert_eq!(exit_code(&Err::<(), _>(boxed)), requeue);
        assert_eq!(
            exit_code(&Ok::<(), Error>(())),
            std::process::ExitCode::SUCCESS
        );
        assert_eq!(
            exit_code(&Err::<(), _>(anyhow::anyhow!("another failure"))),
            std::process::ExitCode::from(1)
        );
    }

    #[test]
    fn bad_options_are_clear_errors() {
        let err = Preemption::new().check_every(0).check().unwrap_err();
        assert!(err.to_string().contains("at least 1"), "{err}");
        let err = Preemption::new().signals([]).check().unwrap_err();
        assert!(err.to_string().contains("no signal"), "{err}");
        for signal in [
            libc::SIGKILL,
            libc::SIGSEGV,
            libc::SIGSTOP,
            libc::SIGCHLD,
            libc::SIGWINCH,
            libc::SIGRTMIN() + 1,
            0,
            99,
        ] {
            let err = Preemption::new().signals([signal]).check().unwrap_err();
            assert!(err.to_string().contains("cannot stop a run"), "{err}");
        }
        Preemption::new().signals([libc::SIGUSR2]).check().unwrap();
    }
}
