//! [`TensorBoardLogger`]: scalars and hyperparameters in TensorBoard event
//! files.

mod proto;
mod record;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use prost::Message;

use super::version::ExperimentDir;
use super::{Hyperparams, Logger, LoggerError, flatten, prefixed};
use proto::{
    Event, Experiment, HParamInfo, HParamsPluginData, MetricInfo, MetricName, PluginData,
    ProtoValue, SessionEndInfo, SessionStartInfo, Summary, SummaryMetadata, SummaryValue,
};

/// Distinguishes event files opened by one process in the same second.
static FILE_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Logs to TensorBoard event files in `<root_dir>/<name>/version_<n>`, as
/// Lightning's `TensorBoardLogger`: `tensorboard --logdir <root_dir>` shows
/// the runs.
///
/// - Metrics are scalars (`simple_value`), one event per metric; without a
///   step, the step is the number of `log_metrics` calls before it.
/// - [`Fabric::log_hyperparams`](crate::Fabric::log_hyperparams) writes the
///   HParams plugin's three summaries (experiment, session start with the
///   values, session end), the way `torch.utils.tensorboard` does, nested
///   keys flattened as `outer/inner`, and, unless
///   [`default_hp_metric(false)`](Self::default_hp_metric), the scalar
///   `hp_metric = -1` at step 0 so the HParams tab has a metric to show.
/// - The file is `events.out.tfevents.<unix time>.<host>.<pid>.<n>`, written
///   in TensorFlow's record format; events are buffered and written every
///   10 events or 120 s (`SummaryWriter`'s defaults) and when training ends,
///   with an error or not.
///
/// ```
/// use fabric::{Fabric, TensorBoardLogger};
///
/// # fn main() -> fabric::Result<()> {
/// let dir = tempfile::tempdir().unwrap();
/// let tb = TensorBoardLogger::new(dir.path(), "digits");
/// let log_dir = tb.log_dir();
/// let mut fabric = Fabric::builder().accelerator("cpu").logger(tb).build()?;
/// fabric.log_hyperparams(&serde_json::json!({"lr": 0.01, "optimizer": "adamw"}))?;
/// fabric.log_dict([("loss", 0.5)], Some(1))?;
/// fabric.finish(true)?;
///
/// let file = std::fs::read_dir(&log_dir).unwrap().next().unwrap().unwrap();
/// assert!(file.file_name().to_string_lossy().starts_with("events.out.tfevents."));
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct TensorBoardLogger {
    dir: ExperimentDir,
    prefix: String,
    default_hp_metric: bool,
    writer: Option<EventWriter>,
    calls: u64,
}

#[derive(Debug)]
struct EventWriter {
    path: PathBuf,
    out: BufWriter<File>,
    pending: usize,
    last_flush: Instant,
}

impl EventWriter {
    const MAX_QUEUE: usize = 10;
    const FLUSH_SECS: u64 = 120;

