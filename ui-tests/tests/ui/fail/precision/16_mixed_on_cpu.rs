use fabric::{Fabric, fabric};

#[fabric(accelerator = "cpu", precision = "16-mixed")]
fn train(fabric: &mut Fabric) -> Result<(), fabric::Error> {
    let _ = fabric;
    Ok(())
}

fn main() {
    let _ = train();
}
