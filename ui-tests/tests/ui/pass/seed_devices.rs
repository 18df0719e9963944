//! Lightning's argument docs, `devices`: each example line as an attribute,
//! which covers every form `devices` takes (`None`, `0`, an integer, a list,
//! `"1, 4"`, `-1`, `"-1"`).
#![deny(warnings)]

mod common;

use common::needs_gpus;
use fabric::{Fabric, fabric};

// default used by Fabric, i.e., use the CPU
// fabric = Fabric(devices=None)
#[fabric(devices = None)]
fn none(fabric: &mut Fabric) -> fabric::Result<String> {
    Ok(format!("{:?}", fabric.device()))
}

// equivalent
// fabric = Fabric(devices=0)
#[fabric(devices = 0)]
fn zero(fabric: &mut Fabric) -> fabric::Result<String> {
    Ok(format!("{:?}", fabric.device()))
}

// int: run on two GPUs
// fabric = Fabric(devices=2, accelerator="gpu")
#[fabric(devices = 2, accelerator = "gpu")]
fn two(fabric: &mut Fabric) -> fabric::Result<usize> {
    Ok(fabric.world_size())
}

// list: run on the 2nd (idx 1) and 5th (idx 4) GPUs (by bus ordering)
// fabric = Fabric(devices=[1, 4], accelerator="gpu")
#[fabric(devices = [1, 4], accelerator = "gpu")]
fn list(fabric: &mut Fabric) -> fabric::Result<usize> {
    Ok(fabric.world_size())
}

// fabric = Fabric(devices="1, 4", accelerator="gpu")  # equivalent
#[fabric(devices = "1, 4", accelerator = "gpu")]
fn list_as_a_string(fabric: &mut Fabric) -> fabric::Result<usize> {
    Ok(fabric.world_size())
}

// -1: run on all GPUs
// fabric = Fabric(devices=-1, accelerator="gpu")
#[fabric(devices = -1, accelerator = "gpu")]
fn all(fabric: &mut Fabric) -> fabric::Result<usize> {
    Ok(fabric.world_size())
}

// fabric = Fabric(devices="-1", accelerator="gpu")  # equivalent
#[fabric(devices = "-1", accelerator = "gpu")]
fn all_as_a_string(fabric: &mut Fabric) -> fabric::Result<usize> {
    Ok(fabric.world_size())
}

fn main() {
    assert_eq!(none().unwrap(), "Cpu");
    assert_eq!(zero().unwrap(), "Cpu");
    needs_gpus(two());
    needs_gpus(list());
    needs_gpus(list_as_a_string());
    needs_gpus(all());
    needs_gpus(all_as_a_string());
}
