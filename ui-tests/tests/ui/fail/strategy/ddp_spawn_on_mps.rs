use fabric::{Fabric, fabric};

#[fabric(accelerator = "mps", strategy = "ddp_spawn")]
fn train(fabric: &mut Fabric) -> Result<(), fabric::Error> {
    let _ = fabric;
    Ok(())
}

fn main() {
    let _ = train();
}
