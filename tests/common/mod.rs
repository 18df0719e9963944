//! What the integration tests share (`mod common;` in each test file that
//! uses it): the lock on libtorch's random generator, and the harness that
//! runs a test of the current test binary again in child processes, started
//! directly (fabric's own launcher then starts the ranks) or under `mpirun`.

// Every test binary compiles this module and uses only part of it.
#![allow(dead_code)]

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

// ---- the random generator ---------------------------------------------------

static RNG: Mutex<()> = Mutex::new(());

/// Holds libtorch's process-wide random generator (and fabric's global
/// seed, which loaders without a seed of their own read at each epoch) for
/// the calling test until the guard drops.
///
/// The tests of one binary run in parallel threads. A test that seeds the
/// generator (`tch::manual_seed`, `fabric.seed_everything`) and then
/// initialises layers or draws tensors, and compares the result with another
/// run, gets other numbers when another test seeds or draws in between. So
/// every test that seeds, and every test drawing from the generator in a
/// binary where others seed, holds this lock from its seeding to its last
/// draw (a whole in-process comparison may simply hold it throughout), but
/// never while it waits for a child process: the children have generators
/// of their own.
///
/// Not reentrant: take it once, at the level of the test. A test that
/// panicked while holding it does not poison it for the others.
pub fn rng_lock() -> MutexGuard<'static, ()> {
    RNG.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

// ---- child processes ----------------------------------------------------------

/// Names, in a child process, the test that started it: the test body
/// then runs its scenario instead of starting children.
pub const SCENARIO: &str = "FABRIC_SCENARIO";
/// The directory where the ranks of a child run write their results
/// ([`report`]).
pub const RESULTS: &str = "FABRIC_TEST_RESULTS";

/// The scenario this process runs, if a test started it as a child.
pub fn scenario() -> Option<String> {
    std::env::var(SCENARIO).ok()
}

/// Whether this process is a child started by test `test`.
pub fn in_scenario(test: &str) -> bool {
    scenario().as_deref() == Some(test)
}

/// Writes rank `rank`'s result for the parent to read ([`Run::results`]):
/// a file, because `mpirun` may splice one rank's long output line into
/// another's.
pub fn report(rank: usize, result: &str) {
    let dir = std::env::var(RESULTS).expect("run as a child of a `Scenario`");
    std::fs::write(Path::new(&dir).join(format!("rank{rank}")), result).unwrap();
}

/// How the child starts: the test binary itself, or `mpirun` with the
/// environment of each rank.
enum Launch {
    Direct,
    Mpirun(Vec<Vec<(String, String)>>),
}

/// A test of this binary run again as a child process, with
/// [`SCENARIO`] naming it: `cargo test`'s harness runs that test alone
/// (`--exact`, one thread), whose body sees [`in_scenario`] and plays its
/// part.
pub struct Scenario {
    test: String,
    launch: Launch,
    env: Vec<(String, OsString)>,
    env_remove: Vec<String>,
    args: Vec<String>,
    results: tempfile::TempDir,
}

/// What a child run did.
pub struct Run {
    /// The child's (or `mpirun`'s) exit status and output.
    pub output: Output,
    /// Its standard output, then its standard error.
    pub text: String,
    /// What each rank [`report`]ed, by rank; empty for a rank that
    /// reported nothing. As many as the ranks under `mpirun`; otherwise up
    /// to the highest rank that reported.
    pub results: Vec<String>,
    /// How long the child ran.
    pub elapsed: Duration,
}

impl Scenario {
    /// Test `test` of this binary, run directly: fabric's launcher, if the
    /// test asks for several processes, starts the ranks.
    pub fn direct(test: &str) -> Self {
        Self::new(test, Launch::Direct)
    }

    /// Test `test` of this binary in `ranks` ranks of `mpirun`.
    pub fn mpirun(test: &str, ranks: usize) -> Self {
        Self::new(test, Launch::Mpirun(vec![Vec::new(); ranks]))
    }

    /// Test `test` under `mpirun`, one rank for each entry of `ranks`, each
    /// with the environment variables of its entry (beside those of
    /// [`env`](Self::env), which every rank gets).
    pub fn mpirun_ranks(test: &str, ranks: &[Vec<(&str, String)>]) -> Self {
        let ranks = ranks
            .iter()
            .map(|env| {
                env.iter()
                    .map(|(name, value)| (name.to_string(), value.clone()))
                    .collect()
            })
            .collect();
        Self::new(test, Launch::Mpirun(ranks))
    }

