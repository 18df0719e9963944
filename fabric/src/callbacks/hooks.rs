//! Hooks: typed events that callbacks handle.

use std::collections::BTreeMap;

/// An event callbacks can handle, with a fixed, typed argument list.
///
/// fabric fires its own hooks ([`OnAfterSetup`], [`OnSaveCheckpoint`],
/// [`OnLoadCheckpoint`], [`OnException`]); the training loop fires the
/// conventional ones with [`Fabric::call`](crate::Fabric::call). Declare your
/// own with [`declare_hook!`](crate::declare_hook).
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a hook",
    note = "declare hooks with `fabric::declare_hook!`, or use one of `fabric::hooks::*`"
)]
pub trait Hook: 'static {
    /// The arguments, as a tuple (`()` for none). Cloned for each callback,
    /// so references and small values are what hooks take.
    type Args<'a>: Clone;
    /// The hook's name, such as `"on_train_epoch_end"`, for messages.
    const NAME: &'static str;
}

/// Declares a hook type: its name and its typed arguments. Arguments that
/// borrow name the hook's lifetime, `'a`, after the name.
///
/// ```
/// use std::path::Path;
///
/// fabric::declare_hook! {
///     /// Fired when a new best model was written.
///     pub OnBestModel<'a>(path: &'a Path, score: f64)
/// }
/// fabric::declare_hook! {
///     /// Fired every `n` steps.
///     pub OnEveryN(step: usize)
/// }
/// ```
#[macro_export]
macro_rules! declare_hook {
    ($(#[$meta:meta])* $vis:vis $name:ident <$lt:lifetime> ( $($arg:ident : $ty:ty),* $(,)? )) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy)]
        $vis struct $name;
        impl $crate::hooks::Hook for $name {
            type Args<$lt> = ($($ty,)*);
            const NAME: &'static str = stringify!($name);
        }
    };
    ($(#[$meta:meta])* $vis:vis $name:ident ( $($arg:ident : $ty:ty),* $(,)? )) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy)]
        $vis struct $name;
        impl $crate::hooks::Hook for $name {
            type Args<'a> = ($($ty,)*);
            const NAME: &'static str = stringify!($name);
        }
    };
}

/// Metrics passed to the epoch and batch hooks, by name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metrics {
    values: BTreeMap<String, f64>,
}

impl Metrics {
    /// No metrics.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces a metric.
    pub fn insert(&mut self, name: impl Into<String>, value: f64) -> &mut Self {
        self.values.insert(name.into(), value);
        self
    }

    /// The metric named `name`.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.values.get(name).copied()
    }

    /// Every metric, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, f64)> {
        self.values.iter().map(|(k, v)| (k.as_str(), *v))
    }

    /// The names, for messages.
    pub fn names(&self) -> Vec<&str> {
        self.values.keys().map(String::as_str).collect()
    }
}

impl<S: Into<String>, const N: usize> From<[(S, f64); N]> for Metrics {
    fn from(values: [(S, f64); N]) -> Self {
        Metrics {
            values: values.into_iter().map(|(k, v)| (k.into(), v)).collect(),
        }
    }
}

macro_rules! standard_hooks {
    ($($(#[$meta:meta])* $name:ident = $string:literal ($($ty:ty),*);)*) => {
        $(
            $(#[$meta])*
            #[derive(Debug, Clone, Copy)]
            pub struct $name;
            impl Hook for $name {
                type Args<'a> = ($($ty,)*);
                const NAME: &'static str = $string;
            }
        )*
        /// The names of the standard hooks, for "did you mean".
        #[doc(hidden)]
        pub const STANDARD: &[&str] = &[$($string),*];
    };
}

standard_hooks! {
    /// Fired by [`Fabric::setup`](crate::Fabric::setup) and
    /// [`setup_module`](crate::Fabric::setup_module) once the model is set up.
    OnAfterSetup = "on_after_setup" ();
    /// Fired before a checkpoint is written, with its path.
    OnSaveCheckpoint = "on_save_checkpoint" (&'a std::path::Path);
    /// Fired after a checkpoint was loaded, with its path.
    OnLoadCheckpoint = "on_load_checkpoint" (&'a std::path::Path);
    /// Fired when training ends with an error, with the error's message.
    OnException = "on_exception" (&'a str);
    /// The start of training.
    OnTrainStart = "on_train_start" ();
    /// The end of training.
    OnTrainEnd = "on_train_end" ();
    /// The start of a training epoch: the epoch, from 0.
    OnTrainEpochStart = "on_train_epoch_start" (usize);
    /// The end of a training epoch: the epoch and its metrics.
    OnTrainEpochEnd = "on_train_epoch_end" (usize, &'a Metrics);
    /// The start of a training batch: the global step and the batch index in its epoch.
    OnTrainBatchStart = "on_train_batch_start" (usize, usize);
    /// The end of a training batch: the global step, the number of samples
    /// in the batch, and the batch's metrics.
    OnTrainBatchEnd = "on_train_batch_end" (usize, usize, &'a Metrics);
    /// The start of a validation epoch: the epoch.
    OnValidationEpochStart = "on_validation_epoch_start" (usize);
    /// The end of a validation epoch: the epoch and its metrics.
    OnValidationEpochEnd = "on_validation_epoch_end" (usize, &'a Metrics);
    /// The end of a validation batch: the batch index and its metrics.
    OnValidationBatchEnd = "on_validation_batch_end" (usize, &'a Metrics);
}
