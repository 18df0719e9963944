//! Support for the code `#[fabric(...)]` generates. Not a public API: it may
//! change in any release.
//!
//! Besides [`launch`], this holds the compile-time checks of `plugins`. A
//! macro cannot see types, so the attribute asks the type system: each
//! plugin's kind is found with [`plugin_kind!`](crate::__plugin_kind) (a
//! cluster environment, a built-in precision plugin, a [`Plugin`] value, or
//! not a plugin at all), and the generated code calls the `check_*`
//! functions below on the kinds, spanned at the plugin expression. A
//! combination that cannot work fails a trait bound whose
//! `#[diagnostic::on_unimplemented]` message is the one the builder gives
//! at run time (`fabric_options::Options::check`).
//!
//! [`Plugin`]: crate::Plugin

use std::marker::PhantomData;

use crate::builder::FabricBuilder;
use crate::error::Error;
use crate::fabric::Fabric;
use crate::plugins::kind::{Bitsandbytes, ClusterEnvironment, Plugin, PrecisionPlugin};

pub use crate::plugins::kind;

pub use crate::launcher::TrainResult;
/// For `#[derive(Tensors)]`, whose user may not name tch.
pub use tch::Tensor;

/// Builds the `Fabric` configured by the attribute and runs the training
/// function with it. A configuration error is returned through the
/// function's own error type.
pub fn launch<R: TrainResult>(builder: FabricBuilder, train: fn(&mut Fabric) -> R) -> R {
    builder.launch(train)
}

/// As [`launch`], for `strategy = "ddp_spawn"`: rank 0's result comes back
/// to this process, serialised.
pub fn launch_spawn<T, E>(
    builder: FabricBuilder,
    train: fn(&mut Fabric) -> Result<T, E>,
) -> Result<T, E>
where
    T: serde::Serialize + serde::de::DeserializeOwned,
    E: From<Error> + std::fmt::Debug,
{
    builder.launch_spawn(train)
}

/// A plugin that is not one: [`FabricBuilder::plugin`] reports it, and the
/// checks let it pass so that it is reported once.
#[derive(Debug, Clone, Copy, Default)]
pub struct NotAPlugin;

/// What [`plugin_kind!`](crate::__plugin_kind) looks at: the type of a
/// plugin expression.
pub struct Probe<T>(PhantomData<T>);

/// The probe of `plugin`'s type.
pub fn probe<T>(_plugin: &T) -> Probe<T> {
    Probe(PhantomData)
}

/// The kind of a plugin's type, by autoref specialisation: method lookup
/// on `&&&Probe<T>` tries `&&Probe<T>` (a cluster environment) first, then
/// `&Probe<T>` (any other `IntoPlugin`), then `Probe<T>` (anything else).
pub mod probe {
    use super::{NotAPlugin, Probe};
    use crate::environment::ClusterEnvironment;
    use crate::plugins::{IntoPlugin, kind};

    /// A cluster environment.
    pub trait ClusterEnvironmentKind {
        /// The kind.
        fn plugin_kind(&self) -> kind::ClusterEnvironment {
            kind::ClusterEnvironment
        }
    }
    impl<T: ClusterEnvironment> ClusterEnvironmentKind for &&Probe<T> {}

    /// Another plugin: its own kind.
    pub trait KnownKind {
        /// The kind.
        type Kind;
        /// The kind.
        fn plugin_kind(&self) -> Self::Kind;
    }
    impl<T: IntoPlugin> KnownKind for &Probe<T>
    where
        T::Kind: Default,
    {
        type Kind = T::Kind;
        fn plugin_kind(&self) -> T::Kind {
            T::Kind::default()
        }
    }

    /// Not a plugin.
    pub trait OtherKind {
        /// The kind.
        fn plugin_kind(&self) -> NotAPlugin {
            NotAPlugin
        }
    }
    impl<T> OtherKind for Probe<T> {}
}

/// Plugins that fabric can run: all but bitsandbytes.
#[diagnostic::on_unimplemented(
    message = "`BitsandbytesPrecision` cannot run in fabric: bitsandbytes is a Python/CUDA library with no libtorch binding",
    label = "bitsandbytes quantisation is not available",
    note = "use `precision = \"bf16-true\"` to halve the weights' memory"
)]
pub trait RunnablePlugin {}

/// Plugins that can be given together with `precision`: all but precision
/// plugins.
#[diagnostic::on_unimplemented(
    message = "both `precision` and a precision plugin were given; choose one",
    label = "a precision plugin, while `precision` is set too",
    note = "remove `precision = ...`, or this plugin"
)]
pub trait BesidePrecisionOption {}

/// Pairs of plugins (earlier, later) that are not two cluster environments.
#[diagnostic::on_unimplemented(
    message = "two cluster environments were given; pass at most one",
    label = "a second cluster environment",
    note = "a run has one cluster environment: remove this one or the earlier one"
)]
pub trait AtMostOneClusterEnvironment {}

/// Pairs of plugins (earlier, later) that are not two precision plugins.
#[diagnostic::on_unimplemented(
    message = "two precision plugins were given; pass at most one",
    label = "a second precision plugin",
    note = "a run has one precision plugin: remove this one or the earlier one"
)]
pub trait AtMostOnePrecisionPlugin {}

