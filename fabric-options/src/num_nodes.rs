//! The `num_nodes` option.

use crate::error::OptionError;
use crate::key::Key;
use crate::value::Value;

/// The number of machines taking part in training (at least 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NumNodes(pub u32);

impl Default for NumNodes {
    fn default() -> Self {
        NumNodes(1)
    }
}

impl NumNodes {
    /// Parses a positive integer, or a string of one (as `LT_NUM_NODES`
    /// holds it).
    pub fn parse(value: &Value) -> Result<Self, OptionError> {
        let n = match value {
            Value::Int(n) => *n,
            Value::Str(s) => s.trim().parse::<i64>().map_err(|_| {
                OptionError::new(Key::NumNodes, format!("{value} is not a number of nodes; expected a positive integer such as 1 or 8"))
            })?,
            _ => return Err(OptionError::wrong_type(Key::NumNodes, value, "a positive integer")),
        };
        match u32::try_from(n) {
            Ok(n) if n >= 1 => Ok(NumNodes(n)),
            _ => Err(OptionError::new(
                Key::NumNodes,
                format!("{n} is not a number of nodes; expected a positive integer such as 1 or 8"),
            )),
        }
    }

    /// The count.
    pub fn get(self) -> u32 {
        self.0
    }
}

impl From<NumNodes> for Value {
    fn from(value: NumNodes) -> Self {
        Value::Int(value.0.into())
    }
}
