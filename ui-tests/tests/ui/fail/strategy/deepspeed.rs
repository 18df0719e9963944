use fabric::{Fabric, fabric};

#[fabric(accelerator = "cuda", strategy = "deepspeed_stage_2")]
fn train(fabric: &mut Fabric) -> Result<(), fabric::Error> {
    let _ = fabric;
    Ok(())
}

fn main() {
    let _ = train();
}
