use fabric::{Fabric, fabric};

#[fabric(batch_size = 32)]
fn train(fabric: &mut Fabric) -> Result<(), fabric::Error> {
    let _ = fabric;
    Ok(())
}

fn main() {
    let _ = train();
}
