//! The launcher: the one owner of the process. It alone starts ranks
//! (re-running the current executable under Open MPI's `mpirun`), ends a
//! process, and installs the failure handling of a rank.
//!
//! The process that starts the ranks does not train: it waits for them and
//! ends with their status (`ddp`, [`FabricBuilder::launch`](crate::FabricBuilder::launch)),
//! or reads rank 0's result (`ddp_spawn`). `mpirun` ends every rank as soon
//! as one fails; a failing rank flushes its loggers first, and the others
//! flush theirs when `mpirun` ends them (SIGTERM), within the failure
//! timeout.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, ExitStatus};

use crate::error::{Error, Result};
use crate::fabric::Fabric;
use crate::failure;
use crate::switches::{self, LAUNCHED as LAUNCHED_VAR, SPAWN_RESULT as SPAWN_RESULT_VAR};

/// Runs `processes` ranks of the current executable, with its arguments,
/// under `mpirun`; returns when all have ended. For ranks on CUDA devices,
/// NCCL is put on their library path where it is installed under its
/// soname only (see `collectives::nccl`).
pub(crate) fn run_ranks(
    processes: usize,
    env: &[(&str, String)],
    cuda: bool,
    forward: &[i32],
) -> Result<ExitStatus> {
    let exe = std::env::current_exe().map_err(|e| {
        Error::Launch(format!(
            "cannot find the current executable to start the ranks: {e}"
        ))
    })?;
    let mut command = Command::new("mpirun");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        command.arg("--allow-run-as-root");
    }
    command.args([
        "--oversubscribe",
        "--bind-to",
        "none",
        "-np",
        &processes.to_string(),
    ]);
    command.args(["-x", &format!("{LAUNCHED_VAR}=1")]);
    for (name, value) in env {
        command.args(["-x", &format!("{name}={value}")]);
    }
    if let Some(dir) = cuda
        .then(crate::collectives::nccl::library_link_dir)
        .flatten()
    {
        let mut assignment = std::ffi::OsString::from("LD_LIBRARY_PATH=");
        assignment.push(dir);
        if let Some(existing) = switches::var("LD_LIBRARY_PATH").filter(|p| !p.is_empty()) {
            assignment.push(":");
            assignment.push(existing);
        }
        command.arg("-x").arg(assignment);
    }
    command.arg(exe).args(std::env::args_os().skip(1));
    // SAFETY: prctl is async-signal-safe; it makes mpirun (and through it
    // the ranks) end when this process dies, so no rank outlives it.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let _ = std::io::stdout().flush();
    let mut child = command.spawn().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::Launch(
            "`mpirun` was not found: fabric starts the ranks of a multi-process run with Open MPI (Debian: `apt-get install openmpi-bin libopenmpi-dev`)".into(),
        ),
        _ => Error::Launch(format!("could not start `mpirun`: {e}")),
    })?;
    let forwarding = forward_signals(child.id(), forward);
    let status = child
        .wait()
        .map_err(|e| Error::Launch(format!("could not wait for `mpirun`: {e}")));
    if let Some(handle) = forwarding {
        handle.close();
    }
    status
}

/// In the process that starts the ranks of a run with the preemption
/// option: passes the preemption `signals` it receives on to `mpirun`,
/// which forwards SIGUSR1 and SIGUSR2 to the ranks (and ends them on
/// SIGTERM): SIGUSR1 and SIGUSR2 as they are, another signal as the
/// SIGUSR1 (or SIGUSR2) the ranks also catch, if they do. Without it, a
/// signal SLURM sends the batch step (`--signal=B:USR1@90`) would end this
/// process, and through it the ranks.
fn forward_signals(mpirun: u32, signals: &[i32]) -> Option<signal_hook::iterator::Handle> {
    use signal_hook::consts::{SIGUSR1, SIGUSR2};
    if signals.is_empty() {
        return None;
    }
    let mut iterator = match signal_hook::iterator::Signals::new(signals) {
        Ok(iterator) => iterator,
        Err(e) => {
            eprintln!("fabric: the preemption signals will not be passed on to the ranks: {e}");
            return None;
        }
    };
    let handle = iterator.handle();
    let user = [SIGUSR1, SIGUSR2]
        .into_iter()
        .find(|signal| signals.contains(signal));
    let spawned = std::thread::Builder::new()
        .name("fabric-forward".into())
        .spawn(move || {
            for signal in iterator.forever() {
                let passed = match signal {
                    SIGUSR1 | SIGUSR2 => signal,
                    other => user.unwrap_or(other),
                };
                // SAFETY: kill has no memory preconditions; `mpirun` is
                // this process's child, not reaped before the iterator is
                // closed.
                unsafe { libc::kill(mpirun as libc::pid_t, passed) };
            }
        });
    spawned.ok().map(|_| handle)
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("signal {signal}"),
        _ => "an unknown status".into(),
    }
}

