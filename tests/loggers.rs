//! The CSV and TensorBoard loggers: their files, read back with Python's
//! `csv` and TensorBoard's own `EventAccumulator`, Lightning's layout, and
//! flushing when training fails.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Barrier};

use fabric::{CsvLogger, Fabric, Logger, TensorBoardLogger};

fn python() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python")
}

fn read_back(metrics_csv: &Path, log_dir: &Path) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/read_logs.py");
    let output = Command::new(python())
        .arg(script)
        .arg(metrics_csv)
        .arg(log_dir)
        .output()
        .expect("the venv's python (run ./dev setup)");
    assert!(
        output.status.success(),
        "read_logs.py failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

fn loss_at(step: u64) -> f64 {
    1.0 / (step as f64 + 1.0)
}

#[test]
fn csv_and_tensorboard_files_are_read_back_by_python() {
    let root = tempfile::tempdir().unwrap();
    let csv = CsvLogger::new(root.path(), "run").flush_logs_every_n_steps(4);
    // Both in one directory: the TensorBoard logger takes the version the
    // CSV logger claimed.
    let tb = TensorBoardLogger::new(root.path(), "run").version(csv.version_number());
    let (csv_dir, tb_dir) = (csv.log_dir(), tb.log_dir());
    assert_eq!(csv_dir, root.path().join("run/version_0"));
    let mut fabric = Fabric::builder()
        .accelerator("cpu")
        .logger(csv)
        .logger(tb)
        .build()
        .unwrap();
    fabric
        .log_hyperparams(&serde_json::json!({
            "lr": 0.01,
            "optimizer": "adamw",
            "amsgrad": false,
            "model": {"hidden": 128, "dropout": 0.1},
        }))
        .unwrap();
    for step in 0..25u64 {
        fabric
            .log_dict([("loss", loss_at(step))], Some(step))
            .unwrap();
        if step % 2 == 0 {
            fabric.log("acc", step as f64 / 25.0).unwrap();
        }
        // A metric that appears late widens the CSV after rows were written.
        if step >= 10 && step % 5 == 0 {
            fabric
                .log_dict([("val/loss", 2.0 * loss_at(step))], Some(step))
                .unwrap();
        }
    }
    fabric.finish(true).unwrap();
    assert_eq!(tb_dir, csv_dir);

    let logs = read_back(&csv_dir.join("metrics.csv"), &tb_dir);

    // CSV: sorted union of the columns, one row per log call.
    let rows = logs["csv"].as_array().unwrap();
    let header: Vec<&str> = rows[0]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut expected_header = vec!["acc", "loss", "step", "val/loss"];
    expected_header.sort();
    let mut sorted_header = header.clone();
    sorted_header.sort();
    assert_eq!(sorted_header, expected_header);
    assert_eq!(rows.len(), 25 + 13 + 3);
    let loss_rows: Vec<&serde_json::Value> = rows.iter().filter(|r| r["loss"] != "").collect();
    assert_eq!(loss_rows.len(), 25);
    for (step, row) in loss_rows.iter().enumerate() {
        assert_eq!(row["step"], step.to_string());
        let value: f64 = row["loss"].as_str().unwrap().parse().unwrap();
        assert_eq!(value, loss_at(step as u64), "exact round trip");
        assert_eq!(row["acc"], "");
    }
    let val: Vec<(String, f64)> = rows
        .iter()
        .filter(|r| r["val/loss"] != "")
        .map(|r| {
            (
                r["step"].as_str().unwrap().to_owned(),
                r["val/loss"].as_str().unwrap().parse().unwrap(),
            )
        })
        .collect();
    assert_eq!(val, [10, 15, 20].map(|s| (s.to_string(), 2.0 * loss_at(s))));

    // TensorBoard: scalars with their steps, as float32.
    let scalars = &logs["scalars"];
    let loss = scalars["loss"].as_array().unwrap();
    assert_eq!(loss.len(), 25);
    for (step, event) in loss.iter().enumerate() {
        assert_eq!(event[0], step);
        assert_eq!(
            event[1].as_f64().unwrap(),
            f64::from(loss_at(step as u64) as f32)
        );
    }
    assert_eq!(scalars["val/loss"].as_array().unwrap().len(), 3);
    assert_eq!(scalars["acc"].as_array().unwrap().len(), 13);
    assert_eq!(scalars["hp_metric"], serde_json::json!([[0, -1.0]]));

    // Hyperparameters: the HParams plugin's summaries, nested keys flattened.
    assert_eq!(
        logs["hparams"],
        serde_json::json!({"lr": 0.01, "optimizer": "adamw", "amsgrad": false,
            "model/hidden": 128.0, "model/dropout": 0.1})
    );
    assert_eq!(logs["hparam_types"]["optimizer"], 1, "DATA_TYPE_STRING");
    assert_eq!(logs["hparam_types"]["amsgrad"], 2, "DATA_TYPE_BOOL");
    assert_eq!(logs["hparam_types"]["lr"], 3, "DATA_TYPE_FLOAT64");
    assert_eq!(logs["metrics"], serde_json::json!(["hp_metric"]));
    assert_eq!(logs["status"], 1, "STATUS_SUCCESS");

    // hparams.yaml beside metrics.csv, as Lightning's CSV logger writes it.
    let yaml = std::fs::read_to_string(csv_dir.join("hparams.yaml")).unwrap();
    let parsed: serde_json::Value = serde_yaml_ng::from_str(&yaml).unwrap();
    assert_eq!(parsed["model"]["hidden"], 128);
    assert_eq!(parsed["optimizer"], "adamw");
    // The event file's name follows TensorFlow's pattern.
    let events: Vec<String> = std::fs::read_dir(&tb_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("events.out.tfevents."))
        .collect();
    assert_eq!(events.len(), 1, "{events:?}");
    let host = gethostname();
    assert!(events[0].contains(&format!(".{host}.")), "{}", events[0]);
}

fn gethostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}

