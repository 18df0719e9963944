//! Lightning's argument docs, `accelerator`: each example line as an
//! attribute. `Fabric(devices=8, accelerator="tpu")` cannot work in libtorch:
//! it is `fail/accelerator/tpu_with_8_devices.rs`.
#![deny(warnings)]

mod common;

use fabric::{Fabric, fabric};

// fabric = Fabric(accelerator="cpu")
#[fabric(accelerator = "cpu")]
fn cpu(fabric: &mut Fabric) -> fabric::Result<&'static str> {
    Ok(fabric.accelerator())
}

// fabric = Fabric(devices=2, accelerator="gpu")
#[fabric(devices = 2, accelerator = "gpu")]
fn two_gpus(fabric: &mut Fabric) -> fabric::Result<usize> {
    Ok(fabric.world_size())
}

// fabric = Fabric(devices=4, accelerator="gpu", strategy="ddp")
#[fabric(devices = 4, accelerator = "gpu", strategy = "ddp")]
fn four_gpus_with_ddp(fabric: &mut Fabric) -> fabric::Result<usize> {
    Ok(fabric.world_size())
}

// fabric = Fabric(devices=2, accelerator="auto")
#[fabric(devices = 2, accelerator = "auto")]
fn two_devices_of_the_best_accelerator(fabric: &mut Fabric) -> fabric::Result<usize> {
    Ok(fabric.world_size())
}

fn main() {
    assert_eq!(cpu().unwrap(), "cpu");
    common::needs_gpus(two_gpus());
    common::needs_gpus(four_gpus_with_ddp());
    if common::has_cuda() {
        common::needs_gpus(two_devices_of_the_best_accelerator());
    } else {
        // Without a GPU, "auto" is two CPU processes: distributed training,
        // run by the workspace's distributed tests. Here the line compiles.
        let _: fn() -> fabric::Result<usize> = two_devices_of_the_best_accelerator;
    }
}