    fn create(log_dir: &Path) -> Result<Self, LoggerError> {
        std::fs::create_dir_all(log_dir)
            .map_err(|e| format!("creating {}: {e}", log_dir.display()))?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?;
        let host = gethostname::gethostname().to_string_lossy().into_owned();
        let name = format!(
            "events.out.tfevents.{:010}.{host}.{}.{}",
            now.as_secs(),
            std::process::id(),
            FILE_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let path = log_dir.join(name);
        let file = File::options()
            .create_new(true)
            .write(true)
            .open(&path)
            .map_err(|e| format!("creating {}: {e}", path.display()))?;
        let mut writer = EventWriter {
            path,
            out: BufWriter::new(file),
            pending: 0,
            last_flush: Instant::now(),
        };
        writer.write(&Event {
            wall_time: wall_time(),
            step: 0,
            file_version: Some("brain.Event:2".into()),
            summary: None,
        })?;
        writer.flush()?;
        Ok(writer)
    }

    fn write(&mut self, event: &Event) -> Result<(), LoggerError> {
        record::write_record(&mut self.out, &event.encode_to_vec())
            .map_err(|e| format!("writing {}: {e}", self.path.display()))?;
        self.pending += 1;
        if self.pending >= Self::MAX_QUEUE
            || self.last_flush.elapsed().as_secs() >= Self::FLUSH_SECS
        {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), LoggerError> {
        self.out
            .flush()
            .map_err(|e| format!("writing {}: {e}", self.path.display()))?;
        self.pending = 0;
        self.last_flush = Instant::now();
        Ok(())
    }
}

fn wall_time() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn scalar(tag: String, value: f64) -> SummaryValue {
    SummaryValue {
        tag,
        simple_value: Some(value as f32),
        metadata: None,
    }
}

/// A summary value carrying only the HParams plugin's data, as
/// `torch.utils.tensorboard.summary.hparams` makes them.
fn hparams_summary(tag: &str, data: HParamsPluginData) -> SummaryValue {
    SummaryValue {
        tag: tag.into(),
        simple_value: None,
        metadata: Some(SummaryMetadata {
            plugin_data: Some(PluginData {
                plugin_name: "hparams".into(),
                content: data.encode_to_vec(),
            }),
        }),
    }
}

impl TensorBoardLogger {
    /// A logger writing under `<root_dir>/<name>/version_<n>` (Lightning's
    /// default `name` is `"lightning_logs"`).
    pub fn new(root_dir: impl AsRef<Path>, name: impl Into<String>) -> Self {
        TensorBoardLogger {
            dir: ExperimentDir::new(root_dir.as_ref().to_path_buf(), name.into()),
            prefix: String::new(),
            default_hp_metric: true,
            writer: None,
            calls: 0,
        }
    }

    /// Whether logging hyperparameters also logs the placeholder metric
    /// `hp_metric = -1` (true, as in Lightning).
    pub fn default_hp_metric(mut self, enabled: bool) -> Self {
        self.default_hp_metric = enabled;
        self
    }

    super::version::experiment_methods!(version: ".", files: "the event files");

    /// The event file, once something was logged.
    pub fn event_file(&self) -> Option<&Path> {
        self.writer.as_ref().map(|w| w.path.as_path())
    }

    fn writer(&mut self) -> Result<&mut EventWriter, LoggerError> {
        if self.writer.is_none() {
            self.writer = Some(EventWriter::create(&self.dir.log_dir())?);
        }
        Ok(self.writer.as_mut().expect("created above"))
    }

    fn write_summary(&mut self, step: u64, value: Vec<SummaryValue>) -> Result<(), LoggerError> {
        let event = Event {
            wall_time: wall_time(),
            step: step as i64,
            file_version: None,
            summary: Some(Summary { value }),
        };
        self.writer()?.write(&event)
    }
}

impl Logger for TensorBoardLogger {
    fn name(&self) -> &str {
        "TensorBoardLogger"
    }

    fn log_metrics(
        &mut self,
        metrics: &[(&str, f64)],
        step: Option<u64>,
    ) -> Result<(), LoggerError> {
        let step = step.unwrap_or(self.calls);
        self.calls += 1;
        for (name, value) in metrics {
            let tag = prefixed(&self.prefix, name);
            self.write_summary(step, vec![scalar(tag, *value)])?;
        }
        Ok(())
    }

    fn log_hyperparams(&mut self, params: &Hyperparams) -> Result<(), LoggerError> {
        let mut infos = Vec::new();
        let mut values = std::collections::BTreeMap::new();
        for (name, value) in flatten(params) {
            let (kind, value) = match value {
                serde_json::Value::Bool(b) => (
                    proto::DATA_TYPE_BOOL,
                    ProtoValue {
                        bool_value: Some(b),
                        ..Default::default()
                    },
                ),
                serde_json::Value::Number(n) => (
                    proto::DATA_TYPE_FLOAT64,
                    ProtoValue {
                        number_value: n.as_f64(),
                        ..Default::default()
                    },
                ),
                serde_json::Value::String(s) => (
                    proto::DATA_TYPE_STRING,
                    ProtoValue {
                        string_value: Some(s),
                        ..Default::default()
                    },
                ),
                // Lightning's `_sanitize_params`: anything else as text.
                other => (
                    proto::DATA_TYPE_STRING,
                    ProtoValue {
                        string_value: Some(other.to_string()),
                        ..Default::default()
                    },
                ),
            };
            infos.push(HParamInfo {
                name: name.clone(),
                r#type: kind,
            });
            values.insert(name, value);
        }
        let metrics: Vec<(&str, f64)> = if self.default_hp_metric {
            vec![("hp_metric", -1.0)]
        } else {
            Vec::new()
        };
        let experiment = HParamsPluginData {
            version: 0,
            experiment: Some(Experiment {
                hparam_infos: infos,
                metric_infos: metrics
                    .iter()
                    .map(|(tag, _)| MetricInfo {
                        name: Some(MetricName {
                            group: String::new(),
                            tag: prefixed(&self.prefix, tag),
                        }),
                    })
                    .collect(),
            }),
            ..Default::default()
        };
        let start = HParamsPluginData {
            version: 0,
            session_start_info: Some(SessionStartInfo {
                hparams: values,
                group_name: String::new(),
                start_time_secs: wall_time(),
            }),
            ..Default::default()
        };
        let end = HParamsPluginData {
            version: 0,
            session_end_info: Some(SessionEndInfo {
                status: proto::STATUS_SUCCESS,
                end_time_secs: 0.0,
            }),
            ..Default::default()
        };
        for (tag, data) in [
            ("_hparams_/experiment", experiment),
            ("_hparams_/session_start_info", start),
            ("_hparams_/session_end_info", end),
        ] {
            self.write_summary(0, vec![hparams_summary(tag, data)])?;
        }
        if !metrics.is_empty() {
            for (name, value) in metrics {
                let tag = prefixed(&self.prefix, name);
                self.write_summary(0, vec![scalar(tag, value)])?;
            }
        }
        Ok(())
    }

    fn finalize(&mut self, _success: bool) -> Result<(), LoggerError> {
        match &mut self.writer {
            Some(writer) => writer.flush(),
            None => Ok(()),
        }
    }
}
