//! Stage two: what the values mean, asked of `fabric-options`, the parser the
//! runtime uses too, so that the attribute and the builder accept the same
//! values with the same messages.
//!
//! Every value is parsed, then [`Options::check`] rejects the combinations
//! that can never work. Each error points at the value it is about, or at
//! the attribute when that option was not given.

use fabric_options::{
    Accelerator, Devices, Key, NumNodes, OptionError, Options, Precision, Strategy, Value,
};

use syn::Expr;

use crate::ctxt::Ctxt;
use crate::parse::Config;

/// Checks one value on its own, as soon as it is read, so that the errors
/// come in the order of the attribute. The message is `fabric-options`'s,
/// pointing at the value.
pub(crate) fn check_value(key: Key, expr: &Expr, value: &Value, cx: &Ctxt) {
    let result = match key {
        Key::Accelerator => Accelerator::parse(value).map(drop),
        Key::Strategy => Strategy::parse(value).map(drop),
        Key::Devices => Devices::parse(value).map(drop),
        Key::NumNodes => NumNodes::parse(value).map(drop),
        Key::Precision => Precision::parse(value).map(drop),
        Key::Plugins | Key::Callbacks | Key::Loggers => Ok(()),
    };
    if let Err(error) = result {
        cx.error_spanned_by(expr, error.message());
    }
}

/// Whether `value` is valid for `key` on its own.
pub(crate) fn accepts(key: Key, value: &Value) -> bool {
    match key {
        Key::Accelerator => Accelerator::parse(value).is_ok(),
        Key::Strategy => Strategy::parse(value).is_ok(),
        Key::Devices => Devices::parse(value).is_ok(),
        Key::NumNodes => NumNodes::parse(value).is_ok(),
        Key::Precision => Precision::parse(value).is_ok(),
        Key::Plugins | Key::Callbacks | Key::Loggers => false,
    }
}

/// The combinations that cannot work, once every argument has been read.
///
/// An option that was not given, or whose value is invalid (already
/// reported by [`check_value`]), has its default, as in the runtime's
/// builder; a default never causes a combination error.
pub(crate) fn check_combinations(config: &Config, cx: &Ctxt) -> Options {
    let mut options = Options::default();
    if let Some(accelerator) = parsed(config, Key::Accelerator, Accelerator::parse) {
        options.accelerator = accelerator;
    }
    if let Some(strategy) = parsed(config, Key::Strategy, Strategy::parse) {
        options.strategy = strategy;
    }
    if let Some(devices) = parsed(config, Key::Devices, Devices::parse) {
        options.devices = devices;
    }
    if let Some(num_nodes) = parsed(config, Key::NumNodes, NumNodes::parse) {
        options.num_nodes = num_nodes;
    }
    options.precision = parsed(config, Key::Precision, Precision::parse);
    // The kind of a plugin is its type, which a macro cannot see: the
    // runtime counts precision plugins and cluster environments, and its
    // builder runs the same check with them.
    for error in options.check() {
        cx.error_spanned_by(config.error_tokens(error.key()), error.message());
    }
    options
}

/// The value of `key` parsed by `parser`, or `None` when it was not given
/// or is invalid.
fn parsed<T>(config: &Config, key: Key, parser: fn(&Value) -> Result<T, OptionError>) -> Option<T> {
    parser(config.setting(key)?.value.as_ref()?).ok()
}
