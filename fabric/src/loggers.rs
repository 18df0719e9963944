//! [`Logger`]: where `fabric.log` sends metrics.

/// An error a logger reports; fabric wraps it with the logger's name.
pub type LoggerError = Box<dyn std::error::Error + Send + Sync>;

/// An experiment tracker registered through `loggers`, as in Lightning's
/// `Fabric(loggers=[logger1, logger2])`.
///
/// [`Fabric::log`](crate::Fabric::log) and
/// [`Fabric::log_dict`](crate::Fabric::log_dict) send metrics to every
/// registered logger from the process with global rank 0 only. Loggers are
/// finalised when the `Fabric` is dropped.
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
pub trait Logger: Send + 'static {
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