/// Starts the ranks of a `ddp` run and ends this process with their status:
/// 0 when every rank succeeded. The only place fabric ends a process that
/// did not fail itself, reached only through the explicit launch calls; it
/// exits normally (`atexit` handlers and flushed output), as this process
/// did not train.
pub(crate) fn supervise(processes: usize, cuda: bool, forward: &[i32]) -> ! {
    match run_ranks(processes, &[], cuda, forward) {
        Ok(status) if status.success() => std::process::exit(0),
        Ok(status) if status.code() == Some(crate::error::REQUEUE_EXIT_CODE.into()) => {
            // `Fabric::requeue`: stopped at a preemption signal, saved.
            eprintln!(
                "fabric: the run's {processes} ranks stopped to be run again (exit status {})",
                crate::error::REQUEUE_EXIT_CODE
            );
            std::process::exit(crate::error::REQUEUE_EXIT_CODE.into())
        }
        Ok(status) => {
            let error = Error::RanksFailed {
                processes,
                status: describe(status),
            };
            eprintln!("fabric: {error}");
            std::process::exit(status.code().filter(|c| *c != 0).unwrap_or(1))
        }
        Err(error) => {
            eprintln!("fabric: {error}");
            std::process::exit(1)
        }
    }
}

/// Starts `processes` workers for `ddp_spawn` and returns what rank 0's
/// function returned.
pub(crate) fn spawn<T: serde::de::DeserializeOwned>(processes: usize, cuda: bool) -> Result<T> {
    let serialised = spawn_serialised(processes, cuda)?;
    serde_json::from_str(&serialised)
        .map_err(|e| Error::Launch(format!("rank 0's result could not be read back: {e}")))
}

fn spawn_serialised(processes: usize, cuda: bool) -> Result<String> {
    let dir = std::env::temp_dir();
    let path: PathBuf = dir.join(format!(
        "fabric-spawn-{}-{}.json",
        std::process::id(),
        rand::random::<u64>()
    ));
    let status = run_ranks(
        processes,
        &[(SPAWN_RESULT_VAR, path.display().to_string())],
        cuda,
        &[],
    )?;
    let result = std::fs::read_to_string(&path);
    let _ = std::fs::remove_file(&path);
    if !status.success() {
        return Err(Error::RanksFailed {
            processes,
            status: describe(status),
        });
    }
    result.map_err(|e| {
        Error::Launch(format!(
            "rank 0 ended without handing back its result ({e})"
        ))
    })
}

/// In a `ddp_spawn` worker of rank 0: writes the function's result where the
/// launching process reads it (atomically: temporary file, then rename).
pub(crate) fn hand_back(serialised: &str) -> Result<()> {
    let Some(path) = switches::spawn_result_path().map(PathBuf::from) else {
        return Ok(());
    };
    let mut temporary = path.clone().into_os_string();
    temporary.push(".tmp");
    std::fs::write(&temporary, serialised)
        .and_then(|()| std::fs::rename(&temporary, &path))
        .map_err(|e| {
            Error::Launch(format!(
                "could not hand rank 0's result back through {}: {e}",
                path.display()
            ))
        })
}

/// Whether fabric's launcher started this process (as a rank).
pub(crate) fn was_launched() -> bool {
    switches::launched()
}

/// Whether this process is a `ddp_spawn` worker.
pub(crate) fn is_spawn_worker() -> bool {
    switches::spawn_result_path().is_some()
}

/// Ends a failed rank: its loggers flushed first, then at once, naming it;
/// the launcher then ends the others.
pub(crate) fn fail_rank(rank: usize, message: &str) -> ! {
    failure::end_rank(rank, message)
}

/// Installs the failure handling of rank `rank` of a run of several
/// processes, once per process: when the launcher ends it (SIGTERM, as
/// `mpirun` does when another rank failed; SIGINT, SIGHUP), the work
/// registered with `failure::on_failure` (the loggers' flush) runs, within
/// `budget`, before the rank ends with the signal's status.
pub(crate) fn install_failure_handling(rank: usize, budget: std::time::Duration) {
    failure::set_budget(budget);
    INSTALLED.call_once(|| {
        crate::signals::failure_handling_installed();
        // A signal the process was started ignoring (`nohup`, a background
        // job) stays ignored.
        let watched: Vec<i32> = crate::signals::FAILURE_SIGNALS
            .into_iter()
            .filter(|&signal| !ignored(signal))
            .collect();
        let mut signals = match signal_hook::iterator::Signals::new(&watched) {
            Ok(signals) => signals,
            Err(e) => {
                eprintln!(
                    "fabric: rank {rank}: loggers will not be flushed if the launcher ends this rank: {e}"
                );
                return;
            }
        };
        let spawned = std::thread::Builder::new()
            .name("fabric-signals".into())
            .spawn(move || {
                // A signal that the preemption handling catches stops the
                // run at its next step instead (see `preemption`).
                if let Some(signal) = signals
                    .forever()
                    .find(|&signal| !crate::signals::preemption_catches(signal))
                {
                    failure::run_handlers();
                    // Ends by the signal itself, as without fabric, so that
                    // launchers and schedulers see how the rank ended.
                    let _ = signal_hook::low_level::emulate_default_handler(signal);
                    failure::exit_now(128 + signal);
                }
            });
        if let Err(e) = spawned {
            eprintln!("fabric: rank {rank}: could not watch for the launcher's signals: {e}");
        }
    });
}

