use fabric::{Fabric, fabric};

#[fabric(precision = 1.5)]
fn train(fabric: &mut Fabric) -> Result<(), fabric::Error> {
    let _ = fabric;
    Ok(())
}

fn main() {
    let _ = train();
}
