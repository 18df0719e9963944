//! Preemption, in real multi-process runs on the CPU: a signal (SIGUSR1 to
//! one rank or to `mpirun`, SIGTERM to one rank) stops every rank at the
//! same step, one checkpoint is saved, a simulated SLURM job is requeued
//! through a fake `scontrol`, and the run, started again, resumes and ends
//! with the parameters of an uninterrupted run; without the opt-in a
//! signal keeps its default action.
//!
//! Each test re-runs this test binary (`FABRIC_SCENARIO` names what to
//! do), under `mpirun` for the ranks.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use fabric::checkpoint::State;
use fabric::preemption::{Preemption, REQUEUE_EXIT_CODE};
use fabric::{Error, Fabric};
use tch::nn::{self, OptimizerConfig};
use tch::{Device, Kind, Tensor};

const SCENARIO: &str = "FABRIC_SCENARIO";
const TOKEN: &str = "FABRIC_TEST_TOKEN";
/// How long any run of a test may take: nothing hangs.
const DEADLINE: Duration = Duration::from_secs(120);

fn scenario() -> Option<String> {
    std::env::var(SCENARIO).ok()
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

// ---- the training every run does ----------------------------------------

/// The batch of `rank` at `step`: a function of both only, so that a
/// resumed run sees what an uninterrupted one would.
fn batch(step: u64, rank: usize) -> (Tensor, Tensor) {
    let offset = (step * 1000 + rank as u64 * 100) as f64;
    let x = ((Tensor::arange(32, (Kind::Float, Device::Cpu)) + offset) * 0.37)
        .sin()
        .view([4, 8]);
    let y = x.sum_dim_intlist(1, true, Kind::Float).cos().repeat([1, 3]);
    (x, y)
}

/// A rank: trains `STEPS` steps of SGD on a linear model, from the
/// checkpoint `CKPT` when it exists; with `PREEMPTION=1` stops, saves and
/// requeues when preempted. Prints `STEP`, `STOPPED`, `RESUMED` and
/// `RESULT` lines and exits with the documented status.
fn rank_main() {
    let ckpt = PathBuf::from(var("CKPT").unwrap());
    let steps: u64 = var("STEPS").unwrap().parse().unwrap();
    let slow = Duration::from_millis(var("SLOW_MS").map_or(0, |v| v.parse().unwrap()));
    let mut builder = Fabric::builder()
        .accelerator("cpu")
        .collective_timeout(Duration::from_secs(30));
    if var("PREEMPTION").as_deref() == Some("1") {
        builder = builder.preemption(Preemption::new());
    }
    if var("OWN_LAUNCHER").as_deref() == Some("1") {
        builder = builder.strategy("ddp").devices(2);
    }
    let result = builder.launch(|fabric| -> fabric::Result<Vec<f32>> {
        let rank = fabric.global_rank();
        fabric.seed_everything(0);
        let mut vs = nn::VarStore::new(Device::Cpu);
        let net = nn::linear(vs.root(), 8, 3, Default::default());
        let opt = nn::Sgd::default().build(&vs, 0.05)?;
        let (model, mut opt) = fabric.setup(&mut vs, net, opt)?;
        let mut step = 0u64;
        if ckpt.exists() {
            fabric.load(
                &ckpt,
                &mut State::new()
                    .model("model", &mut vs)
                    .value("step", &mut step),
            )?;
            println!("RESUMED rank={rank} step={step}");
        }
        while step < steps {
            let (x, y) = batch(step, rank);
            opt.zero_grad();
            let loss = model.forward(&x).mse_loss(&y, tch::Reduction::Mean);
            if rank == 0 {
                // Rank 1 waits in the gradients' all-reduce meanwhile: a
                // signal to it arrives during a collective.
                std::thread::sleep(slow);
            }
            fabric.backward(&loss)?;
            opt.step()?;
            step += 1;
            println!("STEP rank={rank} step={step} pid={}", std::process::id());
            if fabric.preempted()? {
                println!("STOPPED rank={rank} step={step}");
                fabric.save(
                    &ckpt,
                    &State::new()
                        .model("model", &mut vs)
                        .value("step", &mut step),
                )?;
                return fabric.requeue();
            }
        }
        let mut named: Vec<_> = vs.variables().into_iter().collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(named
            .iter()
            .flat_map(|(_, t)| Vec::<f32>::try_from(t.view([-1])).unwrap())
            .collect())
    });
    let rank = var("OMPI_COMM_WORLD_RANK").unwrap_or_default();
    match &result {
        Ok(params) => {
            let bits: Vec<String> = params
                .iter()
                .map(|p| format!("{:08x}", p.to_bits()))
                .collect();
            println!("RESULT rank={rank} params={}", bits.join(","));
        }
        Err(error) => println!("ENDED rank={rank} code={} error={error}", error.exit_code()),
    }
    std::process::exit(
        result
            .as_ref()
            .err()
            .map_or(0, |e| i32::from(e.exit_code())),
    );
}

// ---- running it -----------------------------------------------------------

/// What a test changes about a run.
struct RunSpec<'a> {
    test: &'a str,
    dir: &'a Path,
    preemption: bool,
    slurm: bool,
    steps: u64,
    slow_ms: u64,
    /// Started by fabric's own launcher (`devices(2)`), not by `mpirun`.
    own_launcher: bool,
}

