//! [`Key`]: the options of fabric's configuration, as Lightning Fabric
//! names them, with their names, `LT_*` variables and how each is written
//! in code. Where each key's value is parsed into is the
//! [`schema`](crate::schema)'s.

use std::fmt;

/// The options of fabric's configuration, as Lightning Fabric names them.
///
/// The first five take a [`Value`](crate::Value) (a literal), parsed into a field of
/// [`Options`](crate::Options); `plugins`, `callbacks` and `loggers` take objects.
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

/// What a key is called and how it is written.
struct Info {
    key: Key,
    /// The name in `#[fabric(...)]`, in the builder and in Lightning.
    name: &'static str,
    /// The variable of Lightning's CLI that overrides it.
    env_var: Option<&'static str>,
    /// The forms its value is written in, in code (for "expected ...").
    written: &'static str,
    /// A valid value as written in code, for messages.
    example: &'static str,
}

/// Every key, in the order of [`Key`]'s variants (checked below at compile
/// time), which is the order of Lightning's constructor.
const KEYS: [Info; 8] = [
    Info {
        key: Key::Accelerator,
        name: "accelerator",
        env_var: Some("LT_ACCELERATOR"),
        written: "a string literal such as \"cpu\" or \"cuda\"",
        example: "\"cpu\"",
    },
    Info {
        key: Key::Strategy,
        name: "strategy",
        env_var: Some("LT_STRATEGY"),
        written: "a string literal such as \"ddp\"",
        example: "\"ddp\"",
    },
    Info {
        key: Key::Devices,
        name: "devices",
        env_var: Some("LT_DEVICES"),
        written: "an integer literal such as 2 or -1, a list of device indices such as [1, 4], a string literal such as \"1, 4\", or None",
        example: "2",
    },
    Info {
        key: Key::NumNodes,
        name: "num_nodes",
        env_var: Some("LT_NUM_NODES"),
        written: "a positive integer literal such as 1",
        example: "1",
    },
    Info {
        key: Key::Precision,
        name: "precision",
        env_var: Some("LT_PRECISION"),
        written: "a string literal such as \"bf16-mixed\" or an integer literal such as 32",
        example: "\"bf16-mixed\"",
    },
    Info {
        key: Key::Plugins,
        name: "plugins",
        env_var: None,
        written: "an expression, or a list `[a, b]` of them, each a plugin",
        example: "[...]",
    },
    Info {
        key: Key::Callbacks,
        name: "callbacks",
        env_var: None,
        written: "an expression, or a list `[a, b]` of them, each a callback",
        example: "[...]",
    },
    Info {
        key: Key::Loggers,
        name: "loggers",
        env_var: None,
        written: "an expression, or a list `[a, b]` of them, each a logger",
        example: "[...]",
    },
];

// Every entry is at its key's index, so `Key::info` finds a key's own.
const _: () = {
    let mut i = 0;
    while i < KEYS.len() {
        assert!(KEYS[i].key as usize == i, "KEYS is not in Key order");
        i += 1;
    }
};

impl Key {
    /// Every key, in the order Lightning's constructor lists them.
    pub const ALL: [Key; KEYS.len()] = {
        let mut all = [Key::Accelerator; KEYS.len()];
        let mut i = 0;
        while i < KEYS.len() {
            all[i] = KEYS[i].key;
            i += 1;
        }
        all
    };

    fn info(self) -> &'static Info {
        &KEYS[self as usize]
    }

    /// The key's name as written in `#[fabric(...)]` and Lightning.
    pub fn name(self) -> &'static str {
        self.info().name
    }

    /// The environment variable that overrides this key at run time, as
    /// set by Lightning's CLI (`LT_ACCELERATOR`, ...), if there is one.
    pub fn env_var(self) -> Option<&'static str> {
        self.info().env_var
    }

    /// The forms the option is written in, in code: "a string literal such
    /// as \"cpu\" or \"cuda\"".
    pub fn written(self) -> &'static str {
        self.info().written
    }

    /// A valid value as written in code, such as `"cpu"` or `2`.
    pub fn example(self) -> &'static str {
        self.info().example
    }

    /// Looks a key up by name.
    pub fn from_name(name: &str) -> Option<Key> {
        Key::ALL.into_iter().find(|key| key.name() == name)
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
