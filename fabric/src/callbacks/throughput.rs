//! [`ThroughputMonitor`]: samples per second, logged as training goes.

use std::time::Instant;

use super::hooks::{Metrics, OnTrainBatchEnd, OnTrainEpochStart};
use super::{Callback, Handles, HookTable, Outcome};
use crate::loggers::LoggerError;

/// Measures training throughput from [`OnTrainBatchEnd`] (which carries
/// each batch's sample count) and hands `throughput/samples_per_sec` and
/// `throughput/batches_per_sec` back to fabric every `log_every` batches, so
/// they reach the loggers.
#[derive(Debug, Clone)]
pub struct ThroughputMonitor {
    log_every: usize,
    window_start: Option<Instant>,
    window_samples: usize,
    window_batches: usize,
    total_samples: usize,
    samples_per_second: Option<f64>,
}

impl ThroughputMonitor {
    /// Logs every `log_every` batches (at least 1).
    pub fn new(log_every: usize) -> Self {
        ThroughputMonitor {
            log_every: log_every.max(1),
            window_start: None,
            window_samples: 0,
            window_batches: 0,
            total_samples: 0,
            samples_per_second: None,
        }
    }

    /// The throughput of the last complete window.
    pub fn samples_per_second(&self) -> Option<f64> {
        self.samples_per_second
    }

    /// Samples seen since training started.
    pub fn total_samples(&self) -> usize {
        self.total_samples
    }
}

impl Callback for ThroughputMonitor {
    fn register_hooks(table: &mut HookTable<Self>) {
        table.add::<OnTrainBatchEnd>().add::<OnTrainEpochStart>();
    }
}

impl Handles<OnTrainEpochStart> for ThroughputMonitor {
    fn handle(&mut self, _: (usize,)) -> Result<Outcome, LoggerError> {
        // Time between epochs (validation, checkpoints) is not training.
        self.window_start = None;
        Ok(Outcome::proceed())
    }
}

impl Handles<OnTrainBatchEnd> for ThroughputMonitor {
    fn handle(
        &mut self,
        (_, samples, _): (usize, usize, &Metrics),
    ) -> Result<Outcome, LoggerError> {
        self.total_samples += samples;
        let Some(start) = self.window_start else {
            // The first batch starts the clock.
            self.window_start = Some(Instant::now());
            return Ok(Outcome::proceed());
        };
        self.window_samples += samples;
        self.window_batches += 1;
        if self.window_batches < self.log_every {
            return Ok(Outcome::proceed());
        }
        let seconds = start.elapsed().as_secs_f64().max(f64::MIN_POSITIVE);
        let rate = self.window_samples as f64 / seconds;
        let batches = self.window_batches as f64 / seconds;
        self.samples_per_second = Some(rate);
        self.window_start = Some(Instant::now());
        self.window_samples = 0;
        self.window_batches = 0;
        Ok(Outcome::log("throughput/samples_per_sec", rate)
            .and(Outcome::log("throughput/batches_per_sec", batches)))
    }
}
