use fabric::{Fabric, fabric};

#[fabric(num_nodes = -1)]
fn train(fabric: &mut Fabric) -> Result<(), fabric::Error> {
    let _ = fabric;
    Ok(())
}

fn main() {
    let _ = train();
}
