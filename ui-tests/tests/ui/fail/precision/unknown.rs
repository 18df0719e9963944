use fabric::{Fabric, fabric};

#[fabric(precision = "bf16-mixd")]
fn train(fabric: &mut Fabric) -> Result<(), fabric::Error> {
    let _ = fabric;
    Ok(())
}

fn main() {
    let _ = train();
}
