//! Lightning's argument docs, `precision`: each example line as an
//! attribute. `"transformer-engine"` and `BitsandbytesPrecision` cannot work
//! in libtorch: they are `fail/precision/transformer_engine.rs` and
//! `fail/plugins/bitsandbytes.rs`.
#![deny(warnings)]

mod common;

use fabric::{Error, Fabric, Precision, fabric};

// Default used by the Fabric
// fabric = Fabric(precision="32-true", devices=1)
#[fabric(precision = "32-true", devices = 1)]
fn true32(fabric: &mut Fabric) -> fabric::Result<Option<Precision>> {
    Ok(fabric.precision())
}

// the same as:
// fabric = Fabric(precision="32", devices=1)
#[fabric(precision = "32", devices = 1)]
fn alias32(fabric: &mut Fabric) -> fabric::Result<Option<Precision>> {
    Ok(fabric.precision())
}

// 16-bit mixed precision (model weights remain in torch.float32)
// fabric = Fabric(precision="16-mixed", devices=1)
#[fabric(precision = "16-mixed", devices = 1)]
fn mixed16(fabric: &mut Fabric) -> fabric::Result<Option<Precision>> {
    Ok(fabric.precision())
}

// 16-bit bfloat mixed precision (model weights remain in torch.float32)
// fabric = Fabric(precision="bf16-mixed", devices=1)
#[fabric(precision = "bf16-mixed", devices = 1)]
fn mixed_bf16(fabric: &mut Fabric) -> fabric::Result<Option<Precision>> {
    Ok(fabric.precision())
}

// 16-bit precision (model weights get cast to torch.float16)
// fabric = Fabric(precision="16-true", devices=1)
#[fabric(precision = "16-true", devices = 1)]
fn true16(fabric: &mut Fabric) -> fabric::Result<Option<Precision>> {
    Ok(fabric.precision())
}

// 16-bit bfloat precision (model weights get cast to torch.bfloat16)
// fabric = Fabric(precision="bf16-true", devices=1)
#[fabric(precision = "bf16-true", devices = 1)]
fn true_bf16(fabric: &mut Fabric) -> fabric::Result<Option<Precision>> {
    Ok(fabric.precision())
}

// 64-bit (double) precision (model weights get cast to torch.float64)
// fabric = Fabric(precision="64-true", devices=1)
#[fabric(precision = "64-true", devices = 1)]
fn true64(fabric: &mut Fabric) -> fabric::Result<Option<Precision>> {
    Ok(fabric.precision())
}

fn main() {
    assert_eq!(true32().unwrap(), Some(Precision::True32));
    assert_eq!(alias32().unwrap(), Some(Precision::True32));
    assert_eq!(mixed_bf16().unwrap(), Some(Precision::MixedBf16));
    assert_eq!(true16().unwrap(), Some(Precision::True16));
    assert_eq!(true_bf16().unwrap(), Some(Precision::TrueBf16));
    assert_eq!(true64().unwrap(), Some(Precision::True64));
    // "auto" is the CPU here, where float16 autocast with loss scaling does
    // not run: the builder says so and what to use instead.
    match mixed16() {
        Ok(precision) => {
            assert!(common::has_cuda());
            assert_eq!(precision, Some(Precision::Mixed16));
        }
        Err(Error::InvalidArgument(message)) if !common::has_cuda() => {
            assert!(message.contains("\"16-mixed\" needs a CUDA device"), "{message}");
            assert!(message.contains("bf16-mixed"), "{message}");
        }
        Err(error) => panic!("{error}"),
    }
}