/// `impl Trait for Type {}` for each type, not to be recommended in errors
/// (they would list these marker types).
macro_rules! impls {
    ($trait:ident for $($ty:ty),* $(,)?) => {$(
        #[diagnostic::do_not_recommend]
        impl $trait for $ty {}
    )*};
    ($trait:ident for any $($first:ty),* $(,)?) => {$(
        #[diagnostic::do_not_recommend]
        impl<Later> $trait for ($first, Later) {}
    )*};
}

impls!(RunnablePlugin for ClusterEnvironment, PrecisionPlugin, Plugin, NotAPlugin);
impls!(BesidePrecisionOption for ClusterEnvironment, Plugin, NotAPlugin);

impls!(AtMostOneClusterEnvironment for any PrecisionPlugin, Bitsandbytes, Plugin, NotAPlugin);
impls!(AtMostOneClusterEnvironment for
    (ClusterEnvironment, PrecisionPlugin),
    (ClusterEnvironment, Bitsandbytes),
    (ClusterEnvironment, Plugin),
    (ClusterEnvironment, NotAPlugin),
);

impls!(AtMostOnePrecisionPlugin for any ClusterEnvironment, Plugin, NotAPlugin);
impls!(AtMostOnePrecisionPlugin for
    (PrecisionPlugin, ClusterEnvironment),
    (PrecisionPlugin, Plugin),
    (PrecisionPlugin, NotAPlugin),
    (Bitsandbytes, ClusterEnvironment),
    (Bitsandbytes, Plugin),
    (Bitsandbytes, NotAPlugin),
);

/// Rejects a plugin that can never run (bitsandbytes).
pub fn check_runnable<K: RunnablePlugin>(_kind: K) {}

/// Rejects a precision plugin when `precision` is given too.
pub fn check_beside_precision_option<K: BesidePrecisionOption>(_kind: K) {}

/// Rejects a second cluster environment or a second precision plugin.
pub fn check_second_plugin<A, B>(_earlier: A, _later: B)
where
    (A, B): AtMostOneClusterEnvironment + AtMostOnePrecisionPlugin,
{
}

/// The kind of the plugin `$plugin` (a place expression, borrowed), such as
/// `fabric::__private::kind::ClusterEnvironment`.
#[doc(hidden)]
#[macro_export]
macro_rules! __plugin_kind {
    ($plugin:expr) => {{
        #[allow(unused_imports)]
        use $crate::__private::probe::{
            ClusterEnvironmentKind as _, KnownKind as _, OtherKind as _,
        };
        (&&&$crate::__private::probe(&$plugin)).plugin_kind()
    }};
}

/// The hooks a callback's `#[fabric::hooks]` impl block lists.
pub trait CallbackHooks: crate::Callback + Sized {
    /// Adds them to the table.
    fn register(table: &mut crate::HookTable<Self>);
}

/// Picks, in code `#[derive(Callback)]` writes for a concrete type, the
/// `CallbackHooks` list when the type has one and nothing otherwise
/// (autoref specialisation: the `&HookProbe` impl wins method resolution
/// when it applies).
pub struct HookProbe<T>(PhantomData<T>);

impl<T> HookProbe<T> {
    /// The probe.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        HookProbe(PhantomData)
    }
}

/// The callback has a `#[fabric::hooks]` block.
pub trait ViaHooks<T> {
    /// Registers its hooks.
    fn register_hooks(&self, table: &mut crate::HookTable<T>);
}

impl<T: CallbackHooks> ViaHooks<T> for &HookProbe<T> {
    fn register_hooks(&self, table: &mut crate::HookTable<T>) {
        T::register(table);
    }
}

/// The callback has no hooks.
pub trait NoHooks<T> {
    /// Registers nothing.
    fn register_hooks(&self, table: &mut crate::HookTable<T>);
}

impl<T> NoHooks<T> for HookProbe<T> {
    fn register_hooks(&self, _table: &mut crate::HookTable<T>) {}
}

#[cfg(test)]
mod tests {
    use crate::precision::{BitsandbytesPrecision, MixedPrecision, PrecisionPlugin};
    use crate::{Plugin, SingleProcessEnvironment};

    /// The name of a kind's type.
    fn kind<K>(_: K) -> &'static str {
        let name = std::any::type_name::<K>();
        name.rsplit("::").next().unwrap_or(name)
    }

    struct Plain;
    impl PrecisionPlugin for Plain {}

    #[test]
    fn plugin_kinds_are_found_from_the_type() {
        let environment = SingleProcessEnvironment;
        assert_eq!(
            kind(crate::__plugin_kind!(environment)),
            "ClusterEnvironment"
        );
        let mixed = MixedPrecision::bf16();
        assert_eq!(kind(crate::__plugin_kind!(mixed)), "PrecisionPlugin");
        let bnb = BitsandbytesPrecision::new("nf4");
        assert_eq!(kind(crate::__plugin_kind!(bnb)), "Bitsandbytes");
        let plugin = Plugin::precision(Plain);
        assert_eq!(kind(crate::__plugin_kind!(plugin)), "Plugin");
        let plain = Plain;
        assert_eq!(kind(crate::__plugin_kind!(plain)), "NotAPlugin");
        assert_eq!(kind(crate::__plugin_kind!(42u8)), "NotAPlugin");
    }
}
