use fabric::{Fabric, fabric};

#[fabric(strategy = "xla")]
fn train(fabric: &mut Fabric) -> Result<(), fabric::Error> {
    let _ = fabric;
    Ok(())
}

fn main() {
    let _ = train();
}
