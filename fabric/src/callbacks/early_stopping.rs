//! [`EarlyStopping`]: stops training when a metric stops improving.

use super::hooks::{Metrics, OnTrainEpochEnd, OnValidationEpochEnd};
use super::{Callback, Handles, HookTable, Outcome};
use crate::loggers::LoggerError;

/// Whether the monitored metric should fall or rise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Lower is better (a loss).
    Min,
    /// Higher is better (an accuracy).
    Max,
}

/// Stops training when `monitor` has not improved by more than `min_delta`
/// for `patience` checks in a row, as Lightning's `EarlyStopping`.
///
/// It checks at the end of each validation epoch
/// ([`OnValidationEpochEnd`]), or of each training epoch with
/// [`check_on_train_epoch_end`](Self::check_on_train_epoch_end). A missing
/// metric is an error naming the ones present (Lightning's `strict=True`).
/// When it asks to stop, [`Fabric::should_stop`](crate::Fabric::should_stop)
/// says so on every rank.
///
/// ```
/// use fabric::callbacks::EarlyStopping;
/// use fabric::hooks::{Metrics, OnValidationEpochEnd};
/// use fabric::Fabric;
///
/// let mut fabric = Fabric::builder().accelerator("cpu").callback(EarlyStopping::new("val_loss", 2)).build().unwrap();
/// for (epoch, loss) in [1.0, 0.5, 0.6, 0.7].into_iter().enumerate() {
///     fabric.call::<OnValidationEpochEnd>((epoch, &Metrics::from([("val_loss", loss)]))).unwrap();
/// }
/// assert!(fabric.should_stop().unwrap());
/// ```
#[derive(Debug, Clone)]
pub struct EarlyStopping {
    monitor: String,
    patience: usize,
    min_delta: f64,
    mode: Mode,
    on_train_epoch_end: bool,
    best: Option<f64>,
    wait: usize,
    stopped_epoch: Option<usize>,
}

impl EarlyStopping {
    /// Stops after `patience` checks without a decrease of `monitor`.
    pub fn new(monitor: impl Into<String>, patience: usize) -> Self {
        EarlyStopping {
            monitor: monitor.into(),
            patience,
            min_delta: 0.0,
            mode: Mode::Min,
            on_train_epoch_end: false,
            best: None,
            wait: 0,
            stopped_epoch: None,
        }
    }

    /// The smallest change that counts as an improvement (0 by default).
    pub fn min_delta(mut self, min_delta: f64) -> Self {
        self.min_delta = min_delta.abs();
        self
    }

    /// Whether lower ([`Mode::Min`], the default) or higher is better.
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// Checks at the end of training epochs instead of validation epochs.
    pub fn check_on_train_epoch_end(mut self, on_train: bool) -> Self {
        self.on_train_epoch_end = on_train;
        self
    }

    /// The best value seen.
    pub fn best(&self) -> Option<f64> {
        self.best
    }

    /// The epoch at which it asked to stop, if it did.
    pub fn stopped_epoch(&self) -> Option<usize> {
        self.stopped_epoch
    }

    fn check(&mut self, epoch: usize, metrics: &Metrics) -> Result<Outcome, LoggerError> {
        let Some(value) = metrics.get(&self.monitor) else {
            return Err(format!(
                "early stopping monitors `{}`, which is not among the metrics {:?}",
                self.monitor,
                metrics.names()
            )
            .into());
        };
        let improved = match (self.best, self.mode) {
            (None, _) => value.is_finite(),
            (Some(best), Mode::Min) => value < best - self.min_delta,
            (Some(best), Mode::Max) => value > best + self.min_delta,
        };
        if improved {
            self.best = Some(value);
            self.wait = 0;
            return Ok(Outcome::proceed());
        }
        self.wait += 1;
        if self.wait >= self.patience {
            self.stopped_epoch = Some(epoch);
            return Ok(Outcome::stop());
        }
        Ok(Outcome::proceed())
    }
}

impl Callback for EarlyStopping {
    fn register_hooks(table: &mut HookTable<Self>) {
        table.add::<OnValidationEpochEnd>().add::<OnTrainEpochEnd>();
    }
}

impl Handles<OnValidationEpochEnd> for EarlyStopping {
    fn handle(&mut self, (epoch, metrics): (usize, &Metrics)) -> Result<Outcome, LoggerError> {
        if self.on_train_epoch_end {
            Ok(Outcome::proceed())
        } else {
            self.check(epoch, metrics)
        }
    }
}

impl Handles<OnTrainEpochEnd> for EarlyStopping {
    fn handle(&mut self, (epoch, metrics): (usize, &Metrics)) -> Result<Outcome, LoggerError> {
        if self.on_train_epoch_end {
            self.check(epoch, metrics)
        } else {
            Ok(Outcome::proceed())
        }
    }
}
