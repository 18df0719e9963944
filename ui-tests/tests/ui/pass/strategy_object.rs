//! `strategy` as an expression building a strategy with parameters, as
//! Lightning's `strategy=DDPStrategy(...)`.
#![deny(warnings)]

use std::time::Duration;

use fabric::{DdpStrategy, Fabric, fabric};

#[fabric(
    accelerator = "cpu",
    strategy = DdpStrategy::new().bucket_cap_mb(50.0).collective_timeout(Duration::from_secs(60)),
)]
fn train(fabric: &mut Fabric) -> fabric::Result<String> {
    Ok(fabric.strategy().name().to_owned())
}

fn main() {
    assert_eq!(train().unwrap(), "ddp");
}
