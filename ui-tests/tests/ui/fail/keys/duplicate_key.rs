use fabric::{Fabric, fabric};

#[fabric(devices = 1, accelerator = "cpu", devices = 2)]
fn train(fabric: &mut Fabric) -> Result<(), fabric::Error> {
    let _ = fabric;
    Ok(())
}

fn main() {
    let _ = train();
}
