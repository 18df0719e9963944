//! Support for the code `#[fabric(...)]` generates. Not a public API: it may
//! change in any release.

use crate::builder::FabricBuilder;
use crate::error::Error;
use crate::fabric::Fabric;

/// Builds the `Fabric` configured by the attribute and runs the training
/// function with it. A configuration error is returned through the
/// function's own error type.
pub fn launch<T, E>(builder: FabricBuilder, train: fn(&mut Fabric) -> Result<T, E>) -> Result<T, E>
where
    E: From<Error> + std::fmt::Debug,
{
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

/// The hooks a callback's `#[fabric::hooks]` impl block lists.
pub trait CallbackHooks: crate::Callback + Sized {
    /// Adds them to the table.
    fn register(table: &mut crate::HookTable<Self>);
}

/// Picks, in code `#[derive(Callback)]` writes for a concrete type, the
/// `CallbackHooks` list when the type has one and nothing otherwise
/// (autoref specialisation: the `&Probe` impl wins method resolution when
/// it applies).
pub struct Probe<T>(std::marker::PhantomData<T>);

impl<T> Probe<T> {
    /// The probe.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        Probe(std::marker::PhantomData)
    }
}

/// The callback has a `#[fabric::hooks]` block.
pub trait ViaHooks<T> {
    /// Registers its hooks.
    fn register_hooks(&self, table: &mut crate::HookTable<T>);
}

impl<T: CallbackHooks> ViaHooks<T> for &Probe<T> {
    fn register_hooks(&self, table: &mut crate::HookTable<T>) {
        T::register(table);
    }
}

/// The callback has no hooks.
pub trait NoHooks<T> {
    /// Registers nothing.
    fn register_hooks(&self, table: &mut crate::HookTable<T>);
}

impl<T> NoHooks<T> for Probe<T> {
    fn register_hooks(&self, _table: &mut crate::HookTable<T>) {}
}
