//! Run-time overrides: the `LT_*` environment variables of Lightning's CLI.
//!
//! `fabric run` (Lightning's launcher) passes its options to the program as
//! `LT_ACCELERATOR`, `LT_STRATEGY`, `LT_DEVICES`, `LT_NUM_NODES` and
//! `LT_PRECISION`, and sets `LT_CLI_USED=1`. As in Lightning, a variable that
//! is set replaces the value given in the code (in `#[fabric(...)]` or to the
//! builder). Its value goes through the same parser as the code's, with the
//! same messages, saying which variable it came from:
//!
//! ```text
//! invalid `precision` (from LT_PRECISION=bf16-mixd): "bf16-mixd" is not a valid precision: did you mean `bf16-mixed`? ...
//! ```
//!
//! With `LT_CLI_USED=1`, a value given in the code that is not the default
//! and differs from the variable is an error, as in Lightning ("conflicts
//! with the value ... set through the CLI"): the command line and the code
//! disagree, and neither silently wins. Unlike Lightning, which compares the
//! strings, values are compared once parsed, so `"bf16"` in the code and
//! `LT_PRECISION=bf16-mixed` agree. The defaults are Lightning's:
//! `accelerator`, `strategy` and `devices` `"auto"`, `num_nodes` 1, and no
//! `precision` (so any precision written in the code counts as set).

use std::ffi::OsString;

use fabric_options::{Key, OptionError, Options, RawOptions, Value};

use crate::error::{Error, Result};

const CLI_USED: &str = "LT_CLI_USED";

/// The options of `raw` with the `LT_*` variables of this process applied
/// (to `raw` too, so that it says what is in effect), parsed and checked
/// with the plugins' counts: the typed [`Options`], or every error.
pub(crate) fn resolve(
    raw: &mut RawOptions,
    precision_plugins: usize,
    cluster_environments: usize,
) -> Result<Options> {
    Overrides::from_env()?.resolve(raw, precision_plugins, cluster_environments)
}

/// The `LT_*` variables as read from the environment.
#[derive(Debug, Default)]
pub(crate) struct Overrides {
    /// The raw value of each variable that is set, in [`Key::ALL`] order.
    values: Vec<(Key, Result<String, OsString>)>,
    /// `LT_CLI_USED=1`: the values come from Lightning's CLI.
    cli_used: bool,
    /// The variables that replaced a value, as `LT_PRECISION=bf16-mixed`.
    applied: Vec<(Key, String)>,
}

impl Overrides {
    /// Reads the variables of this process.
    pub(crate) fn from_env() -> Result<Self> {
        Self::read(crate::switches::var)
    }

    /// Reads the variables through `lookup`.
    fn read(lookup: impl Fn(&str) -> Option<OsString>) -> Result<Self> {
        let values = Key::ALL
            .into_iter()
            .filter_map(|key| {
                let value = lookup(key.env_var()?)?;
                Some((key, value.into_string()))
            })
            .collect();
        let cli_used = match lookup(CLI_USED) {
            None => false,
            Some(value) => match value.to_str().map(str::trim) {
                Some("1") => true,
                Some("0" | "") => false,
                _ => {
                    return Err(Error::InvalidArgument(format!(
                        "{CLI_USED}={}: expected 1 (Lightning's CLI sets it when it launches the program) or 0",
                        shown(&value.to_string_lossy())
                    )));
                }
            },
        };
        Ok(Overrides {
            values,
            cli_used,
            applied: Vec::new(),
        })
    }

    /// [`resolve`] with these variables.
    fn resolve(
        &mut self,
        raw: &mut RawOptions,
        precision_plugins: usize,
        cluster_environments: usize,
    ) -> Result<Options> {
        let mut errors = self.apply(raw);
        let (mut options, parse_errors) = raw.parse();
        errors.extend(parse_errors);
        options.precision_plugins = precision_plugins;
        options.cluster_environments = cluster_environments;
        errors.extend(self.annotate(options.check()));
        if errors.is_empty() {
            Ok(options)
        } else {
            Err(Error::from(errors))
        }
    }

