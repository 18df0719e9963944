use fabric::{Fabric, fabric};

#[fabric(
    accelerator = "cdua",
    precison = "64-true",
    devices = [1, 1],
    strategy = "dpp",
    devices = 2,
    num_nodes = 1.0,
)]
fn train(fabric: &mut Fabric) -> Result<(), fabric::Error> {
    let _ = fabric;
    Ok(())
}

fn main() {
    let _ = train();
}