#[test]
fn versions_follow_lightnings_layout() {
    let root = tempfile::tempdir().unwrap();
    for expected in 0..3 {
        let mut fabric = Fabric::builder()
            .accelerator("cpu")
            .logger(CsvLogger::new(root.path(), "exp"))
            .build()
            .unwrap();
        let dir = fabric.logger::<CsvLogger>().unwrap().log_dir();
        assert_eq!(dir, root.path().join(format!("exp/version_{expected}")));
        fabric.log("x", 1.0).unwrap();
    }
    // A fixed version replaces the metrics there.
    let mut fabric = Fabric::builder()
        .accelerator("cpu")
        .logger(CsvLogger::new(root.path(), "exp").version(1))
        .build()
        .unwrap();
    fabric.log("y", 2.0).unwrap();
    drop(fabric);
    let csv = std::fs::read_to_string(root.path().join("exp/version_1/metrics.csv")).unwrap();
    assert_eq!(csv, "step,y\n0,2.0\n");
    // Other entries are ignored when looking for the next version.
    std::fs::create_dir_all(root.path().join("exp/version_x")).unwrap();
    std::fs::write(root.path().join("exp/version_9"), "a file").unwrap();
    let tb = TensorBoardLogger::new(root.path(), "exp");
    assert_eq!(tb.version_number(), 3);
    assert_eq!(tb.experiment_name(), "exp");
    assert_eq!(fabric::Logger::name(&tb), "TensorBoardLogger");
}

#[test]
fn two_loggers_on_one_directory_take_two_versions_as_in_lightning() {
    let root = tempfile::tempdir().unwrap();
    let mut fabric = Fabric::builder()
        .accelerator("cpu")
        .logger(CsvLogger::new(root.path(), "same"))
        .logger(TensorBoardLogger::new(root.path(), "same"))
        .build()
        .unwrap();
    fabric.log("loss", 1.0).unwrap();
    assert_eq!(fabric.logger::<CsvLogger>().unwrap().version_number(), 0);
    assert_eq!(
        fabric
            .logger::<TensorBoardLogger>()
            .unwrap()
            .version_number(),
        1
    );
}

#[test]
fn a_step_left_out_is_the_number_of_calls_before() {
    let root = tempfile::tempdir().unwrap();
    let mut fabric = Fabric::builder()
        .accelerator("cpu")
        .logger(CsvLogger::new(root.path(), "n").prefix("train"))
        .build()
        .unwrap();
    fabric.log("a", 1.0).unwrap();
    fabric.log("a", 2.0).unwrap();
    fabric.log_dict([("a", 3.0)], Some(10)).unwrap();
    fabric.log("a", 4.0).unwrap();
    drop(fabric);
    let csv = std::fs::read_to_string(root.path().join("n/version_0/metrics.csv")).unwrap();
    assert_eq!(csv, "step,train-a\n0,1.0\n1,2.0\n10,3.0\n3,4.0\n");
}

/// A training function that logs, then fails.
fn train_and_fail(fabric: &mut Fabric) -> anyhow::Result<()> {
    for step in 0..7u64 {
        fabric.log_dict([("loss", step as f64)], Some(step))?;
    }
    anyhow::bail!("diverged")
}