/// How a run ended.
struct Ended {
    status: ExitStatus,
    text: String,
    elapsed: Duration,
}

/// Runs two ranks under `mpirun`; `signal(line, mpirun_pid)` sees each
/// line the ranks print, as they print it, and may send signals. Killed at
/// [`DEADLINE`].
fn run_world(spec: &RunSpec<'_>, mut signal: impl FnMut(&str, u32)) -> Ended {
    let token = format!("{:016x}", rand::random::<u64>());
    let path = format!(
        "{}:{}",
        spec.dir.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // Each rank's own variables: its place in the simulated SLURM job.
    let rank_env = |rank: usize| -> Vec<(&str, String)> {
        if !spec.slurm {
            return Vec::new();
        }
        vec![
            ("SLURM_NTASKS", "2".to_string()),
            ("SLURM_PROCID", rank.to_string()),
            ("SLURM_LOCALID", rank.to_string()),
            ("SLURM_NODEID", "0".to_string()),
            ("SLURM_JOB_NODELIST", "127.0.0.1".to_string()),
            ("SLURM_JOB_NAME", "train".to_string()),
            ("SLURM_JOB_ID", "4242".to_string()),
        ]
    };
    // Kept to the end: it owns the children's results directory.
    let mut scenario = if spec.own_launcher {
        rank_env(0).into_iter().fold(
            common::Scenario::direct(spec.test).env("OWN_LAUNCHER", "1"),
            |scenario, (name, value)| scenario.env(name, value),
        )
    } else if spec.slurm {
        common::Scenario::mpirun_ranks(spec.test, &[rank_env(0), rank_env(1)])
    } else {
        common::Scenario::mpirun(spec.test, 2)
    };
    for (name, value) in [
        (TOKEN, token.clone()),
        ("CKPT", spec.dir.join("ckpt").display().to_string()),
        ("STEPS", spec.steps.to_string()),
        ("SLOW_MS", spec.slow_ms.to_string()),
        ("PREEMPTION", if spec.preemption { "1" } else { "0" }.into()),
        ("PATH", path),
        (
            "FAKE_SCONTROL_LOG",
            spec.dir.join("scontrol.log").display().to_string(),
        ),
    ] {
        scenario = scenario.env(name, value);
    }
    let mut command = scenario.command();
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = command.spawn().unwrap();
    let pid = child.id();
    let (lines, received) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let mut stderr = child.stderr.take().unwrap();
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let mut text = String::new();
    let status = loop {
        match received.recv_timeout(Duration::from_millis(20)) {
            Ok(line) => {
                signal(&line, pid);
                text.push_str(&line);
                text.push('\n');
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break child.wait().unwrap(),
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            kill_leftovers(&token);
            panic!("the run hung (killed after {DEADLINE:?}):\n{text}");
        }
    };
    while let Ok(line) = received.try_recv() {
        text.push_str(&line);
        text.push('\n');
    }
    text.push_str(&errors.join().unwrap());
    kill_leftovers(&token);
    Ended {
        status,
        text,
        elapsed: start.elapsed(),
    }
}

/// Ends the processes a run left behind (those with its token).
fn kill_leftovers(token: &str) {
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid != std::process::id() as i32
            && environ.windows(token.len()).any(|w| w == token.as_bytes())
        {
            // SAFETY: kill has no memory preconditions; the pid is one of
            // this test's own processes.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// A directory with a fake `scontrol` on `bin/` that records its arguments.
fn job_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let scontrol = bin.join("scontrol");
    std::fs::write(
        &scontrol,
        "#!/bin/sh\necho \"$@\" >> \"$FAKE_SCONTROL_LOG\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&scontrol, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// `PREFIX key=value ...` lines, by rank.
fn lines_of(text: &str, prefix: &str) -> BTreeMap<usize, BTreeMap<String, String>> {
    let mut by_rank = BTreeMap::new();
    // A rank's first line may follow the test harness's `test ... ` text.
    let marker = format!("{prefix} rank=");
    for line in text
        .lines()
        .filter_map(|l| l.find(&marker).map(|i| &l[i + prefix.len()..]))
    {
        let fields: BTreeMap<String, String> = line
            .split_whitespace()
            .filter_map(|f| f.split_once('='))
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        by_rank.insert(fields["rank"].parse().unwrap(), fields);
    }
    by_rank
}

fn send(pid: u32, signal: i32) {
    // SAFETY: kill has no memory preconditions.
    assert_eq!(unsafe { libc::kill(pid as i32, signal) }, 0);
}

const STEPS: u64 = 30;

/// The uninterrupted run's parameters (rank 0's; both ranks agree).
fn uninterrupted(test: &str) -> String {
    let dir = job_dir();
    let ended = run_world(
        &RunSpec {
            test,
            dir: dir.path(),
            preemption: true,
            slurm: true,
            steps: STEPS,
            slow_ms: 0,
            own_launcher: false,
        },
        |_, _| {},
    );
    assert!(ended.status.success(), "{}", ended.text);
    let results = lines_of(&ended.text, "RESULT");
    assert_eq!(results.len(), 2, "{}", ended.text);
    assert_eq!(results[&0]["params"], results[&1]["params"]);
    results[&0]["params"].clone()
}

/// The preempted run, checked: every rank stopped at the same step, with
/// the requeue status; then the run again, resumed from that step, ending
/// with `expected` parameters. Returns the step it stopped at.
fn preempt_and_resume(
    test: &str,
    slurm: bool,
    own_launcher: bool,
    expected: Option<&str>,
    mut signal: impl FnMut(&str, u32),
) -> (u64, tempfile::TempDir) {
    let dir = job_dir();
    let spec = RunSpec {
        test,
        dir: dir.path(),
        preemption: true,
        slurm,
        steps: STEPS,
        slow_ms: 40,
        own_launcher,
    };
    let ended = run_world(&spec, &mut signal);
    let text = &ended.text;
    assert_eq!(
        ended.status.code(),
        Some(i32::from(REQUEUE_EXIT_CODE)),
        "the requeue status expected ({:?}):\n{text}",
        ended.status
    );
    let stopped = lines_of(text, "STOPPED");
    assert_eq!(stopped.len(), 2, "every rank stops:\n{text}");
    assert_eq!(
        stopped[&0]["step"], stopped[&1]["step"],
        "the ranks stop at the same step:\n{text}"
    );
    let step: u64 = stopped[&0]["step"].parse().unwrap();
    assert!(step < STEPS, "stopped before the end:\n{text}");
    let ended_lines = lines_of(text, "ENDED");
    assert_eq!(ended_lines.len(), 2, "{text}");
    assert!(
        ended_lines
            .values()
            .all(|f| f["code"] == REQUEUE_EXIT_CODE.to_string()),
        "{text}"
    );
    assert!(
        !text.contains("failed"),
        "no rank reported as failed:\n{text}"
    );
    // One checkpoint, at that step.
    let entries: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("ckpt"))
        .collect();
    assert_eq!(entries, ["ckpt"], "one checkpoint:\n{text}");
    let log = std::fs::read_to_string(dir.path().join("scontrol.log")).unwrap_or_default();
    if slurm {
        assert_eq!(log, "requeue 4242\n", "scontrol called once, by rank 0");
    } else {
        assert_eq!(log, "", "no SLURM job: scontrol is not called");
    }
    if let Some(expected) = expected {
        let again = run_world(&spec, |_, _| {});
        let text = &again.text;
        assert!(again.status.success(), "{text}");
        let resumed = lines_of(text, "RESUMED");
        assert_eq!(resumed.len(), 2, "{text}");
        assert!(
            resumed.values().all(|f| f["step"] == step.to_string()),
            "{text}"
        );
        let results = lines_of(text, "RESULT");
        assert_eq!(results.len(), 2, "{text}");
        for fields in results.values() {
            assert_eq!(
                fields["params"], expected,
                "the resumed run ends as the uninterrupted one:\n{text}"
            );
        }
        assert_eq!(
            std::fs::read_to_string(dir.path().join("scontrol.log")).unwrap(),
            "requeue 4242\n",
            "the resumed run does not requeue"
        );
    }
    println!("stopped at step {step} in {:?}", ended.elapsed);
    (step, dir)
}

// ---- the tests ------------------------------------------------------------

#[test]
fn sigusr1_to_one_rank_during_a_collective_stops_every_rank_requeues_and_resumes_equal() {
    let test =
        "sigusr1_to_one_rank_during_a_collective_stops_every_rank_requeues_and_resumes_equal";
    if scenario().as_deref() == Some(test) {
        return rank_main();
    }
    let expected = uninterrupted(test);
    let mut sent = false;
    preempt_and_resume(test, true, false, Some(&expected), |line, _| {
        // Rank 1 waits for rank 0 in the gradients' all-reduce most of a
        // step: a burst of signals to it lands during a collective.
        if !sent && line.contains("STEP rank=1 step=5 ") {
            sent = true;
            let pid: u32 = line.rsplit("pid=").next().unwrap().parse().unwrap();
            for _ in 0..3 {
                send(pid, libc::SIGUSR1);
                std::thread::sleep(Duration::from_millis(7));
            }
        }
    });
}

#[test]
fn sigusr1_to_mpirun_stops_the_run_with_the_requeue_status_and_no_scontrol_outside_slurm() {
    let test =
        "sigusr1_to_mpirun_stops_the_run_with_the_requeue_status_and_no_scontrol_outside_slurm";
    if scenario().as_deref() == Some(test) {
        return rank_main();
    }
    let mut sent = false;
    preempt_and_resume(test, false, false, None, |line, mpirun| {
        if !sent && line.contains("STEP rank=0 step=4 ") {
            sent = true;
            send(mpirun, libc::SIGUSR1);
        }
    });
}

#[test]
fn sigterm_to_one_rank_stops_the_run_instead_of_failing_it() {
    let test = "sigterm_to_one_rank_stops_the_run_instead_of_failing_it";
    if scenario().as_deref() == Some(test) {
        return rank_main();
    }
    let mut sent = false;
    preempt_and_resume(test, true, false, None, |line, _| {
        if !sent && line.contains("STEP rank=0 step=3 ") {
            sent = true;
            let pid: u32 = line.rsplit("pid=").next().unwrap().parse().unwrap();
            send(pid, libc::SIGTERM);
        }
    });
}

#[test]
fn sigusr1_to_the_process_that_started_the_ranks_is_passed_on_to_them() {
    let test = "sigusr1_to_the_process_that_started_the_ranks_is_passed_on_to_them";
    if scenario().as_deref() == Some(test) {
        return rank_main();
    }
    let mut sent = false;
    preempt_and_resume(test, false, true, None, |line, launcher| {
        // SLURM's `--signal=B:USR1@90` signals the batch step's process:
        // here fabric's launching process, which must not die of it.
        if !sent && line.contains("STEP rank=0 step=4 ") {
            sent = true;
            send(launcher, libc::SIGUSR1);
        }
    });
}

/// In one process: the signal's default action without the opt-in; with
/// it, the signal stops the run with the requeue error (no SLURM job: no
/// `scontrol`), and once the `Fabric` is dropped the default action is
/// back.
#[test]
fn a_signal_keeps_its_default_action_without_the_opt_in_and_after_the_fabric() {
    let test = "a_signal_keeps_its_default_action_without_the_opt_in_and_after_the_fabric";
    match scenario().as_deref() {
        Some("plain") => {
            let _fabric = Fabric::builder().accelerator("cpu").build().unwrap();
            send(std::process::id(), libc::SIGUSR1);
            std::thread::sleep(Duration::from_secs(5));
            println!("SURVIVED");
            return;
        }
        Some("opted-in") => {
            let mut fabric = Fabric::builder()
                .accelerator("cpu")
                .preemption(Preemption::new())
                .build()
                .unwrap();
            assert!(!fabric.preempted().unwrap());
            send(std::process::id(), libc::SIGUSR1);
            std::thread::sleep(Duration::from_millis(200));
            assert!(fabric.preempted().unwrap(), "the signal stops the run");
            assert!(fabric.preempted().unwrap(), "and stays seen");
            let error = fabric.requeue::<()>().unwrap_err();
            assert!(
                matches!(&error, Error::Preempted { signal, job: None } if signal == "SIGUSR1"),
                "{error:?}"
            );
            assert_eq!(error.exit_code(), REQUEUE_EXIT_CODE);
            println!("REQUEUED {error}");
            drop(fabric);
            send(std::process::id(), libc::SIGUSR1);
            std::thread::sleep(Duration::from_secs(5));
            println!("SURVIVED");
            return;
        }
        Some(_) => return,
        None => {}
    }
    for (case, requeued) in [("plain", false), ("opted-in", true)] {
        let dir = job_dir();
        let path = format!(
            "{}:{}",
            dir.path().join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let output = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", test, "--nocapture", "--test-threads=1"])
            .env(SCENARIO, case)
            .env("PATH", path)
            .env("FAKE_SCONTROL_LOG", dir.path().join("scontrol.log"))
            .env_remove("SLURM_JOB_ID")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(
            output.status.signal(),
            Some(libc::SIGUSR1),
            "{case}: ended by SIGUSR1's default action ({:?}):\n{text}",
            output.status
        );
        assert!(!text.contains("SURVIVED"), "{case}:\n{text}");
        assert_eq!(
            text.contains("REQUEUED preempted: SIGUSR1"),
            requeued,
            "{case}:\n{text}"
        );
        assert!(!dir.path().join("scontrol.log").exists(), "{case}");
    }
}

#[test]
fn bad_preemption_options_are_errors_before_anything_runs() {
    let err = Fabric::builder()
        .accelerator("cpu")
        .preemption(Preemption::new().signals([libc::SIGKILL]))
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("cannot stop a run"), "{err}");
    let mut fabric = Fabric::builder().accelerator("cpu").build().unwrap();
    assert!(!fabric.preempted().unwrap(), "false without the opt-in");
    let err = fabric.requeue::<()>().unwrap_err();
    assert!(
        err.to_string().contains("needs the preemption option"),
        "{err}"
    );
}
