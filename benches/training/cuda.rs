//! The CUDA side of the training benchmark: making sure a GPU is there for
//! the raw tch loop, synchronising around the timed steps, and the device
//! memory in use.

use std::ffi::{CStr, c_int};

use anyhow::{Result, bail};
use tch::Device;

/// Loads libtorch's CUDA backend (the raw loop builds no `Fabric`, which
/// would load it) and fails clearly where CUDA cannot be used.
pub fn require() -> Result<()> {
    let backend = fabric::cuda::load_backend();
    if !tch::Cuda::is_available() {
        bail!(
            "CUDA is unavailable (libtorch's CUDA backend: {backend:?}, {} device(s)): --accelerator cuda needs an NVIDIA GPU and its driver",
            tch::Cuda::device_count()
        );
    }
    Ok(())
}

/// Waits for the work queued on `device`, if it is a GPU.
pub fn synchronize(device: Device) {
    if let Device::Cuda(index) = device {
        tch::Cuda::synchronize(index as i64);
    }
}

type MemGetInfo = unsafe extern "C" fn(*mut usize, *mut usize) -> c_int;

/// Device memory in use on the current GPU, in MiB (`cudaMemGetInfo`:
/// total minus free, as `torch.cuda.mem_get_info` gives it in the Python
/// script): the CUDA context plus what libtorch's caching allocator holds,
/// which it keeps after its peak. NaN when the CUDA runtime is not loaded.
pub fn used_mb() -> f64 {
    // The runtime libtorch's CUDA backend loaded (never loads another).
    for name in [c"libcudart.so.13", c"libcudart.so.12"] {
        if let Some(used) = used_bytes(name) {
            return used as f64 / (1024.0 * 1024.0);
        }
    }
    f64::NAN
}

fn used_bytes(library: &CStr) -> Option<usize> {
    // SAFETY: RTLD_NOLOAD only returns a handle to a library already
    // loaded; the handle is not closed (the library stays loaded anyway).
    let handle = unsafe { libc::dlopen(library.as_ptr(), libc::RTLD_LAZY | libc::RTLD_NOLOAD) };
    if handle.is_null() {
        return None;
    }
    // SAFETY: `handle` is a valid handle and the name a C string.
    let symbol = unsafe { libc::dlsym(handle, c"cudaMemGetInfo".as_ptr()) };
    if symbol.is_null() {
        return None;
    }
    // SAFETY: `cudaMemGetInfo(size_t *free, size_t *total)` returns a
    // `cudaError_t` (an int).
    let get: MemGetInfo = unsafe { std::mem::transmute(symbol) };
    let (mut free, mut total) = (0usize, 0usize);
    // SAFETY: both pointers are valid for writes.
    let status = unsafe { get(&mut free, &mut total) };
    (status == 0).then(|| total - free)
}
