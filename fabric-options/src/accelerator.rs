//! The `accelerator` option.

use std::fmt;

use crate::error::OptionError;
use crate::key::Key;
use crate::value::Value;

/// The hardware to train on, as named in Lightning Fabric.
///
/// Which of these exist on the machine is decided at run time; see
/// [`Options::check`](crate::Options::check) for what can never work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Accelerator {
    /// Pick the best available: CUDA if present, else the CPU (`"auto"`).
    #[default]
    Auto,
    /// The CPU (`"cpu"`).
    Cpu,
    /// NVIDIA GPUs through CUDA (`"cuda"`).
    Cuda,
    /// Any GPU backend: MPS if available, else CUDA (`"gpu"`).
    Gpu,
    /// Apple's Metal Performance Shaders (`"mps"`).
    Mps,
    /// Google TPUs (`"tpu"`): accepted as a name, but XLA does not exist in
    /// libtorch, so [`Options::check`](crate::Options::check) rejects it.
    Tpu,
}

impl Accelerator {
    /// Every accelerator, in the order of their names in [`Self::NAMES`].
    pub const ALL: [Accelerator; 6] = [
        Accelerator::Auto,
        Accelerator::Cpu,
        Accelerator::Cuda,
        Accelerator::Gpu,
        Accelerator::Mps,
        Accelerator::Tpu,
    ];

    /// The accepted names.
    pub const NAMES: [&'static str; 6] = ["auto", "cpu", "cuda", "gpu", "mps", "tpu"];

    /// The accelerator's name.
    pub fn name(self) -> &'static str {
        Self::NAMES[Self::ALL.iter().position(|a| *a == self).unwrap_or(0)]
    }

    /// Parses a name (case-insensitive, as Lightning does).
    pub fn parse(value: &Value) -> Result<Self, OptionError> {
        let Value::Str(name) = value else {
            return Err(OptionError::wrong_type(
                Key::Accelerator,
                value,
                "a string such as \"cpu\" or \"cuda\"",
            ));
        };
        let lower = name.trim().to_lowercase();
        Self::NAMES
            .iter()
            .position(|n| *n == lower)
            .map(|i| Self::ALL[i])
            .ok_or_else(|| {
                OptionError::invalid_name(Key::Accelerator, value, "accelerator", &Self::NAMES)
            })
    }

    /// Whether this names a GPU (`cuda`, `gpu` or `mps`).
    pub fn is_gpu(self) -> bool {
        matches!(
            self,
            Accelerator::Cuda | Accelerator::Gpu | Accelerator::Mps
        )
    }
}

impl fmt::Display for Accelerator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl From<Accelerator> for Value {
    fn from(value: Accelerator) -> Self {
        Value::Str(value.name().to_owned())
    }
}
