//! Properties of the parser on arbitrary input: it never panics, every error
//! is about the option it parsed, and everything it prints as accepted (the
//! accepted lists and the "did you mean" suggestions) is accepted.

use fabric_options::{
    Accelerator, Devices, Key, NumNodes, OptionError, Options, Precision, Strategy, StrategyName,
    Value,
};
use proptest::collection::vec;
use proptest::prelude::{
    Just, ProptestConfig, any, prop_assert, prop_assert_eq, prop_oneof, proptest,
};
use proptest::sample::select;
// Not the prelude's `Strategy`, which would hide fabric's.
use proptest::strategy::Strategy as Generator;

/// The options that take a value, with their parsers (each returning the
/// parsed value written back as a [`Value`], to compare round trips).
type Parser = fn(&Value) -> Result<Value, OptionError>;

const PARSERS: [(Key, Parser); 5] = [
    (Key::Accelerator, |v| Accelerator::parse(v).map(Value::from)),
    (Key::Strategy, |v| StrategyName::parse(v).map(Value::from)),
    (Key::Devices, |v| Devices::parse(v).map(Value::from)),
    (Key::NumNodes, |v| NumNodes::parse(v).map(Value::from)),
    (Key::Precision, |v| Precision::parse(v).map(Value::from)),
];

fn all_names() -> Vec<&'static str> {
    Accelerator::NAMES
        .into_iter()
        .chain(Strategy::names())
        .chain(Precision::names())
        .chain(Key::ALL.map(Key::name))
        .collect()
}

/// Strings a user might write: anything at all, an accepted name with one
/// character changed, inserted or removed, and number-like strings for
/// `devices` and `num_nodes`.
fn strings() -> impl Generator<Value = String> {
    let misspelt = (select(all_names()), any::<usize>(), any::<char>(), 0..3u8).prop_map(
        |(name, at, c, edit)| {
            let mut chars: Vec<char> = name.chars().collect();
            let at = at % (chars.len() + 1);
            match edit {
                0 => chars.insert(at, c),
                1 if at < chars.len() => chars[at] = c,
                _ if at < chars.len() => {
                    chars.remove(at);
                }
                _ => {}
            }
            chars.into_iter().collect()
        },
    );
    prop_oneof![
        any::<String>(),
        misspelt,
        "[-0-9, x]{0,12}",
        select(all_names()).prop_map(str::to_uppercase),
    ]
}

fn values() -> impl Generator<Value = Value> {
    prop_oneof![
        strings().prop_map(Value::Str),
        any::<i64>().prop_map(Value::Int),
        (-3i64..70).prop_map(Value::Int),
        vec(any::<i64>(), 0..5).prop_map(Value::List),
        vec(-2i64..6, 0..5).prop_map(Value::List),
        Just(Value::None),
    ]
}

/// The text after the last `marker` in `message`, if it is there. The
/// user's value comes first in every message, so the last marker is the
/// parser's own.
fn after<'m>(message: &'m str, marker: &str) -> Option<&'m str> {
    message.rfind(marker).map(|i| &message[i + marker.len()..])
}

