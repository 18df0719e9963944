use fabric::{Fabric, fabric};

struct Fastest;

#[fabric(accelerator = "cpu", strategy = Fastest)]
fn train(_fabric: &mut Fabric) -> fabric::Result<()> {
    Ok(())
}

fn main() {
    train().unwrap();
}
