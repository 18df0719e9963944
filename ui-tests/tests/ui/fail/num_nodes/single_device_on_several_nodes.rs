use fabric::{Fabric, fabric};

#[fabric(strategy = "single_device", num_nodes = 2)]
fn train(fabric: &mut Fabric) -> Result<(), fabric::Error> {
    let _ = fabric;
    Ok(())
}

fn main() {
    let _ = train();
}
