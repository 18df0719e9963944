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
    E: From<Error>,
{
    let mut fabric = builder.build().map_err(E::from)?;
    match train(&mut fabric) {
        Ok(value) => {
            fabric.finish(true).map_err(E::from)?;
            Ok(value)
        }
        Err(error) => {
            // The training error is the one to report; a logger that also
            // fails to finalise is only mentioned.
            if let Err(finish_error) = fabric.finish(false) {
                eprintln!("fabric: after the training error, {finish_error}");
            }
            Err(error)
        }
    }
}
