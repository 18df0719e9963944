use fabric::{Fabric, fabric};

#[fabric(devices = "1, x")]
fn train(fabric: &mut Fabric) -> Result<(), fabric::Error> {
    let _ = fabric;
    Ok(())
}

fn main() {
    let _ = train();
}
