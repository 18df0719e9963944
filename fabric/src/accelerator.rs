//! Accelerators: which hardware exists here, and the devices `devices` selects.

use fabric_options::{Accelerator, Devices};
use tch::Device;

use crate::error::{Error, Result};

/// The hardware a run uses, once `"auto"` and `"gpu"` are resolved against
/// this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResolvedAccelerator {
    /// The CPU.
    Cpu,
    /// NVIDIA GPUs through CUDA.
    Cuda,
    /// Apple's Metal Performance Shaders.
    Mps,
}

impl ResolvedAccelerator {
    /// The accelerator's name, as `accelerator` takes it.
    pub fn name(self) -> &'static str {
        match self {
            ResolvedAccelerator::Cpu => "cpu",
            ResolvedAccelerator::Cuda => "cuda",
            ResolvedAccelerator::Mps => "mps",
        }
    }
}

fn cuda_count() -> usize {
    // Before the first question about CUDA: a Rust binary does not load
    // libtorch's CUDA backend by itself (see `crate::cuda`).
    crate::cuda::load_backend(false);
    if tch::Cuda::is_available() {
        tch::Cuda::device_count().max(0) as usize
    } else {
        0
    }
}

/// What this machine has, for messages: `cpu`, plus `cuda (2 devices)` and
/// `mps` where present.
pub(crate) fn available() -> String {
    let mut names = vec!["cpu".to_owned()];
    match cuda_count() {
        0 => {}
        1 => names.push("cuda (1 device)".into()),
        n => names.push(format!("cuda ({n} devices)")),
    }
    if tch::utils::has_mps() {
        names.push("mps".into());
    }
    names.join(", ")
}

fn unavailable(requested: Accelerator, reason: &str) -> Error {
    Error::AcceleratorUnavailable {
        requested: requested.name().into(),
        reason: reason.into(),
        available: available(),
    }
}

/// Resolves `accelerator` against this machine, as Lightning does: `auto`
/// picks MPS, then CUDA, then the CPU; `gpu` picks MPS, then CUDA.
pub(crate) fn resolve(accelerator: Accelerator) -> Result<ResolvedAccelerator> {
    if accelerator == Accelerator::Cpu {
        // Without asking about CUDA, which initialises its driver.
        return Ok(ResolvedAccelerator::Cpu);
    }
    let cuda = cuda_count() > 0;
    let mps = tch::utils::has_mps();
    match accelerator {
        Accelerator::Cpu => Ok(ResolvedAccelerator::Cpu),
        Accelerator::Auto if mps => Ok(ResolvedAccelerator::Mps),
        Accelerator::Auto if cuda => Ok(ResolvedAccelerator::Cuda),
        Accelerator::Auto => Ok(ResolvedAccelerator::Cpu),
        Accelerator::Gpu if mps => Ok(ResolvedAccelerator::Mps),
        Accelerator::Gpu | Accelerator::Cuda if cuda => Ok(ResolvedAccelerator::Cuda),
        Accelerator::Gpu | Accelerator::Cuda => Err(unavailable(
            accelerator,
            match crate::cuda::load_backend(false) {
                crate::cuda::Backend::NoDriver => {
                    "no NVIDIA driver is installed (libcuda.so.1 cannot be loaded)".to_owned()
                }
                crate::cuda::Backend::NotInLibtorch => {
                    "the libtorch in use is a CPU-only build (no libtorch_cuda.so beside libtorch_cpu.so)"
                        .to_owned()
                }
                crate::cuda::Backend::Disabled => {
                    "FABRIC_LOAD_CUDA=0 kept libtorch's CUDA backend from loading".to_owned()
                }
                crate::cuda::Backend::Failed(message) => {
                    format!("libtorch's CUDA backend could not be loaded: {message}")
                }
                _ => "libtorch finds no CUDA device".to_owned(),
            }
            .as_str(),
        )),
        Accelerator::Mps if mps => Ok(ResolvedAccelerator::Mps),
        Accelerator::Mps => Err(unavailable(
            accelerator,
            "MPS exists only on Apple silicon under macOS",
        )),
        Accelerator::Tpu => Err(unavailable(
            accelerator,
            "TPUs are driven through XLA, which does not exist in libtorch",
        )),
    }
}

/// The devices `devices` selects on `accelerator`. On the CPU a count is a
/// number of processes, each on the CPU device. `"auto"` selects every
/// CUDA device, as Lightning's `CUDAAccelerator.auto_device_count()`, and
/// one process on the CPU.
pub(crate) fn select_devices(
    accelerator: ResolvedAccelerator,
    devices: &Devices,
) -> Result<Vec<Device>> {
    let unavailable = |present: String| Error::DevicesUnavailable {
        requested: devices.to_string(),
        accelerator: accelerator.name().into(),
        present,
    };
    match accelerator {
        ResolvedAccelerator::Cpu => match devices {
            Devices::Auto | Devices::Cpu => Ok(vec![Device::Cpu]),
            Devices::Count(n) => Ok(vec![Device::Cpu; *n]),
            Devices::All | Devices::Indices(_) => Err(unavailable(
                "the CPU only: on the CPU `devices` is a number of processes, such as 1 or 2"
                    .into(),
            )),
        },
        ResolvedAccelerator::Mps => match devices {
            Devices::Auto | Devices::All | Devices::Count(1) => Ok(vec![Device::Mps]),
            Devices::Indices(indices) if indices == &[0] => Ok(vec![Device::Mps]),
            _ => Err(unavailable("1 MPS device (0)".into())),
        },
        ResolvedAccelerator::Cuda => {
            let count = cuda_count();
            let present = || match count {
                1 => "1 CUDA device (0)".to_owned(),
                n => format!("{n} CUDA devices (0 to {})", n - 1),
            };
            let indices: Vec<usize> = match devices {
                Devices::Auto | Devices::All => (0..count).collect(),
                Devices::Count(n) if *n <= count => (0..*n).collect(),
                Devices::Indices(indices) if indices.iter().all(|i| *i < count) => indices.clone(),
                Devices::Count(_) | Devices::Indices(_) => return Err(unavailable(present())),
                Devices::Cpu => {
                    return Err(Error::InvalidArgument(
                        "`devices = 0` means the CPU, but the accelerator is \"cuda\"; give a number of devices such as 1"
                            .into(),
                    ));
                }
            };
            Ok(indices.into_iter().map(Device::Cuda).collect())
        }
    }
}