    fn new(test: &str, launch: Launch) -> Self {
        Scenario {
            test: test.to_owned(),
            launch,
            env: Vec::new(),
            env_remove: Vec::new(),
            args: Vec::new(),
            results: tempfile::tempdir().unwrap(),
        }
    }

    /// Sets an environment variable in the child (in every rank).
    pub fn env(mut self, name: &str, value: impl AsRef<OsStr>) -> Self {
        self.env.push((name.to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Removes an environment variable from the child's environment.
    pub fn env_remove(mut self, name: &str) -> Self {
        self.env_remove.push(name.to_owned());
        self
    }

    /// An extra argument for the test harness of the child (`--ignored`).
    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.to_owned());
        self
    }

    /// The arguments that make the test harness run the test alone.
    fn test_args(&self) -> Vec<String> {
        let mut args = vec![
            "--exact".to_owned(),
            self.test.clone(),
            "--nocapture".to_owned(),
            "--test-threads=1".to_owned(),
        ];
        args.extend(self.args.iter().cloned());
        args
    }

    /// The command that runs the child, for a caller that starts it some
    /// other way (wrapped in another program, or spawned and watched).
    pub fn command(&self) -> Command {
        let exe = std::env::current_exe().unwrap();
        let results = self.results.path().as_os_str();
        let mut command;
        match &self.launch {
            Launch::Direct => {
                command = Command::new(exe);
                command
                    .args(self.test_args())
                    .env(SCENARIO, &self.test)
                    .env(RESULTS, results)
                    .envs(self.env.iter().map(|(k, v)| (k, v)));
            }
            Launch::Mpirun(ranks) => {
                command = Command::new("mpirun");
                command.args([
                    "--allow-run-as-root",
                    "--oversubscribe",
                    "--bind-to",
                    "none",
                ]);
                let mut every = vec![
                    format!("{SCENARIO}={}", self.test),
                    format!("{RESULTS}={}", self.results.path().display()),
                ];
                every.extend(
                    self.env
                        .iter()
                        .map(|(k, v)| format!("{k}={}", v.to_string_lossy())),
                );
                let identical = ranks.iter().all(Vec::is_empty);
                // One application context of all the ranks if they share
                // their environment, else one per rank.
                let contexts: Vec<(usize, &[(String, String)])> = if identical {
                    vec![(ranks.len(), &[])]
                } else {
                    ranks.iter().map(|env| (1, env.as_slice())).collect()
                };
                for (i, (processes, own)) in contexts.into_iter().enumerate() {
                    if i > 0 {
                        command.arg(":");
                    }
                    command.args(["-np", &processes.to_string()]);
                    for variable in every
                        .iter()
                        .cloned()
                        .chain(own.iter().map(|(k, v)| format!("{k}={v}")))
                    {
                        command.args(["-x", &variable]);
                    }
                    command.arg(&exe).args(self.test_args());
                }
            }
        }
        for name in &self.env_remove {
            command.env_remove(name);
        }
        command
    }

    /// Runs the child to its end; collects its output and the ranks'
    /// results.
    pub fn run(self) -> Run {
        let start = Instant::now();
        let (output, text) = run(&mut self.command());
        let elapsed = start.elapsed();
        let mut results = match &self.launch {
            Launch::Mpirun(ranks) => vec![String::new(); ranks.len()],
            Launch::Direct => Vec::new(),
        };
        for entry in std::fs::read_dir(self.results.path()).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(rank) = name.strip_prefix("rank").and_then(|r| r.parse().ok()) else {
                continue;
            };
            if results.len() <= rank {
                results.resize(rank + 1, String::new());
            }
            results[rank] = std::fs::read_to_string(entry.path()).unwrap();
        }
        Run {
            output,
            text,
            results,
            elapsed,
        }
    }
}

impl Run {
    /// Whether the child exited successfully.
    pub fn success(&self) -> bool {
        self.output.status.success()
    }

    /// Panics, showing the child's output, unless it succeeded.
    #[track_caller]
    pub fn assert_success(self) -> Self {
        assert!(
            self.success(),
            "the child failed ({}):\n{}",
            self.output.status,
            self.text
        );
        self
    }
}

/// Runs `command` to its end; returns its output, and its standard output
/// then standard error as text.
pub fn run(command: &mut Command) -> (Output, String) {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{:?} does not start: {e}", command.get_program()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output, text)
}

/// The example binary `name`, which `cargo test` builds beside the test
/// binaries.
pub fn example(name: &str) -> PathBuf {
    let deps = std::env::current_exe().unwrap();
    let path = deps
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("examples")
        .join(name);
    assert!(
        path.exists(),
        "{} was not built: run the whole `cargo test`, which builds the examples, or `cargo build --examples` first",
        path.display()
    );
    path
}
