use fabric::{Fabric, fabric};

const DEVICES: i64 = 2;

#[fabric(devices = DEVICES)]
fn train(fabric: &mut Fabric) -> Result<(), fabric::Error> {
    let _ = fabric;
    Ok(())
}

fn main() {
    let _ = train();
}