    /// Replaces the code's value of each option whose variable is set.
    /// Returns the errors: a variable that does not parse, and with
    /// `LT_CLI_USED=1` a code value that conflicts with its variable. A code
    /// value replaced by a variable is still checked, so that a mistake in
    /// the code is not hidden by a launcher.
    fn apply(&mut self, raw: &mut RawOptions) -> Vec<OptionError> {
        let mut errors = Vec::new();
        for (key, value) in &self.values {
            let key = *key;
            let var = key.env_var().unwrap_or_default();
            let value = match value {
                Ok(value) => value,
                Err(os) => {
                    let shown = shown(&os.to_string_lossy());
                    errors.push(
                        OptionError::new(key, "the value is not valid UTF-8")
                            .with_origin(format!("from {var}={shown}")),
                    );
                    continue;
                }
            };
            let origin = format!("from {var}={}", shown(value));
            let from_env = match key.canonical(&Value::Str(value.clone())) {
                Ok(value) => value,
                Err(error) => {
                    errors.push(error.with_origin(origin));
                    continue;
                }
            };
            if let Some(code) = raw.get(key) {
                match key.canonical(code) {
                    Ok(from_code) => {
                        // A default in the code gives way to the CLI.
                        let is_default = key.default_value().as_ref() == Some(&from_code);
                        if self.cli_used && from_code != from_env && !is_default {
                            errors.push(OptionError::new(key, format!(
                                "the code sets `{key} = {code}`, which conflicts with the value {from_env} set through the CLI ({CLI_USED}=1); remove it from the code (`#[fabric(...)]` or the builder), or from the command"
                            )).with_origin(origin.clone()));
                        }
                    }
                    Err(error) => errors.push(error),
                }
            }
            raw.set(key, from_env);
            self.applied.push((key, origin));
        }
        errors
    }

    /// `errors` from checking the combined options, each saying which
    /// variables were in effect: `(from LT_DEVICES=1, 4)` on an error about
    /// an overridden option, `(with LT_ACCELERATOR=cpu)` on another one.
    fn annotate(&self, errors: Vec<OptionError>) -> Vec<OptionError> {
        if self.applied.is_empty() {
            return errors;
        }
        errors
            .into_iter()
            .map(|error| {
                let origin = match self
                    .applied
                    .iter()
                    .find(|(key, _)| error.key() == Some(*key))
                {
                    Some((_, origin)) => origin.clone(),
                    None => {
                        let vars: Vec<&str> = self
                            .applied
                            .iter()
                            .map(|(_, origin)| origin.trim_start_matches("from "))
                            .collect();
                        format!("with {}", vars.join(", "))
                    }
                };
                error.with_origin(origin)
            })
            .collect()
    }
}

