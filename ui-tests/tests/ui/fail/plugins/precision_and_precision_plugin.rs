use fabric::precision::MixedPrecision;
use fabric::{Fabric, fabric};

#[fabric(accelerator = "cpu", precision = "64-true", plugins = [MixedPrecision::bf16()])]
fn train(fabric: &mut Fabric) -> Result<(), fabric::Error> {
    let _ = fabric;
    Ok(())
}

fn main() {
    let _ = train();
}
