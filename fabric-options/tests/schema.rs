//! The option schema: every key once, with Lightning's names and variables,
//! and each value-taking key parsed into its own field of `Options`.

use fabric_options::{
    Accelerator, Devices, Key, NumNodes, Options, Precision, RawOptions, Strategy, Value,
};

/// Every variant of `Key`, written out: the match fails to compile when a
/// variant is added, so that this list (and the schema) gets it too.
fn variants() -> [Key; 8] {
    let all = [
        Key::Accelerator,
        Key::Strategy,
        Key::Devices,
        Key::NumNodes,
        Key::Precision,
        Key::Plugins,
        Key::Callbacks,
        Key::Loggers,
    ];
    for key in all {
        match key {
            Key::Accelerator
            | Key::Strategy
            | Key::Devices
            | Key::NumNodes
            | Key::Precision
            | Key::Plugins
            | Key::Callbacks
            | Key::Loggers => {}
        }
    }
    all
}

#[test]
fn every_key_has_exactly_one_entry() {
    assert_eq!(Key::ALL.len(), variants().len());
    for key in variants() {
        assert_eq!(Key::ALL.iter().filter(|k| **k == key).count(), 1, "{key:?}");
        assert_eq!(Key::from_name(key.name()), Some(key), "{key:?}");
    }
    let mut names: Vec<_> = Key::ALL.map(Key::name).to_vec();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), Key::ALL.len(), "{names:?}");
}

#[test]
fn names_and_variables_are_lightnings() {
    // `Fabric.__init__`'s parameters, in its order.
    assert_eq!(
        Key::ALL.map(Key::name),
        [
            "accelerator",
            "strategy",
            "devices",
            "num_nodes",
            "precision",
            "plugins",
            "callbacks",
            "loggers"
        ]
    );
    // `_Connector._argument_from_env` reads `"LT_" + name.upper()` for
    // these five, which `lightning run` sets (`cli._set_env_variables`).
    let with_variable: Vec<_> = Key::ALL
        .into_iter()
        .filter_map(|key| key.env_var().map(|var| (key, var)))
        .collect();
    assert_eq!(
        with_variable,
        [
            (Key::Accelerator, "LT_ACCELERATOR"),
            (Key::Strategy, "LT_STRATEGY"),
            (Key::Devices, "LT_DEVICES"),
            (Key::NumNodes, "LT_NUM_NODES"),
            (Key::Precision, "LT_PRECISION"),
        ]
    );
    for (key, var) in with_variable {
        assert_eq!(var, format!("LT_{}", key.name().to_uppercase()));
    }
    // The options with a variable are exactly those taking a value.
    for key in Key::ALL {
        assert_eq!(key.takes_value(), key.env_var().is_some(), "{key}");
    }
}

/// Whether a key's field holds the value set in `each_key_sets_its_own_field`.
type IsSet = fn(&Options) -> bool;

#[test]
fn each_key_sets_its_own_field() {
    let cases: [(Key, Value, IsSet); 5] = [
        (Key::Accelerator, "cpu".into(), |o| {
            o.accelerator == Accelerator::Cpu
        }),
        (Key::Strategy, "ddp_spawn".into(), |o| {
            o.strategy == Strategy::DdpSpawn
        }),
        (Key::Devices, [1, 4].into(), |o| {
            o.devices == Devices::Indices(vec![1, 4])
        }),
        (Key::NumNodes, 3.into(), |o| o.num_nodes == NumNodes(3)),
        (Key::Precision, "bf16".into(), |o| {
            o.precision == Some(Precision::MixedBf16)
        }),
    ];
    for (key, value, is_set) in cases {
        let mut options = Options::default();
        options.set(key, &value).unwrap();
        assert!(is_set(&options), "{key} = {value}: {options:?}");
        // No other key's field changed.
        for other in Key::ALL.into_iter().filter(|other| *other != key) {
            assert_eq!(
                options.get(other),
                Options::default().get(other),
                "{key} set {other}"
            );
        }
        // What `get` reads back sets the same field.
        let mut again = Options::default();
        again.set(key, &options.get(key).unwrap()).unwrap();
        assert_eq!(again, options, "{key}");
    }
}

#[test]
fn defaults_are_lightnings() {
    assert_eq!(Key::Accelerator.default_value(), Some("auto".into()));
    assert_eq!(Key::Strategy.default_value(), Some("auto".into()));
    assert_eq!(Key::Devices.default_value(), Some("auto".into()));
    assert_eq!(Key::NumNodes.default_value(), Some(1.into()));
    assert_eq!(Key::Precision.default_value(), None);
    for key in [Key::Plugins, Key::Callbacks, Key::Loggers] {
        assert_eq!(key.default_value(), None);
    }
}

#[test]
fn options_taking_objects_take_no_value() {
    for key in [Key::Plugins, Key::Callbacks, Key::Loggers] {
        assert!(!key.takes_value());
        let error = Options::default().set(key, &"x".into()).unwrap_err();
        assert_eq!(error.key(), Some(key));
        assert!(
            error.message().contains("not a value such as \"x\""),
            "{error}"
        );
    }
}

#[test]
fn raw_options_report_every_error_in_key_order() {
    let mut raw = RawOptions::default();
    raw.set(Key::Precision, "bf16-mixd");
    raw.set(Key::Accelerator, "cdua");
    raw.set(Key::Devices, 2);
    raw.set(Key::Callbacks, 1);
    raw.set(Key::Accelerator, "cduaa");
    let (options, errors) = raw.parse();
    let keys: Vec<_> = errors.iter().map(|e| e.key()).collect();
    assert_eq!(
        keys,
        [
            Some(Key::Accelerator),
            Some(Key::Precision),
            Some(Key::Callbacks)
        ]
    );
    // The later value replaced the earlier one.
    assert!(
        errors[0].message().starts_with("\"cduaa\""),
        "{}",
        errors[0]
    );
    assert_eq!(options.devices, Devices::Count(2));
    assert_eq!(options.accelerator, Accelerator::Auto);
    assert_eq!(raw.get(Key::Devices), Some(&Value::Int(2)));
    assert_eq!(raw.iter().count(), 4);
}