static INSTALLED: std::sync::Once = std::sync::Once::new();

/// Whether `signal` is ignored in this process.
fn ignored(signal: i32) -> bool {
    // SAFETY: reads the current action into a zeroed `sigaction`; a null
    // new action changes nothing.
    unsafe {
        let mut current: libc::sigaction = std::mem::zeroed();
        libc::sigaction(signal, std::ptr::null(), &mut current) == 0
            && current.sa_sigaction == libc::SIG_IGN
    }
}

/// The return type of a training function: a `Result` whose error type
/// converts from [`fabric::Error`](crate::Error), through which
/// [`FabricBuilder::launch`](crate::FabricBuilder::launch) (and the
/// function `#[fabric]` generates) reports a configuration this machine
/// cannot run.
#[diagnostic::on_unimplemented(
    message = "a #[fabric] function returns `Result<T, E>` with `E: From<fabric::Error>`, not `{Self}`",
    label = "the generated function returns configuration errors through this type",
    note = "use `fabric::Result<T>`, `anyhow::Result<T>`, or a `Result` whose error type implements `From<fabric::Error>`"
)]
pub trait TrainResult: Sized {
    /// Whether training succeeded.
    fn is_ok(&self) -> bool;

    /// The function's result for a fabric error.
    fn from_error(error: Error) -> Self;

    /// The error, described for the message of a failed rank.
    fn describe_error(&self) -> Option<String>;
}

#[diagnostic::do_not_recommend]
impl<T, E: From<Error> + std::fmt::Debug> TrainResult for std::result::Result<T, E> {
    fn is_ok(&self) -> bool {
        std::result::Result::is_ok(self)
    }

    fn describe_error(&self) -> Option<String> {
        self.as_ref().err().map(|e| format!("{e:?}"))
    }

    fn from_error(error: Error) -> Self {
        Err(E::from(error))
    }
}

/// Runs a rank's training function: a panic or an error fires
/// `OnException`, finalises the loggers, and in a run of several processes
/// ends the run, naming the rank. A panic in a process alone unwinds on.
pub(crate) fn run<R: TrainResult>(fabric: &mut Fabric, train: impl FnOnce(&mut Fabric) -> R) -> R {
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| train(&mut *fabric)));
    match outcome {
        Ok(result) => finish(fabric, result),
        Err(panic) => {
            fail(fabric, "it panicked (see the panic message above)");
            std::panic::resume_unwind(panic)
        }
    }
}

/// [`run`] in a `ddp_spawn` worker: rank 0 hands its result back, and the
/// worker ends after the function, as in Lightning.
pub(crate) fn run_spawned<T, E>(
    mut fabric: Fabric,
    train: impl FnOnce(&mut Fabric) -> std::result::Result<T, E>,
) -> std::result::Result<T, E>
where
    T: serde::Serialize,
    E: From<Error> + std::fmt::Debug,
{
    let value = run(&mut fabric, train)?;
    if !is_spawn_worker() {
        return Ok(value);
    }
    if fabric.is_global_zero() {
        let handed = serde_json::to_string(&value)
            .map_err(|e| Error::Launch(format!("rank 0's result cannot be serialised: {e}")))
            .and_then(|serialised| hand_back(&serialised));
        if let Err(error) = handed {
            fail_rank(0, &error.to_string());
        }
    }
    // Dropped first: its communicator ends the rank's part in the world
    // (`MPI_Finalize` runs at exit), which `mpirun` expects of a rank that
    // succeeds.
    drop(fabric);
    std::process::exit(0)
}

/// The end of a training function: finalises the loggers; in a run of
/// several processes, a failed rank ends the run.
fn finish<R: TrainResult>(fabric: &mut Fabric, result: R) -> R {
    if fabric.requeued() {
        // Every rank stopped at the same step to be run again
        // (`Fabric::requeue`): not a failure of this rank.
        return match fabric.finish(true) {
            Err(error) if result.is_ok() => R::from_error(error),
            _ => result,
        };
    }
    match result.describe_error() {
        None => match fabric.finish(true) {
            Ok(()) => result,
            Err(error) => R::from_error(error),
        },
        Some(message) => {
            fail(fabric, &message);
            result
        }
    }
}

/// What a failed training function leads to: `OnException`, the loggers
/// finalised, and in a run of several processes the rank's end.
fn fail(fabric: &mut Fabric, message: &str) {
    if let Err(hook_error) = fabric.call::<crate::hooks::OnException>((message,)) {
        eprintln!("fabric: after the training error, {hook_error}");
    }
    if let Err(finish_error) = fabric.finish(false) {
        // The training error is the one to report.
        eprintln!("fabric: after the training error, {finish_error}");
    }
    if fabric.world_size() > 1 {
        fail_rank(fabric.global_rank(), message);
    }
}
