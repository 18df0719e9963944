//! fabric's own launcher: starts the ranks of a run on this machine by
//! re-running the current executable under Open MPI's `mpirun`.
//!
//! The process that calls the launcher does not train: it waits for the
//! ranks and ends with their status (`ddp`), or reads rank 0's result
//! (`ddp_spawn`). `mpirun` ends every rank as soon as one fails.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, ExitStatus};

use crate::error::{Error, Result};

/// Set in the ranks fabric starts.
pub(crate) const LAUNCHED_VAR: &str = "FABRIC_LAUNCHED";
/// Where a `ddp_spawn` worker of rank 0 writes the function's result.
pub(crate) const SPAWN_RESULT_VAR: &str = "FABRIC_SPAWN_RESULT";

/// Runs `processes` ranks of the current executable, with its arguments,
/// under `mpirun`; returns when all have ended. For ranks on CUDA devices,
/// NCCL is put on their library path where it is installed under its
/// soname only (see `collectives::nccl`).
pub(crate) fn run_ranks(
    processes: usize,
    env: &[(&str, String)],
    cuda: bool,
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
        if let Some(existing) = std::env::var_os("LD_LIBRARY_PATH").filter(|p| !p.is_empty()) {
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
    command.status().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::Launch(
            "`mpirun` was not found: fabric starts the ranks of a multi-process run with Open MPI (Debian: `apt-get install openmpi-bin libopenmpi-dev`)".into(),
        ),
        _ => Error::Launch(format!("could not start `mpirun`: {e}")),
    })
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
/// 0 when every rank succeeded.
pub(crate) fn supervise(processes: usize, cuda: bool) -> Result<std::convert::Infallible> {
    let status = run_ranks(processes, &[], cuda)?;
    if status.success() {
        std::process::exit(0);
    }
    eprintln!(
        "fabric: the run's {processes} ranks failed ({}); their messages are above",
        describe(status)
    );
    std::process::exit(status.code().filter(|c| *c != 0).unwrap_or(1));
}

/// Starts `processes` workers for `ddp_spawn` and returns what rank 0's
/// function returned, serialised.
pub(crate) fn spawn(processes: usize, cuda: bool) -> Result<String> {
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
    )?;
    let result = std::fs::read_to_string(&path);
    let _ = std::fs::remove_file(&path);
    if !status.success() {
        return Err(Error::Launch(format!(
            "the {processes} ddp_spawn workers failed ({}); their messages are above",
            describe(status)
        )));
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
    let Ok(path) = std::env::var(SPAWN_RESULT_VAR) else {
        return Ok(());
    };
    let temporary = format!("{path}.tmp");
    std::fs::write(&temporary, serialised)
        .and_then(|()| std::fs::rename(&temporary, &path))
        .map_err(|e| {
            Error::Launch(format!(
                "could not hand rank 0's result back through {path}: {e}"
            ))
        })
}

/// Whether fabric's launcher started this process (as a rank).
pub(crate) fn was_launched() -> bool {
    std::env::var_os(LAUNCHED_VAR).is_some()
}

/// Whether this process is a `ddp_spawn` worker.
pub(crate) fn is_spawn_worker() -> bool {
    std::env::var_os(SPAWN_RESULT_VAR).is_some()
}

/// Ends a failed rank at once, after its message: the launcher then ends the
/// others. Skips `atexit` handlers, whose MPI_Finalize would wait for ranks
/// that may be blocked.
pub(crate) fn fail_rank(rank: usize, message: &str) -> ! {
    let _ = std::io::stdout().flush();
    eprintln!("fabric: rank {rank} failed: {message}");
    // SAFETY: ends the process.
    unsafe { libc::_exit(1) }
}

/// Makes a panic in any thread of a rank end the rank at once, naming it.
pub(crate) fn install_panic_hook(rank: usize) {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        previous(info);
        fail_rank(rank, "it panicked (see the panic message above)");
    }));
}
