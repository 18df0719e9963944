//! The smallest configuration: a CPU `Fabric`, and a function that trains
//! nothing.
#![deny(warnings)]

use fabric::{Fabric, fabric};

#[fabric(accelerator = "cpu")]
fn train(fabric: &mut Fabric) -> Result<(), fabric::Error> {
    assert_eq!(fabric.accelerator(), "cpu");
    Ok(())
}

fn main() -> Result<(), fabric::Error> {
    train()
}
