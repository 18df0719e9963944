//! [`OptionError`]: what was wrong with an option, and what is accepted.

use std::fmt;

use crate::key::Key;
use crate::suggest::did_you_mean;
use crate::value::Value;

/// A value that fabric does not accept, or a combination of values that
/// cannot work. The message says what was wrong and what is accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionError {
    key: Option<Key>,
    origin: Option<String>,
    message: String,
}

impl OptionError {
    /// An error about `key` with a complete message.
    pub fn new(key: Key, message: impl Into<String>) -> Self {
        OptionError {
            key: Some(key),
            origin: None,
            message: message.into(),
        }
    }

    /// An error about no option in particular (an unknown option name).
    pub(crate) fn unkeyed(message: String) -> Self {
        OptionError {
            key: None,
            origin: None,
            message,
        }
    }

    /// The same error, saying where the value came from when it was not
    /// written in the code, such as `from LT_PRECISION=bf16-mixd`.
    ///
    /// ```
    /// use fabric_options::{Precision, Value};
    ///
    /// let err = Precision::parse(&Value::from("bf16-mixd"))
    ///     .unwrap_err()
    ///     .with_origin("from LT_PRECISION=bf16-mixd");
    /// assert!(err.to_string().starts_with(
    ///     "invalid `precision` (from LT_PRECISION=bf16-mixd): \"bf16-mixd\" is not a valid precision"
    /// ));
    /// assert_eq!(err.origin(), Some("from LT_PRECISION=bf16-mixd"));
    /// ```
    pub fn with_origin(mut self, origin: impl Into<String>) -> Self {
        self.origin = Some(origin.into());
        self
    }

    /// Where the value came from, when [`with_origin`](Self::with_origin)
    /// said so.
    pub fn origin(&self) -> Option<&str> {
        self.origin.as_deref()
    }

    /// The option the error is about (the macro points at its value), or
    /// `None` for an unknown option name.
    pub fn key(&self) -> Option<Key> {
        self.key
    }

    /// The message, without the option's name in front.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// "`value` is not a valid `key`", listing what is accepted and
    /// suggesting the closest accepted name for a misspelt string.
    pub(crate) fn invalid_name(
        key: Key,
        value: &Value,
        what: &str,
        accepted: &[&'static str],
    ) -> Self {
        let list = accepted
            .iter()
            .map(|name| format!("\"{name}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let suggestions = match value {
            Value::Str(s) => did_you_mean(s, accepted.iter().copied()),
            _ => Default::default(),
        };
        let message = if suggestions.is_empty() {
            format!("{value} is not a valid {what}; accepted values: {list}")
        } else {
            format!("{value} is not a valid {what}: {suggestions} Accepted values: {list}")
        };
        OptionError::new(key, message)
    }

    /// "expected a string, found a list".
    pub(crate) fn wrong_type(key: Key, value: &Value, expected: &str) -> Self {
        OptionError::new(
            key,
            format!("expected {expected}, found {} ({value})", value.kind()),
        )
    }
}

impl fmt::Display for OptionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.key, &self.origin) {
            (Some(key), Some(origin)) => write!(f, "invalid `{key}` ({origin}): {}", self.message),
            (Some(key), None) => write!(f, "invalid `{key}`: {}", self.message),
            (None, Some(origin)) => write!(f, "{} ({origin})", self.message),
            (None, None) => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for OptionError {}

impl Key {
    /// An error for a name that is not a key, with a suggestion when the
    /// name looks like a misspelt key.
    pub fn unknown(name: &str) -> OptionError {
        let accepted = Key::ALL.map(Key::name);
        let list = accepted.map(|k| format!("`{k}`")).join(", ");
        let suggestions = did_you_mean(name, accepted);
        OptionError::unkeyed(if suggestions.is_empty() {
            format!("unknown option `{name}`; the options are {list}")
        } else {
            format!("unknown option `{name}`: {suggestions} The options are {list}")
        })
    }
}
