use fabric::{Fabric, fabric};

#[fabric(num_nodes = 0)]
fn train(fabric: &mut Fabric) -> Result<(), fabric::Error> {
    let _ = fabric;
    Ok(())
}

fn main() {
    let _ = train();
}
