// A precision plugin of one's own goes in through `Plugin::precision`; the
// error says so. The integer is not a plugin either.
use fabric::precision::PrecisionPlugin;
use fabric::{Fabric, fabric};

struct Sanitise;

impl PrecisionPlugin for Sanitise {}

#[fabric(accelerator = "cpu", plugins = [Sanitise, 42])]
fn train(fabric: &mut Fabric) -> Result<(), fabric::Error> {
    let _ = fabric;
    Ok(())
}

fn main() {
    let _ = train();
}
