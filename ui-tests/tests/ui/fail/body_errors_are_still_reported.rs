// An error in the attribute does not hide the body's own errors, and adds
// none of its own: the function is still generated, with its body.
use fabric::{Fabric, fabric};

#[fabric(accelerator = "cdua")]
fn train(fabric: &mut Fabric) -> Result<(), fabric::Error> {
    let epochs: usize = "ten";
    let _ = (fabric, epochs);
    Ok(())
}

fn main() {
    let _ = train();
}
