//! Stage two: the combinations that cannot work, asked of `tch-fabric-options`
//! ([`Options::check`](fabric_options::Options::check), which the runtime's
//! builder runs too, with the same messages), once every argument has been
//! read into the typed options.
//!
//! Each error points at the value it is about, or at the attribute when that
//! option was not given. An option that was not given, or whose value is
//! invalid (already reported), has its default, as in the runtime's
//! builder; a default never causes a combination error.

use crate::ctxt::Ctxt;
use crate::parse::Config;

/// Reports every combination error of `config`'s options.
///
/// The kind of a plugin is its type, which a macro cannot see: the runtime
/// counts precision plugins and cluster environments, and its builder runs
/// the same check with them.
pub(crate) fn check_combinations(config: &Config, cx: &Ctxt) {
    for error in config.options.check() {
        cx.error_spanned_by(config.error_tokens(error.key()), error.message());
    }
}
