//! The option schema: for every [`Key`] that takes a value, the field of
//! [`Options`] it is parsed into and how that field is written back.
//!
//! The `#[fabric(...)]` attribute, the builder and the `LT_*` overrides all
//! go through this table ([`Options::set`], [`Options::get`],
//! [`Key::canonical`]); nothing else maps a key to its field. A key's
//! name, variable and forms are in [`key`](crate::key).

use crate::accelerator::Accelerator;
use crate::check::Options;
use crate::devices::Devices;
use crate::error::OptionError;
use crate::key::Key;
use crate::num_nodes::NumNodes;
use crate::precision::Precision;
use crate::strategy::StrategyName;
use crate::value::Value;

/// The field of [`Options`] that a key's value is parsed into.
struct Slot {
    /// Parses a value into the field.
    set: fn(&mut Options, &Value) -> Result<(), OptionError>,
    /// The field written back as a value, in its canonical form (`"bf16"`
    /// is read back as `"bf16-mixed"`), or `None` when it is unset.
    get: fn(&Options) -> Option<Value>,
}

/// Each key's slot, in [`Key`] order (checked below at compile time);
/// `None` for the options taking objects.
const SLOTS: [(Key, Option<Slot>); Key::ALL.len()] = [
    (
        Key::Accelerator,
        Some(Slot {
            set: |options, value| {
                Accelerator::parse(value).map(|parsed| options.accelerator = parsed)
            },
            get: |options| Some(options.accelerator.into()),
        }),
    ),
    (
        Key::Strategy,
        Some(Slot {
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
    ),
    (
        Key::Devices,
        Some(Slot {
            set: |options, value| Devices::parse(value).map(|parsed| options.devices = parsed),
            get: |options| Some(options.devices.clone().into()),
        }),
    ),
    (
        Key::NumNodes,
        Some(Slot {
            set: |options, value| NumNodes::parse(value).map(|parsed| options.num_nodes = parsed),
            get: |options| Some(options.num_nodes.into()),
        }),
    ),
    (
        Key::Precision,
        Some(Slot {
            set: |options, value| {
                Precision::parse(value).map(|parsed| options.precision = Some(parsed))
            },
            // Lightning's default is no precision (`None`), not `32-true`.
            get: |options| options.precision.map(Value::from),
        }),
    ),
    (Key::Plugins, None),
    (Key::Callbacks, None),
    (Key::Loggers, None),
];

const _: () = {
    let mut i = 0;
    while i < SLOTS.len() {
        assert!(SLOTS[i].0 as usize == i, "SLOTS is not in Key order");
        i += 1;
    }
};

fn slot(key: Key) -> Option<&'static Slot> {
    SLOTS[key as usize].1.as_ref()
}

impl Key {
    /// Whether the option takes a [`Value`] (`accelerator`, `strategy`,
    /// `devices`, `num_nodes`, `precision`), rather than objects.
    pub fn takes_value(self) -> bool {
        slot(self).is_some()
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
        match slot(key) {
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
        slot(key).and_then(|slot| (slot.get)(self))
    }

    /// The strategy's registered name, such as
    /// `"deepspeed_stage_3_offload"` (its family's name when no name
    /// registers these parameters).
    pub fn strategy_name(&self) -> &'static str {
        StrategyName::from_parts(self.strategy, self.strategy_params)
            .map_or_else(|| self.strategy.name(), StrategyName::name)
    }
}
