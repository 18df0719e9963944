//! Lightning's argument docs, `strategy`: each example line as an attribute.
//! `Fabric(strategy=DeepSpeedStrategy(stage=2), ...)` cannot work in
//! libtorch: it is `fail/strategy/deepspeed_object.rs`.
#![deny(warnings)]

mod common;

use fabric::{Fabric, fabric};

// Running with the DistributedDataParallel strategy on 4 GPUs
// fabric = Fabric(strategy="ddp", accelerator="gpu", devices=4)
#[fabric(strategy = "ddp", accelerator = "gpu", devices = 4)]
fn ddp_on_four_gpus(fabric: &mut Fabric) -> fabric::Result<usize> {
    Ok(fabric.world_size())
}

// Running with the DDP Spawn strategy using 4 CPU processes
// fabric = Fabric(strategy="ddp_spawn", accelerator="cpu", devices=4)
#[fabric(strategy = "ddp_spawn", accelerator = "cpu", devices = 4)]
fn ddp_spawn_on_four_cpu_processes(fabric: &mut Fabric) -> fabric::Result<usize> {
    Ok(fabric.world_size())
}

fn main() {
    common::needs_gpus(ddp_on_four_gpus());
    // Spawning four processes is the distributed runtime's test; here the
    // line compiles.
    let _: fn() -> fabric::Result<usize> = ddp_spawn_on_four_cpu_processes;
}
