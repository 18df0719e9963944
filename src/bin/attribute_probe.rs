//! A program built with `#[fabric(...)]`, for the tests that run generated
//! programs (`tests/attribute.rs`): it prints the configuration it ran with,
//! so that a test can set `LT_*` variables and see what they changed.
//!
//! `attribute_probe NAME` runs the function configured as `NAME`, one of
//! `defaults`, `two_devices`, `two_nodes`, `ddp` and `gpu`, and prints one
//! line such as
//!
//! ```text
//! accelerator=cpu strategy=single_device device=Cpu precision=32-true world_size=1
//! ```
//!
//! An error (a bad `LT_*` value, a configuration this machine cannot run)
//! comes back through `main`'s `anyhow::Result`: Rust prints it on stderr
//! and exits with status 1.

use fabric::{Fabric, fabric};

fn report(fabric: &Fabric) -> String {
    format!(
        "accelerator={} strategy={} device={:?} precision={} world_size={}",
        fabric.accelerator(),
        fabric.strategy().name(),
        fabric.device(),
        fabric.precision_name(),
        fabric.world_size()
    )
}

/// Every option at a value that runs here, written out.
#[fabric(
    accelerator = "cpu",
    strategy = "auto",
    devices = 1,
    num_nodes = 1,
    precision = "32-true"
)]
fn defaults(fabric: &mut Fabric) -> anyhow::Result<String> {
    Ok(report(fabric))
}

/// Two CPU processes: distributed training.
#[fabric(accelerator = "cpu", devices = 2)]
fn two_devices(fabric: &mut Fabric) -> anyhow::Result<String> {
    Ok(report(fabric))
}

/// Two machines: distributed training.
#[fabric(accelerator = "cpu", num_nodes = 2)]
fn two_nodes(fabric: &mut Fabric) -> anyhow::Result<String> {
    Ok(report(fabric))
}

/// DDP, on one CPU process.
#[fabric(accelerator = "cpu", strategy = "ddp", devices = 1)]
fn ddp(fabric: &mut Fabric) -> anyhow::Result<String> {
    Ok(report(fabric))
}

/// A configuration for a machine with at least five GPUs.
#[fabric(accelerator = "cuda", devices = [1, 4], precision = "16-mixed")]
fn gpu(fabric: &mut Fabric) -> anyhow::Result<String> {
    Ok(report(fabric))
}

fn main() -> anyhow::Result<()> {
    let name = std::env::args().nth(1).unwrap_or_default();
    let line = match name.as_str() {
        "defaults" => defaults()?,
        "two_devices" => two_devices()?,
        "two_nodes" => two_nodes()?,
        "ddp" => ddp()?,
        "gpu" => gpu()?,
        _ => anyhow::bail!(
            "unknown configuration {name:?}; expected defaults, two_devices, two_nodes, ddp or gpu"
        ),
    };
    println!("{line}");
    Ok(())
}
