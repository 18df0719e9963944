//! [`CsvLogger`]: metrics in a CSV file and hyperparameters in YAML, in
//! Lightning's layout.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use super::version::ExperimentDir;
use super::{Hyperparams, Logger, LoggerError, prefixed};
use crate::fs;

const METRICS_FILE: &str = "metrics.csv";
const HPARAMS_FILE: &str = "hparams.yaml";

/// Logs metrics to `<root_dir>/<name>/version_<n>/metrics.csv` and
/// hyperparameters to `hparams.yaml` beside it, as Lightning's `CSVLogger`.
///
/// - The version is the next free one (`version_0`, `version_1`, ...) unless
///   fixed with [`version`](Self::version); it is chosen, and its directory
///   created, when the logger first logs (on global rank 0 only) or when
///   [`log_dir`](Self::log_dir) is first called. Creating the directory
///   claims the version: two loggers with the same `root_dir` and `name`,
///   in one process or in runs started at the same time, take different
///   versions. (To put a CSV and a TensorBoard logger in one directory, give
///   the second the first one's [`version_number`](Self::version_number).)
/// - Each call to [`Fabric::log_dict`](crate::Fabric::log_dict) is one row
///   with a `step` column; without a step, the row's step is the number of
///   rows logged before it.
/// - The columns are the sorted union of every metric name seen so far: when
///   a new name appears, the file is rewritten with the wider header (as
///   Lightning does), and rows that lack a metric leave its cell empty.
/// - Rows are buffered and written every
///   [`flush_logs_every_n_steps`](Self::flush_logs_every_n_steps) rows (100),
///   by [`save`](Self::save), when training ends, with an error or not
///   ([`Logger::finalize`] calls `save`), and when the logger is dropped.
///   Written rows are flushed to the disk (`fsync`).
///
/// ```
/// use fabric::{CsvLogger, Fabric};
///
/// # fn main() -> fabric::Result<()> {
/// let dir = tempfile::tempdir().unwrap();
/// let csv = CsvLogger::new(dir.path(), "digits");
/// let log_dir = csv.log_dir();
/// let mut fabric = Fabric::builder().accelerator("cpu").logger(csv).build()?;
/// fabric.log_hyperparams(&serde_json::json!({"lr": 0.01, "batch_size": 64}))?;
/// fabric.log_dict([("loss", 0.5)], Some(0))?;
/// fabric.log_dict([("loss", 0.25), ("acc", 0.9)], Some(1))?;
/// fabric.finish(true)?;
///
/// assert_eq!(log_dir, dir.path().join("digits/version_0"));
/// let csv = std::fs::read_to_string(log_dir.join("metrics.csv")).unwrap();
/// assert_eq!(csv, "acc,loss,step\n,0.5,0\n0.9,0.25,1\n");
/// let yaml = std::fs::read_to_string(log_dir.join("hparams.yaml")).unwrap();
/// assert!(yaml.contains("lr: 0.01"));
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct CsvLogger {
    dir: ExperimentDir,
    prefix: String,
    flush_every: u64,
    /// The columns of the file on disk, sorted.
    keys: Vec<String>,
    /// Rows not yet on disk: (step, [(column, value)]).
    pending: Vec<(u64, Vec<(String, f64)>)>,
    rows: u64,
    hparams: Hyperparams,
    /// Whether this logger has written (or cleared) `metrics.csv` yet.
    started: bool,
}

impl CsvLogger {
    /// A logger writing under `<root_dir>/<name>/version_<n>` (Lightning's
    /// default `name` is `"lightning_logs"`).
    pub fn new(root_dir: impl AsRef<Path>, name: impl Into<String>) -> Self {
        CsvLogger {
            dir: ExperimentDir::new(root_dir.as_ref().to_path_buf(), name.into()),
            prefix: String::new(),
            flush_every: 100,
            keys: Vec::new(),
            pending: Vec::new(),
            rows: 0,
            hparams: Hyperparams::new(),
            started: false,
        }
    }

    /// How many rows are buffered before they are written (100; at least 1).
    pub fn flush_logs_every_n_steps(mut self, rows: u64) -> Self {
        self.flush_every = rows.max(1);
        self
    }

    super::version::experiment_methods!(
        version: "; a `metrics.csv` already there is replaced, as in Lightning.",
        files: "the files"
    );

    /// Chooses the version and creates its directory, at the first call
    /// that logs (as Lightning's experiment writer does).
    fn create_log_dir(&self) -> Result<PathBuf, LoggerError> {
        let log_dir = self.dir.log_dir();
        std::fs::create_dir_all(&log_dir)
            .map_err(|e| format!("creating {}: {e}", log_dir.display()))?;
        Ok(log_dir)
    }

