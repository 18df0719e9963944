use fabric::{Fabric, fabric};

#[fabric(accelerator = "cpu")]
fn train(fabric: &mut Fabric, epochs: usize, lr: f64) -> Result<(), fabric::Error> {
    let _ = (fabric, epochs, lr);
    Ok(())
}

fn main() {
    // Callers still see `train()`: no error here.
    let _ = train();
}
