//! The function's own error type, fabric reached through a re-export with
//! `crate = "..."`, `None` and integer values.
#![deny(warnings)]

mod framework {
    pub use fabric;
}

#[derive(Debug)]
enum TrainError {
    #[allow(dead_code)] // read by `Debug` when `main` fails
    Fabric(framework::fabric::Error),
}

impl From<framework::fabric::Error> for TrainError {
    fn from(error: framework::fabric::Error) -> Self {
        TrainError::Fabric(error)
    }
}

#[framework::fabric::fabric(crate = "crate::framework::fabric", devices = None, precision = 32)]
fn train(fabric: &mut framework::fabric::Fabric) -> Result<&'static str, TrainError> {
    Ok(fabric.accelerator())
}

fn main() -> Result<(), TrainError> {
    // `devices = None` is the CPU.
    assert_eq!(train()?, "cpu");
    Ok(())
}
