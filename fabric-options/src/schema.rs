//! The option schema, written once: for every [`Key`], its name, the `LT_*`
//! variable that overrides it, how it is written in code, and the field of
//! [`Options`] its value is parsed into.
//!
//! The `#[fabric(...)]` attribute, the builder and the `LT_*` overrides all
//! go through this table ([`Options::set`], [`Options::get`],
//! [`Key::canonical`]); nothing else maps a key to its field.

use std::fmt;

use crate::accelerator::Accelerator;
use crate::check::Options;
use crate::devices::Devices;
use crate::error::OptionError;
use crate::num_nodes::NumNodes;
use crate::precision::Precision;
use crate::strategy::StrategyName;
use crate::suggest::did_you_mean;
use crate::value::Value;

/// The options of fabric's configuration, as Lightning Fabric names them.
///
/// The first five take a [`Value`] (a literal), parsed into a field of
/// [`Options`]; `plugins`, `callbacks` and `loggers` take objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Key {
    /// `accelerator`
    Accelerator,
    /// `strategy`
    Strategy,
    /// `devices`
    Devices,
    /// `num_nodes`
    NumNodes,
    /// `precision`
    Precision,
    /// `plugins`
    Plugins,
    /// `callbacks`
    Callbacks,
    /// `loggers`
    Loggers,
}

/// One option of the schema.
struct Entry {
    key: Key,
    /// The name in `#[fabric(...)]`, in the builder and in Lightning.
    name: &'static str,
    /// The variable of Lightning's CLI that overrides it.
    env_var: Option<&'static str>,
    /// The forms its value is written in, in code (for "expected ...").
    written: &'static str,
    /// A valid value as written in code, for messages.
    example: &'static str,
    /// Where a value is parsed into; `None` for the options taking objects.
    slot: Option<Slot>,
}

/// The field of [`Options`] that a key's value is parsed into.
struct Slot {
    /// Parses a value into the field.
    set: fn(&mut Options, &Value) -> Result<(), OptionError>,
    /// The field written back as a value, in its canonical form (`"bf16"`
    /// is read back as `"bf16-mixed"`), or `None` when it is unset.
    get: fn(&Options) -> Option<Value>,
}

/// The schema, in the order of [`Key`]'s variants (checked below at compile
/// time), which is the order of Lightning's constructor.
const SCHEMA: [Entry; 8] = [
    Entry {
        key: Key::Accelerator,
        name: "accelerator",
        env_var: Some("LT_ACCELERATOR"),
        written: "a string literal such as \"cpu\" or \"cuda\"",
        example: "\"cpu\"",
        slot: Some(Slot {
            set: |options, value| {
                Accelerator::parse(value).map(|parsed| options.accelerator = parsed)
            },
            get: |options| Some(options.accelerator.into()),
        }),
    },
    Entry {
        key: Key::Strategy,
        name: "strategy",
        env_var: Some("LT_STRATEGY"),
        written: "a string literal such as \"ddp\"",
        example: "\"ddp\"",
        slot: Some(Slot {
            set: |options, value| {
                let name = StrategyName::parse(value)?;
                options.strategy = name.strategy();
                options.strategy_params = name.params();
                Ok(())
            },
            get: |options| {
                let name = StrategyName::from_parts(options.strategy, options.strategy_params);
                Some(name.map_or_else(|| options.strategy.into(), Value::from))
            },
        }),
    },
    Entry {
        key: Key::Devices,
        name: "devices",
        env_var: Some("LT_DEVICES"),
        written: "an integer literal such as 2 or -1, a list of device indices such as [1, 4], a string literal such as \"1, 4\", or None",
        example: "2",
        slot: Some(Slot {
            set: |options, value| Devices::parse(value).map(|parsed| options.devices = parsed),
            get: |options| Some(options.devices.clone().into()),
        }),
    },
    Entry {
        key: Key::NumNodes,
        name: "num_nodes",
        env_var: Some("LT_NUM_NODES"),
        written: "a positive integer literal such as 1",
        example: "1",
        slot: Some(Slot {
            set: |options, value| NumNodes::parse(value).map(|parsed| options.num_nodes = parsed),
            get: |options| Some(options.num_nodes.into()),
        }),
    },
    Entry {
        key: Key::Precision,
        name: "precision",
        env_var: Some("LT_PRECISION"),
        written: "a string literal such as \"bf16-mixed\" or an integer literal such as 32",
        example: "\"bf16-mixed\"",
        slot: Some(Slot {
            set: |options, value| {
                Precision::parse(value).map(|parsed| options.precision = Some(parsed))
            },
            // Lightning's default is no precision (`None`), not `32-true`.
            get: |options| options.precision.map(Value::from),
        }),
    },
    Entry {
        key: Key::Plugins,
        name: "plugins",
        env_var: None,
        written: "an expression, or a list `[a, b]` of them, each a plugin",
        example: "[...]",
        slot: None,
    },
    Entry {
        key: Key::Callbacks,
        name: "callbacks",
        env_var: None,
        written: "an expression, or a list `[a, b]` of them, each a callback",
        example: "[...]",
        slot: None,
    },
    Entry {
        key: Key::Loggers,
        name: "loggers",
        env_var: None,
        written: "an expression, or a list `[a, b]` of them, each a logger",
        example: "[...]",
        slot: None,
    },
];

