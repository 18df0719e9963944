//! Facts about the machine the connector resolves options against: CUDA
//! devices, MPS, NCCL, cores. Injected, so that every resolution rule can be
//! tested without a GPU ([`Machine`]); [`ThisMachine`] asks the real one,
//! lazily (a CPU run never asks libtorch about CUDA).

use std::sync::OnceLock;

use crate::cuda::Backend;
use crate::error::Result;

/// What the connector needs to know about the machine.
pub(crate) trait Machine {
    /// How many CUDA devices libtorch sees.
    fn cuda_device_count(&self) -> usize;

    /// Why there is no CUDA device, for messages.
    fn cuda_unavailable_reason(&self) -> String;

    /// Whether Apple's MPS is available.
    fn has_mps(&self) -> bool;

    /// Whether NCCL can be loaded as it is (an error saying why not).
    fn nccl_loadable(&self) -> Result<()>;

    /// Whether fabric's launcher can put a `libnccl.so` link on its ranks'
    /// library path (NCCL installed under its soname only).
    fn nccl_linkable(&self) -> bool;

    /// The number of cores this process may use.
    fn cores(&self) -> usize;

    /// The bytes free in /dev/shm, where Open MPI puts shared windows;
    /// `None` where it cannot be asked.
    fn shared_memory_bytes(&self) -> Option<u64>;

    /// Whether this build of fabric has the Open MPI transport (the `mpi`
    /// cargo feature) that worlds of several processes form over.
    fn mpi_transport(&self) -> bool;
}

/// The machine this process runs on.
pub(crate) struct ThisMachine {
    /// Whether to load libtorch's CUDA backend before asking about CUDA
    /// (the builder's `load_cuda_backend`).
    load_cuda: bool,
    cuda: OnceLock<(usize, Backend)>,
}

impl ThisMachine {
    pub(crate) fn new(load_cuda: bool) -> Self {
        ThisMachine {
            load_cuda,
            cuda: OnceLock::new(),
        }
    }

    fn cuda(&self) -> &(usize, Backend) {
        self.cuda.get_or_init(|| {
            let backend = if self.load_cuda {
                crate::cuda::load_backend()
            } else {
                Backend::Disabled
            };
            let count = if tch::Cuda::is_available() {
                tch::Cuda::device_count().max(0) as usize
            } else {
                0
            };
            (count, backend)
        })
    }
}

impl Machine for ThisMachine {
    fn cuda_device_count(&self) -> usize {
        self.cuda().0
    }

    fn cuda_unavailable_reason(&self) -> String {
        match &self.cuda().1 {
            Backend::NoDriver => {
                "no NVIDIA driver is installed (libcuda.so.1 cannot be loaded)".to_owned()
            }
            Backend::NotInLibtorch => {
                "the libtorch in use is a CPU-only build (no libtorch_cuda.so beside libtorch_cpu.so)"
                    .to_owned()
            }
            Backend::Disabled => {
                "libtorch's CUDA backend was not loaded (`load_cuda_backend(false)` or FABRIC_LOAD_CUDA=0)"
                    .to_owned()
            }
            Backend::Failed(message) => {
                format!("libtorch's CUDA backend could not be loaded: {message}")
            }
            Backend::Loaded(_) => "libtorch finds no CUDA device (if something asked libtorch about CUDA before fabric loaded its CUDA backend, a `tch::manual_seed` say, libtorch keeps that first answer: call `fabric::cuda::load_backend()` at the start of `main`)".to_owned(),
            _ => "libtorch finds no CUDA device".to_owned(),
        }
    }

    fn has_mps(&self) -> bool {
        tch::utils::has_mps()
    }

    fn nccl_loadable(&self) -> Result<()> {
        crate::collectives::nccl::ensure_loadable()
    }

    fn nccl_linkable(&self) -> bool {
        crate::collectives::nccl::library_link_dir().is_some()
    }

    fn cores(&self) -> usize {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }

    fn shared_memory_bytes(&self) -> Option<u64> {
        // SAFETY: `statvfs` only writes the zeroed struct it is given.
        let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: a NUL-terminated path and a valid out-pointer.
        if unsafe { libc::statvfs(c"/dev/shm".as_ptr(), &mut stats) } != 0 {
            return None;
        }
        Some((stats.f_bavail as u64).saturating_mul(stats.f_frsize as u64))
    }

    fn mpi_transport(&self) -> bool {
        cfg!(feature = "mpi")
    }
}