    /// Writes the buffered rows to `metrics.csv` and flushes them to the
    /// disk.
    pub fn save(&mut self) -> Result<(), LoggerError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let log_dir = self.create_log_dir()?;
        let path = log_dir.join(METRICS_FILE);
        if !self.started {
            self.started = true;
            if path.exists() {
                eprintln!(
                    "fabric: {} exists and will be replaced (CsvLogger with a fixed version)",
                    path.display()
                );
                std::fs::remove_file(&path)
                    .map_err(|e| format!("removing {}: {e}", path.display()))?;
            }
        }
        let mut keys = self.keys.clone();
        for (_, metrics) in &self.pending {
            for (name, _) in metrics {
                if !keys.contains(name) {
                    keys.push(name.clone());
                }
            }
        }
        if !keys.iter().any(|k| k == "step") {
            keys.push("step".into());
        }
        keys.sort();
        let exists = path.exists();
        if exists && keys != self.keys {
            rewrite_with_header(&path, &self.keys, &keys)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| format!("opening {}: {e}", path.display()))?;
        let mut out = BufWriter::new(file);
        if !exists {
            writeln!(out, "{}", header(&keys))?;
        }
        for (step, metrics) in &self.pending {
            writeln!(out, "{}", row(&keys, *step, metrics))?;
        }
        out.into_inner()
            .map_err(|e| e.into_error())
            .and_then(|file| file.sync_data())
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
        self.keys = keys;
        self.pending.clear();
        Ok(())
    }
}

impl Logger for CsvLogger {
    fn name(&self) -> &str {
        "CsvLogger"
    }

    fn log_metrics(
        &mut self,
        metrics: &[(&str, f64)],
        step: Option<u64>,
    ) -> Result<(), LoggerError> {
        if self.rows == 0 {
            self.create_log_dir()?;
        }
        let step = step.unwrap_or(self.rows);
        self.rows += 1;
        let metrics = metrics
            .iter()
            .map(|(name, value)| (prefixed(&self.prefix, name), *value))
            .collect();
        self.pending.push((step, metrics));
        if self.pending.len() as u64 >= self.flush_every {
            self.save()?;
        }
        Ok(())
    }

    fn log_hyperparams(&mut self, params: &Hyperparams) -> Result<(), LoggerError> {
        for (key, value) in params {
            self.hparams.insert(key.clone(), value.clone());
        }
        let yaml = serde_yaml_ng::to_string(&self.hparams)?;
        let log_dir = self.create_log_dir()?;
        fs::write_file(&log_dir.join(HPARAMS_FILE), |out| {
            out.write_all(yaml.as_bytes())
        })?;
        Ok(())
    }

    fn finalize(&mut self, _success: bool) -> Result<(), LoggerError> {
        self.save()
    }
}

impl Drop for CsvLogger {
    /// Writes the rows still buffered; an error is reported on stderr.
    fn drop(&mut self) {
        if let Err(e) = self.save() {
            eprintln!(
                "fabric: CsvLogger could not write its last {} row(s) to {}: {e}",
                self.pending.len(),
                self.dir.log_dir().join(METRICS_FILE).display()
            );
        }
    }
}

/// A CSV field: quoted when it holds a separator, a quote or a line break.
fn field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_owned()
    }
}

fn header(keys: &[String]) -> String {
    keys.iter().map(|k| field(k)).collect::<Vec<_>>().join(",")
}

fn row(keys: &[String], step: u64, metrics: &[(String, f64)]) -> String {
    keys.iter()
        .map(|key| {
            if key == "step" {
                return step.to_string();
            }
            // The last value wins when a name is logged twice in one call.
            metrics
                .iter()
                .rev()
                .find(|(name, _)| name == key)
                .map_or_else(String::new, |(_, value)| format!("{value:?}"))
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Rewrites `path`, written with the columns `old`, with the columns `new`
/// (a superset), atomically. Data cells are numbers and never quoted, so a
/// data row splits on commas; the header is skipped by its known length.
fn rewrite_with_header(path: &Path, old: &[String], new: &[String]) -> Result<(), LoggerError> {
    let file = File::open(path).map_err(|e| format!("opening {}: {e}", path.display()))?;
    let mut reader = BufReader::new(file);
    let old_header = header(old);
    let mut skipped = vec![0u8; old_header.len() + 1];
    std::io::Read::read_exact(&mut reader, &mut skipped)
        .map_err(|e| format!("reading {}: {e}", path.display()))?;
    if &skipped[..old_header.len()] != old_header.as_bytes() {
        return Err(format!(
            "{} was changed by someone else: its header is not `{old_header}`",
            path.display()
        )
        .into());
    }
    let positions: Vec<usize> = old
        .iter()
        .map(|k| new.iter().position(|n| n == k).unwrap_or(0))
        .collect();
    fs::write_file(path, |out| {
        writeln!(out, "{}", header(new))?;
        for line in reader.lines() {
            let line = line?;
            let mut cells = vec![""; new.len()];
            for (cell, position) in line.split(',').zip(&positions) {
                cells[*position] = cell;
            }
            writeln!(out, "{}", cells.join(","))?;
        }
        Ok(())
    })?;
    Ok(())
}
