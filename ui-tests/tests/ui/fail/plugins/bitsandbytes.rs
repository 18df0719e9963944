// Lightning's docs:
//     precision = BitsandbytesPrecision(mode="nf4-dq", dtype=torch.bfloat16)
//     fabric = Fabric(plugins=precision)
use fabric::precision::BitsandbytesPrecision;
use fabric::{Fabric, fabric};

#[fabric(plugins = BitsandbytesPrecision::new("nf4-dq"))]
fn train(fabric: &mut Fabric) -> Result<(), fabric::Error> {
    let _ = fabric;
    Ok(())
}

fn main() {
    let _ = train();
}
