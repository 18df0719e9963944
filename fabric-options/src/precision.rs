//! The `precision` option.

use std::fmt;

use crate::error::OptionError;
use crate::key::Key;
use crate::value::Value;

/// The numeric precision of training, as named in Lightning Fabric.
///
/// `-true` modes cast the weights and inputs to that type; `-mixed` modes
/// keep the weights in `f32` and run eligible operations in 16 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Precision {
    /// `f64` weights and inputs (`"64-true"`, `"64"`, `64`).
    True64,
    /// `f32` weights and inputs, the default (`"32-true"`, `"32"`, `32`).
    #[default]
    True32,
    /// `f16` weights and inputs (`"16-true"`).
    True16,
    /// `bf16` weights and inputs (`"bf16-true"`).
    TrueBf16,
    /// `f16` autocast with dynamic loss scaling (`"16-mixed"`, `"16"`, `16`).
    Mixed16,
    /// `bf16` autocast (`"bf16-mixed"`, `"bf16"`).
    MixedBf16,
    /// NVIDIA Transformer Engine in 8 bits (`"transformer-engine"`): a Python
    /// library, so [`Options::check`](crate::Options::check) rejects it.
    TransformerEngine,
    /// Transformer Engine with `f16` weights (`"transformer-engine-float16"`).
    TransformerEngineFloat16,
}

const CANONICAL: [(&str, Precision); 8] = [
    ("64-true", Precision::True64),
    ("32-true", Precision::True32),
    ("16-true", Precision::True16),
    ("bf16-true", Precision::TrueBf16),
    ("16-mixed", Precision::Mixed16),
    ("bf16-mixed", Precision::MixedBf16),
    ("transformer-engine", Precision::TransformerEngine),
    (
        "transformer-engine-float16",
        Precision::TransformerEngineFloat16,
    ),
];

const ALIASES: [(&str, Precision); 4] = [
    ("64", Precision::True64),
    ("32", Precision::True32),
    ("16", Precision::Mixed16),
    ("bf16", Precision::MixedBf16),
];

impl Precision {
    /// Every accepted string: the canonical names, then the aliases.
    pub fn names() -> impl Iterator<Item = &'static str> {
        CANONICAL
            .iter()
            .chain(ALIASES.iter())
            .map(|(name, _)| *name)
    }

    /// The canonical name, such as `"bf16-mixed"`.
    pub fn name(self) -> &'static str {
        CANONICAL
            .iter()
            .find(|(_, p)| *p == self)
            .map_or("32-true", |(name, _)| name)
    }

    /// Parses a canonical name, an alias, or one of the integers 64, 32, 16.
    pub fn parse(value: &Value) -> Result<Self, OptionError> {
        let names: Vec<_> = Self::names().collect();
        match value {
            Value::Str(s) => {
                let lower = s.trim().to_lowercase();
                CANONICAL
                    .iter()
                    .chain(ALIASES.iter())
                    .find(|(name, _)| *name == lower)
                    .map(|(_, p)| *p)
                    .ok_or_else(|| {
                        OptionError::invalid_name(Key::Precision, value, "precision", &names)
                    })
            }
            Value::Int(64) => Ok(Precision::True64),
            Value::Int(32) => Ok(Precision::True32),
            Value::Int(16) => Ok(Precision::Mixed16),
            Value::Int(_) => Err(OptionError::new(
                Key::Precision,
                format!(
                    "{value} is not a valid precision; accepted integers: 64, 32, 16; accepted strings: {}",
                    names
                        .iter()
                        .map(|n| format!("\"{n}\""))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
            _ => Err(OptionError::wrong_type(
                Key::Precision,
                value,
                "a string such as \"bf16-mixed\" or an integer such as 32",
            )),
        }
    }

    /// Whether this is an autocast (`-mixed`) mode.
    pub fn is_mixed(self) -> bool {
        matches!(self, Precision::Mixed16 | Precision::MixedBf16)
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl From<Precision> for Value {
    fn from(value: Precision) -> Self {
        Value::Str(value.name().to_owned())
    }
}
