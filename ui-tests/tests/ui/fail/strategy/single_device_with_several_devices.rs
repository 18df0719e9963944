use fabric::{Fabric, fabric};

#[fabric(strategy = "single_device", devices = [0, 1])]
fn train(fabric: &mut Fabric) -> Result<(), fabric::Error> {
    let _ = fabric;
    Ok(())
}

fn main() {
    let _ = train();
}
