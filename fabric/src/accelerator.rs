//! Accelerators: which hardware exists here, and the devices `devices` selects.

use fabric_options::{Accelerator, Devices};
use tch::Device;

use crate::error::{Error, Result};
use crate::machine::Machine;

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

/// What this machine has, for messages: `cpu`, plus `cuda (2 devices)` and
/// `mps` where present.
pub(crate) fn available(machine: &dyn Machine) -> String {
    let mut names = vec!["cpu".to_owned()];
    match machine.cuda_device_count() {
        0 => {}
        1 => names.push("cuda (1 device)".into()),
        n => names.push(format!("cuda ({n} devices)")),
    }
    if machine.has_mps() {
        names.push("mps".into());
    }
    names.join(", ")
}

fn unavailable(machine: &dyn Machine, requested: Accelerator, reason: &str) -> Error {
    Error::AcceleratorUnavailable {
        requested: requested.name().into(),
        reason: reason.into(),
        available: available(machine),
    }
}

/// Resolves `accelerator` against this machine, as Lightning does: `auto`
/// picks MPS, then CUDA, then the CPU; `gpu` picks MPS, then CUDA.
pub(crate) fn resolve(
    accelerator: Accelerator,
    machine: &dyn Machine,
) -> Result<ResolvedAccelerator> {
    if accelerator == Accelerator::Cpu {
        // Without asking about CUDA, which initialises its driver.
        return Ok(ResolvedAccelerator::Cpu);
    }
    let cuda = machine.cuda_device_count() > 0;
    let mps = machine.has_mps();
    match accelerator {
        Accelerator::Cpu => Ok(ResolvedAccelerator::Cpu),
        Accelerator::Auto if mps => Ok(ResolvedAccelerator::Mps),
        Accelerator::Auto if cuda => Ok(ResolvedAccelerator::Cuda),
        Accelerator::Auto => Ok(ResolvedAccelerator::Cpu),
        Accelerator::Gpu if mps => Ok(ResolvedAccelerator::Mps),
        Accelerator::Gpu | Accelerator::Cuda if cuda => Ok(ResolvedAccelerator::Cuda),
        Accelerator::Gpu | Accelerator::Cuda => Err(unavailable(
            machine,
            accelerator,
            &machine.cuda_unavailable_reason(),
        )),
        Accelerator::Mps if mps => Ok(ResolvedAccelerator::Mps),
        Accelerator::Mps => Err(unavailable(
            machine,
            accelerator,
            "MPS exists only on Apple silicon under macOS",
        )),
        Accelerator::Tpu => Err(unavailable(
            machine,
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
    machine: &dyn Machine,
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
            let count = machine.cuda_device_count();
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
