// Lightning's docs: `Fabric(devices=8, accelerator="tpu")`.
use fabric::{Fabric, fabric};

#[fabric(devices = 8, accelerator = "tpu")]
fn train(fabric: &mut Fabric) -> Result<(), fabric::Error> {
    let _ = fabric;
    Ok(())
}

fn main() {
    let _ = train();
}