/// The `"quoted"` strings of `text`.
fn quoted(text: &str) -> Vec<String> {
    text.split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// The names in backticks in "did you mean `a` or `b`?".
fn suggested(message: &str) -> Vec<String> {
    let Some(rest) = after(message, "did you mean ") else {
        return Vec::new();
    };
    let rest = &rest[..rest.find('?').unwrap_or(rest.len())];
    rest.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// Every value that `error`'s message offers as accepted or suggested.
fn offered(key: Key, error: &OptionError) -> Vec<Value> {
    let message = error.message();
    let mut offered: Vec<Value> = suggested(message).into_iter().map(Value::Str).collect();
    let list = after(message, "ccepted values: ")
        .or_else(|| after(message, "accepted strings: "))
        .or_else(|| after(message, "accepted: "));
    if let Some(list) = list {
        offered.extend(quoted(list).into_iter().map(Value::Str));
    }
    if let Some(ints) = after(message, "accepted integers: ") {
        let ints = &ints[..ints.find(';').unwrap_or(ints.len())];
        for int in ints.split(", ") {
            offered.push(Value::Int(int.parse().expect("an integer in the list")));
        }
    }
    if key == Key::Devices || key == Key::NumNodes {
        // "such as 1 or 8", "such as [1, 4]": the examples must work too.
        offered.push(Value::Int(1));
    }
    offered
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn parsing_never_panics_and_errors_name_their_option(value in values()) {
        for (key, parse) in PARSERS {
            match parse(&value) {
                Ok(parsed) => {
                    // What a value parses to parses back to itself.
                    prop_assert_eq!(parse(&parsed), Ok(parsed.clone()), "{} = {}", key, value);
                }
                Err(error) => {
                    prop_assert_eq!(error.key(), Some(key));
                    prop_assert!(!error.message().is_empty());
                    let shown = error.to_string();
                    let prefix = format!("invalid `{key}`: ");
                    prop_assert!(shown.starts_with(&prefix), "{}", shown);
                }
            }
        }
    }

    #[test]
    fn everything_an_error_offers_is_accepted(value in values()) {
        for (key, parse) in PARSERS {
            let Err(error) = parse(&value) else { continue };
            for offer in offered(key, &error) {
                prop_assert!(
                    parse(&offer).is_ok(),
                    "`{}` offers {} for {}, which does not parse: {}",
                    key, offer, value, error
                );
            }
        }
    }

    #[test]
    fn the_schema_parses_each_key_with_its_type(value in values()) {
        // The schema's slot for a key runs that key's parser: the same
        // errors, and values that read back the same.
        for (key, parse) in PARSERS {
            match (key.canonical(&value), parse(&value)) {
                (Ok(schema), Ok(typed)) => {
                    prop_assert_eq!(key.canonical(&typed), Ok(schema), "{} = {}", key, value);
                }
                (schema, typed) => prop_assert_eq!(schema, typed, "{} = {}", key, value),
            }
        }
    }

    #[test]
    fn unknown_keys_suggest_only_keys(name in strings()) {
        let error = Key::unknown(&name);
        prop_assert_eq!(error.key(), None);
        for suggestion in suggested(error.message()) {
            prop_assert!(Key::from_name(&suggestion).is_some(), "{}", error);
        }
        let listed = after(error.message(), "options are ").expect("the list of options");
        for key in listed.split(", ") {
            prop_assert!(Key::from_name(key.trim_matches('`')).is_some(), "{}", error);
        }
    }

    #[test]
    fn checking_any_combination_never_panics(
        accelerator in select(Accelerator::ALL.to_vec()),
        strategy in select(Strategy::names().collect::<Vec<_>>()),
        devices in values(),
        num_nodes in 1u32..10,
        precision in proptest::option::of(select(Precision::names().collect::<Vec<_>>())),
        precision_plugins in 0usize..3,
        cluster_environments in 0usize..3,
    ) {
        let strategy = StrategyName::parse(&strategy.into()).expect("a listed name");
        let options = Options {
            accelerator,
            strategy: strategy.strategy(),
            strategy_params: strategy.params(),
            devices: Devices::parse(&devices).unwrap_or_default(),
            num_nodes: NumNodes(num_nodes),
            precision: precision.map(|p| Precision::parse(&p.into()).expect("a listed name")),
            precision_plugins,
            cluster_environments,
        };
        for error in options.check() {
            prop_assert!(error.key().is_some(), "{}", error);
            prop_assert!(!error.message().is_empty());
        }
    }
}

#[test]
fn every_listed_name_parses_in_any_case() {
    for name in Accelerator::NAMES {
        for written in [name.to_owned(), name.to_uppercase(), format!(" {name} ")] {
            assert!(Accelerator::parse(&written.into()).is_ok(), "{name}");
        }
    }
    for name in Strategy::names() {
        for written in [name.to_owned(), name.to_uppercase()] {
            assert!(Strategy::parse(&written.into()).is_ok(), "{name}");
        }
    }
    for name in Precision::names() {
        for written in [name.to_owned(), name.to_uppercase()] {
            assert!(Precision::parse(&written.into()).is_ok(), "{name}");
        }
    }
    for key in Key::ALL {
        assert_eq!(Key::from_name(key.name()), Some(key));
    }
}

#[test]
fn the_offered_values_are_found_in_real_messages() {
    // The helpers above must find something to check, or the property
    // checking what messages offer would hold vacuously.
    let error = Precision::parse(&"bf16-mixd".into()).unwrap_err();
    let offers = offered(Key::Precision, &error);
    assert!(offers.contains(&Value::from("bf16-mixed")), "{offers:?}");
    assert!(offers.contains(&Value::from("64-true")), "{offers:?}");
    assert_eq!(offers.len(), 1 + 12, "{offers:?}");

    let error = Precision::parse(&8.into()).unwrap_err();
    let offers = offered(Key::Precision, &error);
    assert!(offers.contains(&Value::Int(16)), "{offers:?}");

    let error = Devices::parse(&"1, x".into()).unwrap_err();
    let offers = offered(Key::Devices, &error);
    assert!(offers.contains(&Value::from("1, 4")), "{offers:?}");
    assert!(offers.contains(&Value::from("auto")), "{offers:?}");

    let error = Strategy::parse(&"dpp".into()).unwrap_err();
    assert_eq!(suggested(error.message()), ["ddp", "dp"]);
}