// Every entry is at its key's index, so `Key::entry` finds a key's own.
const _: () = {
    let mut i = 0;
    while i < SCHEMA.len() {
        assert!(SCHEMA[i].key as usize == i, "SCHEMA is not in Key order");
        i += 1;
    }
};

impl Key {
    /// Every key, in the order Lightning's constructor lists them.
    pub const ALL: [Key; SCHEMA.len()] = {
        let mut all = [Key::Accelerator; SCHEMA.len()];
        let mut i = 0;
        while i < SCHEMA.len() {
            all[i] = SCHEMA[i].key;
            i += 1;
        }
        all
    };

    fn entry(self) -> &'static Entry {
        &SCHEMA[self as usize]
    }

    /// The key's name as written in `#[fabric(...)]` and Lightning.
    pub fn name(self) -> &'static str {
        self.entry().name
    }

    /// The environment variable that overrides this key at run time, as
    /// set by Lightning's CLI (`LT_ACCELERATOR`, ...), if there is one.
    pub fn env_var(self) -> Option<&'static str> {
        self.entry().env_var
    }

    /// Whether the option takes a [`Value`] (`accelerator`, `strategy`,
    /// `devices`, `num_nodes`, `precision`), rather than objects.
    pub fn takes_value(self) -> bool {
        self.entry().slot.is_some()
    }

    /// The forms the option is written in, in code: "a string literal such
    /// as \"cpu\" or \"cuda\"".
    pub fn written(self) -> &'static str {
        self.entry().written
    }

    /// A valid value as written in code, such as `"cpu"` or `2`.
    pub fn example(self) -> &'static str {
        self.entry().example
    }

    /// The value as the option's parser understands it, written back in
    /// its canonical form: `"bf16"` becomes `"bf16-mixed"`, `"2"` becomes
    /// `2`.
    ///
    /// ```
    /// use fabric_options::{Key, Value};
    ///
    /// assert_eq!(Key::Precision.canonical(&Value::from("bf16")), Ok(Value::from("bf16-mixed")));
    /// assert_eq!(Key::Devices.canonical(&Value::from("1, 4")), Ok(Value::from([1, 4])));
    /// assert!(Key::Strategy.canonical(&Value::from("dpp")).is_err());
    /// ```
    pub fn canonical(self, value: &Value) -> Result<Value, OptionError> {
        let mut options = Options::default();
        options.set(self, value)?;
        Ok(options.get(self).unwrap_or_else(|| value.clone()))
    }

    /// Lightning's default for the option, in canonical form: `"auto"` for
    /// `accelerator`, `strategy` and `devices`, 1 for `num_nodes`; `None`
    /// for `precision` (Lightning's default is no value) and for the
    /// options taking objects.
    pub fn default_value(self) -> Option<Value> {
        Options::default().get(self)
    }

    /// Looks a key up by name.
    pub fn from_name(name: &str) -> Option<Key> {
        Key::ALL.into_iter().find(|key| key.name() == name)
    }

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

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Options {
    /// Parses `value` into the field of `key`, or says what is wrong with
    /// it (the field is then left as it was). An option taking objects
    /// (`plugins`, ...) takes no value.
    ///
    /// ```
    /// use fabric_options::{Key, Options, Strategy, Value};
    ///
    /// let mut options = Options::default();
    /// options.set(Key::Strategy, &Value::from("ddp_spawn")).unwrap();
    /// assert_eq!(options.strategy, Strategy::DdpSpawn);
    /// assert!(options.set(Key::NumNodes, &Value::from(0)).is_err());
    /// ```
    pub fn set(&mut self, key: Key, value: &Value) -> Result<(), OptionError> {
        match &key.entry().slot {
            Some(slot) => (slot.set)(self, value),
            None => Err(OptionError::new(
                key,
                format!("takes {}, not a value such as {value}", key.written()),
            )),
        }
    }

    /// The field of `key` as a value, in canonical form: what
    /// [`set`](Self::set) parses back to the same field. `None` for an unset
    /// `precision` and for the options taking objects.
    pub fn get(&self, key: Key) -> Option<Value> {
        key.entry().slot.as_ref().and_then(|slot| (slot.get)(self))
    }

    /// The strategy's registered name, such as
    /// `"deepspeed_stage_3_offload"` (its family's name when no name
    /// registers these parameters).
    pub fn strategy_name(&self) -> &'static str {
        StrategyName::from_parts(self.strategy, self.strategy_params)
            .map_or_else(|| self.strategy.name(), StrategyName::name)
    }
}