/// A variable's value as shown in messages: as it is, or quoted when it is
/// empty or holds spaces or control characters.
fn shown(raw: &str) -> String {
    if raw.is_empty() || raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
        format!("\"{}\"", raw.escape_debug())
    } else {
        raw.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// The code's values.
    fn code() -> RawOptions {
        raw(&[
            (Key::Accelerator, "cpu".into()),
            (Key::Strategy, "auto".into()),
            (Key::Devices, 1.into()),
            (Key::NumNodes, 1.into()),
            (Key::Precision, "32-true".into()),
        ])
    }

    fn raw(values: &[(Key, Value)]) -> RawOptions {
        let mut raw = RawOptions::default();
        for (key, value) in values {
            raw.set(*key, value.clone());
        }
        raw
    }

    fn overrides(vars: &[(&str, &str)]) -> Result<Overrides> {
        let vars: HashMap<String, OsString> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        Overrides::read(|name| vars.get(name).cloned())
    }

    /// Applies `vars` to `code`: the errors as displayed, and the values.
    fn apply(vars: &[(&str, &str)], mut code: RawOptions) -> Result<(Vec<String>, RawOptions)> {
        let errors = overrides(vars)?.apply(&mut code);
        Ok((errors.iter().map(ToString::to_string).collect(), code))
    }

    #[test]
    fn no_variable_changes_nothing() {
        let (errors, values) = apply(&[], code()).unwrap();
        assert!(errors.is_empty());
        assert_eq!(values, code());
    }

    #[test]
    fn each_variable_replaces_its_option() {
        let (errors, values) = apply(
            &[
                ("LT_ACCELERATOR", "CUDA"),
                ("LT_STRATEGY", "ddp_spawn"),
                ("LT_DEVICES", "1, 4"),
                ("LT_NUM_NODES", "2"),
                ("LT_PRECISION", "bf16"),
            ],
            code(),
        )
        .unwrap();
        assert_eq!(errors, Vec::<String>::new());
        assert_eq!(
            values,
            raw(&[
                (Key::Accelerator, "cuda".into()),
                (Key::Strategy, "ddp_spawn".into()),
                (Key::Devices, [1, 4].into()),
                (Key::NumNodes, 2.into()),
                (Key::Precision, "bf16-mixed".into()),
            ])
        );
        // An option the code does not set is set by its variable.
        let (_, values) = apply(&[("LT_PRECISION", "64")], Default::default()).unwrap();
        assert_eq!(values.get(Key::Precision), Some(&"64-true".into()));
        assert_eq!(values.get(Key::Accelerator), None);
    }

    #[test]
    fn a_bad_value_gets_the_parser_message_and_the_variable() {
        let (errors, _) = apply(&[("LT_PRECISION", "bf16-mixd")], code()).unwrap();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with("invalid `precision` (from LT_PRECISION=bf16-mixd): \"bf16-mixd\" is not a valid precision: did you mean `bf16-mixed`? Accepted values: "),
            "{}", errors[0]
        );
        let (errors, _) = apply(&[("LT_DEVICES", "1, x"), ("LT_NUM_NODES", "0")], code()).unwrap();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors[0]
                .starts_with("invalid `devices` (from LT_DEVICES=\"1, x\"): \"1, x\" holds `x`"),
            "{}",
            errors[0]
        );
        assert!(
            errors[1].starts_with(
                "invalid `num_nodes` (from LT_NUM_NODES=0): 0 is not a number of nodes"
            ),
            "{}",
            errors[1]
        );
        let (errors, _) = apply(&[("LT_ACCELERATOR", "")], code()).unwrap();
        assert!(
            errors[0].starts_with(
                "invalid `accelerator` (from LT_ACCELERATOR=\"\"): \"\" is not a valid accelerator"
            ),
            "{}",
            errors[0]
        );
    }

    #[test]
    fn with_the_cli_a_different_value_in_the_code_is_a_conflict() {
        let cli = ("LT_CLI_USED", "1");
        let (errors, _) = apply(&[cli, ("LT_PRECISION", "bf16-mixed")], code()).unwrap();
        assert_eq!(
            errors,
            [
                "invalid `precision` (from LT_PRECISION=bf16-mixed): the code sets `precision = \"32-true\"`, which conflicts with the value \"bf16-mixed\" set through the CLI (LT_CLI_USED=1); remove it from the code (`#[fabric(...)]` or the builder), or from the command"
            ]
        );
        // The same value, written another way: no conflict.
        let (errors, _) =
            apply(&[cli, ("LT_PRECISION", "32"), ("LT_DEVICES", "1")], code()).unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        // A default in the code (`strategy = "auto"`) gives way to the CLI.
        let (errors, values) = apply(&[cli, ("LT_STRATEGY", "ddp")], code()).unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(values.get(Key::Strategy), Some(&"ddp".into()));
        // Without the CLI, the variable wins silently, as in Lightning.
        let (errors, values) = apply(&[("LT_ACCELERATOR", "cuda")], code()).unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(values.get(Key::Accelerator), Some(&"cuda".into()));
        let (errors, _) = apply(&[cli, ("LT_ACCELERATOR", "cuda")], code()).unwrap();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].contains("conflicts with the value \"cuda\" set through the CLI"),
            "{errors:?}"
        );
        let (errors, _) =
            apply(&[("LT_CLI_USED", "0"), ("LT_ACCELERATOR", "cuda")], code()).unwrap();
        assert!(errors.is_empty(), "{errors:?}");
    }

    #[test]
    fn an_invalid_code_value_is_still_reported() {
        let mut values = code();
        values.set(Key::Precision, "bf16-mixd");
        let (errors, values) = apply(&[("LT_PRECISION", "64-true")], values).unwrap();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with("invalid `precision`: \"bf16-mixd\""),
            "{errors:?}"
        );
        assert_eq!(values.get(Key::Precision), Some(&"64-true".into()));
    }

    #[test]
    fn a_value_that_is_not_utf8_is_an_error() {
        use std::os::unix::ffi::OsStringExt;

        let value = OsString::from_vec(vec![b'b', b'f', 0xff]);
        let mut overrides =
            Overrides::read(|name| (name == "LT_PRECISION").then(|| value.clone())).unwrap();
        let mut values = code();
        let errors = overrides.apply(&mut values);
        assert_eq!(
            errors[0].to_string(),
            "invalid `precision` (from LT_PRECISION=bf\u{fffd}): the value is not valid UTF-8"
        );
        // The code's value stays.
        assert_eq!(values.get(Key::Precision), Some(&"32-true".into()));
    }

    #[test]
    fn resolve_returns_the_typed_options_or_every_error() {
        use fabric_options::{Accelerator, Strategy};

        let mut raw = code();
        let options = overrides(&[("LT_STRATEGY", "ddp_find_unused_parameters_true")])
            .unwrap()
            .resolve(&mut raw, 0, 1)
            .unwrap();
        assert_eq!(options.strategy, Strategy::Ddp);
        assert!(options.strategy_params.find_unused_parameters);
        assert_eq!(options.accelerator, Accelerator::Cpu);
        assert_eq!(options.cluster_environments, 1);
        // `raw` says what is in effect.
        assert_eq!(
            raw.get(Key::Strategy),
            Some(&"ddp_find_unused_parameters_true".into())
        );

        // A bad variable, a bad value in the code and a combination (with
        // the variable that made it), all at once.
        let mut raw = code();
        raw.set(Key::NumNodes, 0);
        let error = overrides(&[("LT_PRECISION", "bf16-mixd"), ("LT_STRATEGY", "dp")])
            .unwrap()
            .resolve(&mut raw, 0, 2)
            .unwrap_err();
        let Error::Options(errors) = error else {
            panic!("{error}")
        };
        let errors: Vec<_> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(errors.len(), 4, "{errors:#?}");
        assert!(errors[0].starts_with("invalid `precision` (from LT_PRECISION=bf16-mixd)"));
        assert!(errors[1].starts_with("invalid `num_nodes`: 0 is not"));
        assert!(errors[2].starts_with("invalid `strategy` (from LT_STRATEGY=dp): \"dp\""));
        assert!(errors[3].contains("2 cluster environments"), "{errors:#?}");
    }

    #[test]
    fn lt_cli_used_must_be_0_or_1() {
        let err = apply(&[("LT_CLI_USED", "yes")], code()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "LT_CLI_USED=yes: expected 1 (Lightning's CLI sets it when it launches the program) or 0"
        );
    }

    #[test]
    fn combination_errors_say_which_variables_were_set() {
        let mut overrides = overrides(&[("LT_DEVICES", "1, 4")]).unwrap();
        assert!(overrides.apply(&mut code()).is_empty());
        let errors = overrides.annotate(vec![
            OptionError::new(Key::Devices, "indices on the CPU"),
            OptionError::new(Key::Strategy, "other"),
        ]);
        assert_eq!(
            errors[0].to_string(),
            "invalid `devices` (from LT_DEVICES=\"1, 4\"): indices on the CPU"
        );
        assert_eq!(
            errors[1].to_string(),
            "invalid `strategy` (with LT_DEVICES=\"1, 4\"): other"
        );
        // Nothing set: the errors are left as they are.
        let none = Overrides::default();
        let errors = none.annotate(vec![OptionError::new(Key::Devices, "x")]);
        assert_eq!(errors[0].to_string(), "invalid `devices`: x");
    }
}
