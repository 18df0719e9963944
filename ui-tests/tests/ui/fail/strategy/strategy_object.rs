use fabric::{Fabric, fabric};

#[fabric(accelerator = "gpu", strategy = DDPStrategy(find_unused_parameters = true))]
fn train(fabric: &mut Fabric) -> Result<(), fabric::Error> {
    let _ = fabric;
    Ok(())
}

fn main() {
    let _ = train();
}
