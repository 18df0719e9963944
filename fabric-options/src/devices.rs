//! The `devices` option.

use std::collections::BTreeSet;
use std::fmt;

use crate::error::OptionError;
use crate::key::Key;
use crate::value::Value;

/// Which devices to train on, in every form Lightning Fabric documents.
///
/// | written | parsed |
/// |---|---|
/// | `"auto"` (the default) | [`Devices::Auto`] |
/// | `2`, `"2"` | [`Devices::Count(2)`](Devices::Count) |
/// | `[1, 4]`, `"1, 4"`, `"1,"` | [`Devices::Indices`] |
/// | `-1`, `"-1"` | [`Devices::All`] |
/// | `0`, `"0"`, `None` | [`Devices::Cpu`] |
///
/// On the CPU a count is a number of processes; on GPUs it takes the first
/// `n` devices, and indices select devices by number.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub enum Devices {
    /// One device of the chosen accelerator (`"auto"`).
    #[default]
    Auto,
    /// A number of devices (at least 1).
    Count(usize),
    /// Every device of the accelerator (`-1`).
    All,
    /// These device indices, in the order given, without repeats.
    Indices(Vec<usize>),
    /// The CPU (`0` or `None`, as the seed documents).
    Cpu,
}

const ACCEPTED: &str = "accepted: an integer >= -1 (-1 for all devices, 0 for the CPU), a list of distinct device indices such as [1, 4], the same as a string (\"2\", \"1, 4\", \"-1\"), \"auto\" or None";

impl Devices {
    /// Parses any of the documented forms.
    pub fn parse(value: &Value) -> Result<Self, OptionError> {
        match value {
            Value::None => Ok(Devices::Cpu),
            Value::Int(n) => Self::from_int(*n, value),
            Value::List(items) => Self::from_list(items, value),
            Value::Str(s) => {
                let s = s.trim();
                if s.eq_ignore_ascii_case("auto") {
                    Ok(Devices::Auto)
                } else if s.contains(',') {
                    let mut indices = Vec::new();
                    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                        match part.parse::<i64>() {
                            Ok(i) => indices.push(i),
                            Err(_) => {
                                return Err(OptionError::new(
                                    Key::Devices,
                                    format!(
                                        "{value} holds `{part}`, which is not a device index; {ACCEPTED}"
                                    ),
                                ));
                            }
                        }
                    }
                    Self::from_list(&indices, value)
                } else {
                    match s.parse::<i64>() {
                        Ok(n) => Self::from_int(n, value),
                        Err(_) => Err(OptionError::new(
                            Key::Devices,
                            format!("{value} is not a device selection; {ACCEPTED}"),
                        )),
                    }
                }
            }
        }
    }

    fn from_int(n: i64, value: &Value) -> Result<Self, OptionError> {
        match n {
            -1 => Ok(Devices::All),
            0 => Ok(Devices::Cpu),
            n if n > 0 => usize::try_from(n).map(Devices::Count).map_err(|_| {
                OptionError::new(Key::Devices, format!("{value} is too many devices"))
            }),
            _ => Err(OptionError::new(
                Key::Devices,
                format!("{value} is below -1; {ACCEPTED}"),
            )),
        }
    }

    fn from_list(items: &[i64], value: &Value) -> Result<Self, OptionError> {
        if items.is_empty() {
            return Err(OptionError::new(
                Key::Devices,
                format!(
                    "{value} selects no device; give at least one index, or 0/None for the CPU; {ACCEPTED}"
                ),
            ));
        }
        let mut seen = BTreeSet::new();
        let mut indices = Vec::with_capacity(items.len());
        for &item in items {
            let Ok(index) = usize::try_from(item) else {
                return Err(OptionError::new(
                    Key::Devices,
                    format!(
                        "{value} holds {item}, which is not a device index (indices start at 0); {ACCEPTED}"
                    ),
                ));
            };
            if !seen.insert(index) {
                return Err(OptionError::new(
                    Key::Devices,
                    format!("{value} lists device {index} more than once; {ACCEPTED}"),
                ));
            }
            indices.push(index);
        }
        Ok(Devices::Indices(indices))
    }

    /// How many devices this selects, where the form says it without
    /// looking at the machine (`None` for `Auto` and `All`).
    pub fn count(&self) -> Option<usize> {
        match self {
            Devices::Auto | Devices::All => None,
            Devices::Count(n) => Some(*n),
            Devices::Indices(indices) => Some(indices.len()),
            Devices::Cpu => Some(1),
        }
    }
}

impl fmt::Display for Devices {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Devices::Auto => f.write_str("\"auto\""),
            Devices::Count(n) => write!(f, "{n}"),
            Devices::All => f.write_str("-1"),
            Devices::Indices(indices) => {
                let list: Vec<_> = indices.iter().map(ToString::to_string).collect();
                write!(f, "[{}]", list.join(", "))
            }
            Devices::Cpu => f.write_str("0"),
        }
    }
}

impl From<Devices> for Value {
    fn from(value: Devices) -> Self {
        match value {
            Devices::Auto => Value::Str("auto".into()),
            Devices::Count(n) => Value::from(n),
            Devices::All => Value::Int(-1),
            Devices::Indices(indices) => Value::from(indices),
            Devices::Cpu => Value::Int(0),
        }
    }
}
