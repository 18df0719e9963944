use fabric::{Fabric, fabric};

#[fabric(accelerator = "cpu", strategy = "single_device", devices = 2)]
fn train(fabric: &mut Fabric) -> Result<(), fabric::Error> {
    let _ = fabric;
    Ok(())
}

fn main() {
    let _ = train();
}
