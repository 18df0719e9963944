use fabric::{Fabric, fabric};

#[fabric(accelerator = "cpu", strategy = "ddp_fork", devices = 2)]
fn train(fabric: &mut Fabric) -> Result<(), fabric::Error> {
    let _ = fabric;
    Ok(())
}

fn main() {
    let _ = train();
}
