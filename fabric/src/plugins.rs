//! [`Plugin`]: what `plugins` accepts.

use crate::environment::ClusterEnvironment;
use crate::precision::{BitsandbytesPrecision, MixedPrecision, PrecisionPlugin, TruePrecision};

/// A plugin passed through `plugins`, as in Lightning's
/// `Fabric(plugins=[MyCluster()])`.
///
/// Any [`ClusterEnvironment`] converts into a plugin, so a user's own
/// environment is passed as it is: `builder.plugin(MyCluster::new())`. The
/// built-in precision plugins convert too; a precision plugin of your own
/// goes through [`Plugin::precision`]. See [`IntoPlugin`] for everything
/// `plugins` takes.
#[non_exhaustive]
pub enum Plugin {
    /// Where the processes of a run are and which rank this one is.
    ClusterEnvironment(Box<dyn ClusterEnvironment>),
    /// How the run handles numeric precision (instead of `precision`).
    Precision(Box<dyn PrecisionPlugin>),
}

impl Plugin {
    /// A precision plugin, to pass instead of the `precision` option.
    pub fn precision(plugin: impl PrecisionPlugin) -> Self {
        Plugin::Precision(Box::new(plugin))
    }
}

impl<T: ClusterEnvironment> From<T> for Plugin {
    fn from(environment: T) -> Self {
        Plugin::ClusterEnvironment(Box::new(environment))
    }
}

impl From<TruePrecision> for Plugin {
    fn from(plugin: TruePrecision) -> Self {
        Plugin::precision(plugin)
    }
}

impl From<MixedPrecision> for Plugin {
    fn from(plugin: MixedPrecision) -> Self {
        Plugin::precision(plugin)
    }
}

impl From<BitsandbytesPrecision> for Plugin {
    fn from(plugin: BitsandbytesPrecision) -> Self {
        Plugin::precision(plugin)
    }
}

/// What [`FabricBuilder::plugin`](crate::FabricBuilder::plugin) and
/// `#[fabric(plugins = ...)]` take: any [`ClusterEnvironment`], the built-in
/// precision plugins ([`TruePrecision`], [`MixedPrecision`],
/// [`BitsandbytesPrecision`]), and a [`Plugin`] (such as
/// `Plugin::precision(MyPrecision)` for a precision plugin of your own).
///
/// The trait is sealed: implement [`ClusterEnvironment`] or
/// [`PrecisionPlugin`] instead. Its kind tells `#[fabric(...)]` at compile
/// time what each plugin is, so that two cluster environments, two precision
/// plugins, or a precision plugin together with `precision` are compile
/// errors pointing at the plugin; a [`Plugin`] value's kind is only known
/// when it is built, and the builder checks it then.
///
/// ```
/// use fabric::precision::TruePrecision;
/// use fabric::{Fabric, SingleProcessEnvironment};
///
/// let fabric = Fabric::builder()
///     .accelerator("cpu")
///     .plugin(SingleProcessEnvironment)
///     .plugin(TruePrecision::new(tch::Kind::Double)?)
///     .build()?;
/// assert_eq!(fabric.precision_name(), "64-true");
/// # Ok::<(), fabric::Error>(())
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a fabric plugin",
    label = "this is passed as a plugin",
    note = "`plugins` takes cluster environments (implement `fabric::ClusterEnvironment`), the built-in precision plugins, and `fabric::Plugin` values: a precision plugin of your own goes in as `Plugin::precision(plugin)`"
)]
pub trait IntoPlugin: sealed::Sealed {
    /// What the plugin is, for the attribute's compile-time checks.
    #[doc(hidden)]
    type Kind;

    /// The plugin.
    fn into_plugin(self) -> Plugin;
}

mod sealed {
    pub trait Sealed {}
}

/// The kinds of plugin that `#[fabric(...)]` tells apart at compile time.
#[doc(hidden)]
pub mod kind {
    /// A [`ClusterEnvironment`](crate::ClusterEnvironment).
    #[derive(Debug, Clone, Copy, Default)]
    pub struct ClusterEnvironment;
    /// One of the built-in precision plugins that fabric can run.
    #[derive(Debug, Clone, Copy, Default)]
    pub struct PrecisionPlugin;
    /// [`BitsandbytesPrecision`](crate::precision::BitsandbytesPrecision),
    /// a precision plugin that fabric can never run.
    #[derive(Debug, Clone, Copy, Default)]
    pub struct Bitsandbytes;
    /// A [`Plugin`](crate::Plugin), whose kind is known when it is built.
    #[derive(Debug, Clone, Copy, Default)]
    pub struct Plugin;
}

impl<T: ClusterEnvironment> sealed::Sealed for T {}
#[diagnostic::do_not_recommend]
impl<T: ClusterEnvironment> IntoPlugin for T {
    type Kind = kind::ClusterEnvironment;
    fn into_plugin(self) -> Plugin {
        Plugin::from(self)
    }
}

macro_rules! into_plugin {
    ($($ty:ty => $kind:ident),* $(,)?) => {$(
        impl sealed::Sealed for $ty {}
        #[diagnostic::do_not_recommend]
        impl IntoPlugin for $ty {
            type Kind = kind::$kind;
            fn into_plugin(self) -> Plugin {
                Plugin::from(self)
            }
        }
    )*};
}

into_plugin! {
    TruePrecision => PrecisionPlugin,
    MixedPrecision => PrecisionPlugin,
    BitsandbytesPrecision => Bitsandbytes,
}

impl sealed::Sealed for Plugin {}
#[diagnostic::do_not_recommend]
impl IntoPlugin for Plugin {
    type Kind = kind::Plugin;
    fn into_plugin(self) -> Plugin {
        self
    }
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Plugin::ClusterEnvironment(env) => f
                .debug_tuple("ClusterEnvironment")
                .field(&env.name())
                .finish(),
            Plugin::Precision(precision) => {
                f.debug_tuple("Precision").field(&precision.name()).finish()
            }
        }
    }
}
