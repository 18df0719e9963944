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
