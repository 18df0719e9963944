use fabric::precision::{GradScalerConfig, MixedPrecision};
use fabric::{Fabric, SingleProcessEnvironment, fabric};

#[fabric(
    accelerator = "cuda",
    plugins = [
        MixedPrecision::bf16(),
        SingleProcessEnvironment,
        MixedPrecision::fp16(GradScalerConfig::default()),
    ],
)]
fn train(fabric: &mut Fabric) -> Result<(), fabric::Error> {
    let _ = fabric;
    Ok(())
}

fn main() {
    let _ = train();
}
