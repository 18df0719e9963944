use fabric::{Fabric, fabric};

#[fabric(accelerator = "cuda", precision = "transformer-engine")]
fn train(fabric: &mut Fabric) -> Result<(), fabric::Error> {
    let _ = fabric;
    Ok(())
}

fn main() {
    let _ = train();
}
