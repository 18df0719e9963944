use fabric::{Fabric, fabric};

#[fabric(crate = fabric, accelerator = "cpu")]
fn train(fabric: &mut Fabric) -> Result<(), fabric::Error> {
    let _ = fabric;
    Ok(())
}

fn main() {
    let _ = train();
}
