// Lightning's docs: `Fabric(strategy=DeepSpeedStrategy(stage=2), accelerator="gpu", devices=2)`.
use fabric::{Fabric, fabric};

#[fabric(strategy = DeepSpeedStrategy(stage = 2), accelerator = "gpu", devices = 2)]
fn train(fabric: &mut Fabric) -> Result<(), fabric::Error> {
    let _ = fabric;
    Ok(())
}

fn main() {
    let _ = train();
}
