use fabric::{Fabric, fabric};

#[fabric(accelerator = "cuda", devices = None)]
fn train(fabric: &mut Fabric) -> Result<(), fabric::Error> {
    let _ = fabric;
    Ok(())
}

fn main() {
    let _ = train();
}
