//! Test scaffolding for fabric's own tests, behind the `testing` feature:
//! not part of the API users call, and may change in any release.

use crate::builder::FabricBuilder;
use crate::error::Error;

/// Whether this build of fabric has the Open MPI transport (the `mpi`
/// feature), for tests whose expectations depend on it.
pub const MPI_TRANSPORT: bool = cfg!(feature = "mpi");

/// Runs `strategy = "dp"` over `replicas` copies of the model on the CPU,
/// where `dp` proper needs CUDA devices: the batch is split, the replicas
/// run and their gradients are added up exactly as between GPUs, which lets
/// `dp` be tested on machines without GPUs. Not for training.
pub fn simulate_dp_on_cpu(builder: FabricBuilder, replicas: usize) -> FabricBuilder {
    simulate_dp(builder, vec![tch::Device::Cpu; replicas.max(1)])
}

/// Runs `strategy = "dp"` over `devices`, repeats allowed (two replicas on
/// one GPU test `dp` on a machine with one). Not for training.
pub fn simulate_dp(mut builder: FabricBuilder, devices: Vec<tch::Device>) -> FabricBuilder {
    builder.simulated_dp = Some(devices);
    builder
}

/// Joins a world of one (this process) in MPI and NCCL on CUDA device
/// `device`, and checks NCCL's all-reduce, broadcast and all-gather on
/// CUDA tensors of several kinds and layouts against the expected values.
/// For the GPU tests, on machines with a single GPU.
pub fn nccl_single_rank_check(device: usize) -> crate::Result<()> {
    use crate::collectives::{Comm, MpiComm, NcclComm, ReduceOp};
    use std::time::Duration;
    use tch::{Device, Kind, Tensor};

    let timeout = Duration::from_secs(60);
    let mpi = MpiComm::join(0, 1, timeout, Duration::from_secs(10), true)?;
    let nccl = NcclComm::join(&mpi, device, timeout)?;
    let comm = Comm::new(mpi, Some(nccl));
    let cuda = Device::Cuda(device);
    let mismatch = |what: String| Err(Error::Distributed(format!("NCCL check failed: {what}")));
    for kind in [
        Kind::Float,
        Kind::Double,
        Kind::BFloat16,
        Kind::Half,
        Kind::Int64,
        Kind::Int,
    ] {
        // Non-contiguous: a transposed 3x5 matrix.
        let tensor = Tensor::arange(15, (Kind::Int64, Device::Cpu))
            .view([3, 5])
            .to_kind(kind)
            .to_device(cuda)
            .tr();
        for op in [ReduceOp::Sum, ReduceOp::Max, ReduceOp::Min, ReduceOp::Mean] {
            let reduced = comm.all_reduce(&tensor, op)?;
            let expected = if op == ReduceOp::Mean && !tensor.is_floating_point() {
                tensor.to_kind(Kind::Float)
            } else {
                tensor.shallow_clone()
            };
            if reduced.size() != expected.size()
                || !reduced
                    .to_kind(Kind::Double)
                    .equal(&expected.to_kind(Kind::Double))
            {
                return mismatch(format!("all_reduce {op:?} of {kind:?}"));
            }
        }
        let broadcast = comm.broadcast(&tensor, 0)?;
        if !broadcast.equal(&tensor) {
            return mismatch(format!("broadcast of {kind:?}"));
        }
        let gathered = comm.all_gather(&tensor)?;
        if gathered.size() != [1, 5, 3] || !gathered.get(0).equal(&tensor) {
            return mismatch(format!("all_gather of {kind:?}"));
        }
    }
    let empty = Tensor::zeros([0], (Kind::Float, cuda));
    if comm.all_reduce(&empty, ReduceOp::Sum)?.numel() != 0 {
        return mismatch("all_reduce of an empty tensor".into());
    }
    Ok(())
}

/// Sets a tensor's gradient to none, as libtorch's optimizers'
/// `zero_grad` does (tch's `Tensor::zero_grad` zeroes it instead). For
/// tests.
pub fn clear_grad(tensor: &tch::Tensor) -> crate::Result<()> {
    crate::shim::set_grad(tensor, None)
}

pub use crate::cuda::Backend as CudaBackend;

/// Loads libtorch's CUDA backend as fabric does before it first asks about
/// CUDA; `force` loads it even without a CUDA driver. For tests.
pub fn load_cuda_backend(force: bool) -> CudaBackend {
    crate::cuda::load_backend_once(force)
}

/// Whether libtorch's CUDA backend was looked for already (it is, before
/// `main`). For tests.
pub fn cuda_backend_checked() -> bool {
    crate::cuda::checked()
}

/// The directory with a `libnccl.so` link that fabric's launcher puts on
/// its CUDA ranks' library path, if one is needed. For tests.
pub fn nccl_library_link_dir() -> Option<std::path::PathBuf> {
    crate::collectives::nccl::library_link_dir()
}
