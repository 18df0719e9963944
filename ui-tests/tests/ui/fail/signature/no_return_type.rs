use fabric::{Fabric, fabric};

#[fabric(accelerator = "cpu")]
fn train(fabric: &mut Fabric) {
    let _ = fabric;
}

fn main() {
    train();
}