#[test]
fn loggers_flush_when_training_ends_with_an_error_or_a_panic() {
    let root = tempfile::tempdir().unwrap();
    let build = |name: &str| {
        Fabric::builder()
            .accelerator("cpu")
            .logger(CsvLogger::new(root.path(), format!("{name}-csv")))
            .logger(TensorBoardLogger::new(root.path(), format!("{name}-tb")))
            .build()
            .unwrap()
    };
    let mut fabric = build("error");
    assert!(train_and_fail(&mut fabric).is_err());
    drop(fabric);

    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut fabric = build("panic");
        fabric.log_dict([("loss", 0.0)], Some(0)).unwrap();
        panic!("out of memory, say");
    }));
    assert!(result.is_err());

    for (name, rows) in [("error", 7), ("panic", 1)] {
        let dir = root.path().join(format!("{name}-csv/version_0"));
        let csv = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
        assert_eq!(csv.lines().count(), rows + 1, "{name}: {csv}");
        let logs = read_back_scalars(&root.path().join(format!("{name}-tb/version_0")));
        assert_eq!(logs.len(), rows, "{name}");
    }
}

/// The `loss` events of an event file, read with `EventAccumulator`.
fn read_back_scalars(dir: &Path) -> Vec<serde_json::Value> {
    let code = "import json, sys\n\
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator\n\
acc = EventAccumulator(sys.argv[1]); acc.Reload()\n\
print(json.dumps([[e.step, e.value] for e in acc.Scalars('loss')]))";
    let output = Command::new(python())
        .args(["-c", code])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn hyperparameters_must_be_a_map() {
    let root = tempfile::tempdir().unwrap();
    let mut fabric = Fabric::builder()
        .accelerator("cpu")
        .logger(CsvLogger::new(root.path(), "h"))
        .build()
        .unwrap();
    let err = fabric.log_hyperparams(&[1, 2, 3]).unwrap_err().to_string();
    assert!(err.contains("must serialise to a map"), "{err}");

    #[derive(serde::Serialize)]
    struct Config {
        lr: f64,
        layers: Vec<u32>,
    }
    fabric
        .log_hyperparams(&Config {
            lr: 0.1,
            layers: vec![64, 32],
        })
        .unwrap();
    fabric
        .log_hyperparams(&serde_json::json!({"seed": 3}))
        .unwrap();
    let yaml = std::fs::read_to_string(root.path().join("h/version_0/hparams.yaml")).unwrap();
    let parsed: serde_json::Value = serde_yaml_ng::from_str(&yaml).unwrap();
    assert_eq!(
        parsed,
        serde_json::json!({"lr": 0.1, "layers": [64, 32], "seed": 3})
    );
}

#[test]
fn loggers_started_at_once_claim_different_versions() {
    let root = tempfile::tempdir().unwrap();
    // Asked for their directory before either logged: still two versions.
    let a = CsvLogger::new(root.path(), "seq");
    let b = TensorBoardLogger::new(root.path(), "seq");
    assert_eq!(a.log_dir(), root.path().join("seq/version_0"));
    assert_eq!(b.log_dir(), root.path().join("seq/version_1"));

    // Runs racing for the next version, each writing its own rows.
    let runs = 8;
    let barrier = Arc::new(Barrier::new(runs));
    let threads: Vec<_> = (0..runs)
        .map(|run| {
            let (root, barrier) = (root.path().to_path_buf(), Arc::clone(&barrier));
            std::thread::spawn(move || {
                let mut csv = CsvLogger::new(&root, "race").flush_logs_every_n_steps(3);
                barrier.wait();
                for step in 0..10 {
                    csv.log_metrics(&[("run", run as f64)], Some(step)).unwrap();
                }
                csv.finalize(true).unwrap();
                csv.log_dir()
            })
        })
        .collect();
    let mut dirs: Vec<PathBuf> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    for (run, dir) in dirs.iter().enumerate() {
        let csv = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
        let expected: String = std::iter::once("run,step\n".to_string())
            .chain((0..10).map(|step| format!("{:?},{step}\n", run as f64)))
            .collect();
        assert_eq!(csv, expected, "{}", dir.display());
    }
    dirs.sort();
    dirs.dedup();
    assert_eq!(dirs.len(), runs, "every run has its own version");
}

#[test]
fn a_dropped_csv_logger_writes_its_buffered_rows() {
    let root = tempfile::tempdir().unwrap();
    let mut csv = CsvLogger::new(root.path(), "drop");
    csv.log_metrics(&[("loss", 0.5)], Some(0)).unwrap();
    csv.log_metrics(&[("loss", 0.25)], Some(1)).unwrap();
    let dir = csv.log_dir();
    drop(csv);
    let written = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
    assert_eq!(written, "loss,step\n0.5,0\n0.25,1\n");
}
