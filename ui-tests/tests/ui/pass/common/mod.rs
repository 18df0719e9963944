//! Helpers of the pass cases (not a case itself: trybuild compiles only the
//! files directly under `pass/`).
#![allow(dead_code)] // each case uses some of them

use fabric::{Error, Fabric};

/// Whether this machine has a CUDA device.
pub fn has_cuda() -> bool {
    Fabric::builder().accelerator("cuda").build().is_ok()
}

/// The result of a configuration that needs GPUs: where there is none, it
/// must be the runtime's "not available on this machine" error; where there
/// are some, it runs, or says that there are fewer than it asks for.
pub fn needs_gpus<T>(result: fabric::Result<T>) {
    match (has_cuda(), result) {
        (false, Err(Error::AcceleratorUnavailable { requested, .. })) => {
            assert!(requested == "gpu" || requested == "cuda", "{requested}");
        }
        (false, other) => panic!(
            "expected \"not available on this machine\", got {:?}",
            other.err().map(|e| e.to_string())
        ),
        (true, Ok(_) | Err(Error::DevicesUnavailable { .. })) => {}
        (true, Err(error)) => panic!("{error}"),
    }
}
