//! [`Logger`]: where `fabric.log` sends metrics, and the built-in loggers
//! [`CsvLogger`] and [`TensorBoardLogger`].

mod csv;
mod tensorboard;
mod version;

pub use csv::CsvLogger;
pub use tensorboard::TensorBoardLogger;

use std::any::Any;

/// Hyperparameters as [`Logger::log_hyperparams`] receives them: a JSON
/// object, built by [`Fabric::log_hyperparams`](crate::Fabric::log_hyperparams)
/// from any serde-serialisable value (a struct, a map, `serde_json::json!`).
pub type Hyperparams = serde_json::Map<String, serde_json::Value>;

/// An error a logger reports; fabric wraps it with the logger's name.
pub type LoggerError = Box<dyn std::error::Error + Send + Sync>;

/// An experiment tracker registered through `loggers`, as in Lightning's
/// `Fabric(loggers=[logger1, logger2])`.
///
/// [`Fabric::log`](crate::Fabric::log) and
/// [`Fabric::log_dict`](crate::Fabric::log_dict) send metrics to every
/// registered logger from the process with global rank 0 only. Loggers are
/// finalised by [`Fabric::finish`](crate::Fabric::finish), or when the
/// `Fabric` is dropped: also when training ends with an error or a panic, so
/// what was logged reaches the disk.
///
/// fabric ships [`CsvLogger`] and [`TensorBoardLogger`]; the first
/// registered logger of a type is reachable with
/// [`Fabric::logger`](crate::Fabric::logger).
///
/// ```
/// use fabric::{Fabric, Logger, LoggerError};
///
/// struct Stdout;
/// impl Logger for Stdout {
///     fn log_metrics(&mut self, metrics: &[(&str, f64)], step: Option<u64>) -> Result<(), LoggerError> {
///         println!("step {step:?}: {metrics:?}");
///         Ok(())
///     }
/// }
///
/// let mut fabric = Fabric::builder().accelerator("cpu").logger(Stdout).build().unwrap();
/// fabric.log("loss", 0.25).unwrap();
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a fabric logger",
    label = "this is registered as a logger",
    note = "implement `fabric::Logger` for `{Self}`"
)]
pub trait Logger: Any + Send {
    /// A name for messages; the type's name by default.
    fn name(&self) -> &str {
        let full = std::any::type_name::<Self>();
        full.rsplit("::").next().unwrap_or(full)
    }

    /// Records metrics, all taken at the same step.
    fn log_metrics(
        &mut self,
        metrics: &[(&str, f64)],
        step: Option<u64>,
    ) -> Result<(), LoggerError>;

    /// Records the run's hyperparameters; does nothing by default.
    fn log_hyperparams(&mut self, params: &Hyperparams) -> Result<(), LoggerError> {
        let _ = params;
        Ok(())
    }

    /// Writes out anything buffered; called when training ends, also when it
    /// ends with an error (`success` is then `false`).
    fn finalize(&mut self, success: bool) -> Result<(), LoggerError> {
        let _ = success;
        Ok(())
    }
}

/// A value that can be logged as a metric: numbers and one-element tensors.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be logged as a metric",
    note = "metrics are numbers (`f64`, `f32`, integers) or one-element tensors"
)]
pub trait Metric {
    /// The value as an `f64`.
    fn to_f64(&self) -> crate::Result<f64>;
}

macro_rules! numeric_metrics {
    ($($t:ty),*) => {$(
        impl Metric for $t {
            fn to_f64(&self) -> crate::Result<f64> {
                Ok(*self as f64)
            }
        }
    )*};
}
numeric_metrics!(f64, f32, i64, i32, u64, u32, usize);

impl Metric for tch::Tensor {
    fn to_f64(&self) -> crate::Result<f64> {
        if self.numel() != 1 {
            return Err(crate::Error::InvalidArgument(format!(
                "a logged tensor must hold one value, this one has shape {:?}",
                self.size()
            )));
        }
        Ok(self.f_reshape([1])?.f_double_value(&[0])?)
    }
}

impl<T: Metric + ?Sized> Metric for &T {
    fn to_f64(&self) -> crate::Result<f64> {
        (**self).to_f64()
    }
}

/// Flattens nested objects into `parent/child` keys, as Lightning's
/// `_flatten_dict`; arrays and `null` are kept as values.
pub(crate) fn flatten(params: &Hyperparams) -> Vec<(String, serde_json::Value)> {
    fn walk(prefix: &str, map: &Hyperparams, out: &mut Vec<(String, serde_json::Value)>) {
        for (key, value) in map {
            let key = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}/{key}")
            };
            match value {
                serde_json::Value::Object(inner) if !inner.is_empty() => walk(&key, inner, out),
                other => out.push((key, other.clone())),
            }
        }
    }
    let mut out = Vec::new();
    walk("", params, &mut out);
    out
}

/// Adds `prefix` to a metric name with Lightning's join character `-`.
pub(crate) fn prefixed(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_owned()
    } else {
        format!("{prefix}-{name}")
    }
}
