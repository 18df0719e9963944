//! [`Outcome`]: what a hook hands back.

use crate::loggers::LoggerError;

/// What a hook hands back to [`Fabric::call`](crate::Fabric::call): whether
/// training should stop, and metrics to log. Outcomes of several callbacks
/// combine: any stop request stops, metrics accumulate.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    stop: bool,
    metrics: Vec<(String, f64)>,
}

impl Outcome {
    /// Nothing to report.
    pub fn proceed() -> Self {
        Outcome::default()
    }

    /// A request to stop training, which
    /// [`Fabric::should_stop`](crate::Fabric::should_stop) reports.
    pub fn stop() -> Self {
        Outcome {
            stop: true,
            metrics: Vec::new(),
        }
    }

    /// A metric for fabric to log.
    pub fn log(name: impl Into<String>, value: f64) -> Self {
        Outcome {
            stop: false,
            metrics: vec![(name.into(), value)],
        }
    }

    /// This outcome and another, combined.
    pub fn and(mut self, other: Outcome) -> Self {
        self.stop |= other.stop;
        self.metrics.extend(other.metrics);
        self
    }

    /// Whether training should stop.
    pub fn should_stop(&self) -> bool {
        self.stop
    }

    /// The metrics to log.
    pub fn metrics(&self) -> &[(String, f64)] {
        &self.metrics
    }
}

/// What a hook method may return: `()`, [`Outcome`], or either in a
/// `Result` whose error converts into a boxed error.
#[diagnostic::on_unimplemented(
    message = "a hook cannot return `{Self}`",
    note = "hooks return `()`, `fabric::Outcome`, or `Result<(), E>` / `Result<Outcome, E>` with `E` an error type"
)]
pub trait IntoOutcome {
    /// The outcome, or the hook's error.
    fn into_outcome(self) -> Result<Outcome, LoggerError>;
}

impl IntoOutcome for () {
    fn into_outcome(self) -> Result<Outcome, LoggerError> {
        Ok(Outcome::default())
    }
}

impl IntoOutcome for Outcome {
    fn into_outcome(self) -> Result<Outcome, LoggerError> {
        Ok(self)
    }
}

impl<T: IntoOutcome, E: Into<LoggerError>> IntoOutcome for Result<T, E> {
    fn into_outcome(self) -> Result<Outcome, LoggerError> {
        self.map_err(Into::into)?.into_outcome()
    }
}
