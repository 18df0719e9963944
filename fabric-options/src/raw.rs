//! [`RawOptions`]: the options as given, before they are parsed.

use crate::check::Options;
use crate::error::OptionError;
use crate::key::Key;
use crate::value::Value;

/// The options as given (to the builder, or by the `LT_*` variables), one
/// [`Value`] per [`Key`], before they are parsed into [`Options`].
///
/// ```
/// use fabric_options::{Accelerator, Devices, Key, RawOptions};
///
/// let mut raw = RawOptions::default();
/// raw.set(Key::Accelerator, "cpu");
/// raw.set(Key::Devices, "1, 4");
/// raw.set(Key::Precision, "bf16-mixd");
/// let (options, errors) = raw.parse();
/// assert_eq!(options.accelerator, Accelerator::Cpu);
/// assert_eq!(options.devices, Devices::Indices(vec![1, 4]));
/// assert_eq!(options.precision, None);
/// assert!(errors[0].to_string().contains("did you mean `bf16-mixed`?"));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawOptions {
    values: [Option<Value>; Key::ALL.len()],
}

impl RawOptions {
    /// Sets the value of `key`, replacing any earlier one.
    pub fn set(&mut self, key: Key, value: impl Into<Value>) {
        self.values[key as usize] = Some(value.into());
    }

    /// Forgets the value of `key`: it takes its default again.
    pub fn unset(&mut self, key: Key) {
        self.values[key as usize] = None;
    }

    /// The value given for `key`, if any.
    pub fn get(&self, key: Key) -> Option<&Value> {
        self.values[key as usize].as_ref()
    }

    /// Every value given, in the order of [`Key::ALL`].
    pub fn iter(&self) -> impl Iterator<Item = (Key, &Value)> {
        Key::ALL
            .into_iter()
            .filter_map(|key| self.get(key).map(|value| (key, value)))
    }

    /// The typed options and every error, in the order of [`Key::ALL`]. An
    /// option that was not given, or whose value is invalid, has its
    /// default. Combinations are not checked: see [`Options::check`].
    pub fn parse(&self) -> (Options, Vec<OptionError>) {
        let mut options = Options::default();
        let errors = self
            .iter()
            .filter_map(|(key, value)| options.set(key, value).err())
            .collect();
        (options, errors)
    }
}
