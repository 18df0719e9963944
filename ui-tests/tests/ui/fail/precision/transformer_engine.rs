// Lightning's docs: `Fabric(precision="transformer-engine", devices=1)`.
use fabric::{Fabric, fabric};

#[fabric(precision = "transformer-engine", devices = 1)]
fn train(fabric: &mut Fabric) -> Result<(), fabric::Error> {
    let _ = fabric;
    Ok(())
}

fn main() {
    let _ = train();
}
