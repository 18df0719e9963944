use fabric::{Fabric, fabric};

#[fabric(accelerator = "cpu")]
fn train(fabric: &mut Fabric) -> f64 {
    let _ = fabric;
    0.5
}

fn main() {
    let _ = train();
}
