// A return type the attribute cannot see through: the compiler reports it,
// pointing at the return type.
use fabric::{Fabric, fabric};

type Loss = f64;

#[fabric(accelerator = "cpu")]
fn train(fabric: &mut Fabric) -> Loss {
    let _ = fabric;
    0.5
}

fn main() {
    let _ = train();
}
