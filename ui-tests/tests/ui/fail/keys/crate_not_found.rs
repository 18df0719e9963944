// A `crate = "..."` path that does not resolve: one error, at the string.
use fabric::{Fabric, fabric};

#[fabric(crate = "framework::fabric", accelerator = "cpu")]
fn train(fabric: &mut Fabric) -> Result<(), fabric::Error> {
    let _ = fabric;
    Ok(())
}

fn main() {
    let _ = train();
}
