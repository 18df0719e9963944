use fabric::{Fabric, fabric};

#[fabric(accelerator = "cpu", precison = "64-true")]
fn train(fabric: &mut Fabric) -> Result<(), fabric::Error> {
    let _ = fabric;
    Ok(())
}

fn main() {
    let _ = train();
}
