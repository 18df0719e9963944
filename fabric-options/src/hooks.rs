//! The names of fabric's standard hooks, shared by `#[hook]` (which maps a
//! method name to its hook type and suggests the closest name for a
//! misspelt one) and the runtime (which defines the types).

/// `(method name, hook type name)` of every standard hook.
pub const STANDARD_HOOKS: &[(&str, &str)] = &[
    ("on_after_setup", "OnAfterSetup"),
    ("on_save_checkpoint", "OnSaveCheckpoint"),
    ("on_load_checkpoint", "OnLoadCheckpoint"),
    ("on_exception", "OnException"),
    ("on_train_start", "OnTrainStart"),
    ("on_train_end", "OnTrainEnd"),
    ("on_train_epoch_start", "OnTrainEpochStart"),
    ("on_train_epoch_end", "OnTrainEpochEnd"),
    ("on_train_batch_start", "OnTrainBatchStart"),
    ("on_train_batch_end", "OnTrainBatchEnd"),
    ("on_validation_epoch_start", "OnValidationEpochStart"),
    ("on_validation_epoch_end", "OnValidationEpochEnd"),
    ("on_validation_batch_end", "OnValidationBatchEnd"),
];

/// The hook type of a standard hook's method name.
///
/// ```
/// assert_eq!(fabric_options::hook_type("on_train_epoch_end"), Some("OnTrainEpochEnd"));
/// assert_eq!(fabric_options::hook_type("on_train_epoch_ned"), None);
/// ```
pub fn hook_type(method: &str) -> Option<&'static str> {
    STANDARD_HOOKS
        .iter()
        .find(|(name, _)| *name == method)
        .map(|(_, ty)| *ty)
}
