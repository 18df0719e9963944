//! Collectives between the processes of a run: Open MPI for CPU tensors,
//! NCCL for CUDA tensors, chosen by the tensor's device.
//!
//! The MPI transport is the `mpi` cargo feature (on by default). Without it
//! no world of several processes can form (MPI also hands NCCL its unique
//! id), and asking for one is an error naming the feature.
//!
//! [`Fabric::all_reduce`](crate::Fabric::all_reduce),
//! [`broadcast`](crate::Fabric::broadcast),
//! [`all_gather`](crate::Fabric::all_gather) and
//! [`barrier`](crate::Fabric::barrier) go through here. With one process
//! they return their input.

#[cfg(feature = "mpi")]
mod mpi;
// Without the `mpi` feature: an `MpiComm` that cannot exist, whose `join`
// names the feature.
#[cfg(not(feature = "mpi"))]
#[path = "without_mpi.rs"]
mod mpi;
pub(crate) mod nccl;
mod polite;
pub(crate) mod watchdog;
#[cfg(feature = "mpi")]
mod world;

pub(crate) use mpi::{MpiComm, shared_window_bytes};
pub(crate) use nccl::NcclComm;

use tch::{Kind, Tensor};

use crate::error::{Error, Result};

/// The version of the NCCL library fabric uses for collectives between CUDA
/// devices, as `(major, minor, patch)`, or a clear error saying why it
/// cannot be used (not installed, older than 2.10, or installed under its
/// soname only;
/// see [`Fabric`](crate::Fabric)'s multi-process CUDA runs). Loading NCCL
/// needs no GPU.
///
/// ```
/// match fabric::collectives::nccl_version() {
///     Ok((major, _, _)) => assert_eq!(major, 2),
///     Err(error) => assert!(error.to_string().contains("NCCL")),
/// }
/// ```
pub fn nccl_version() -> Result<(i32, i32, i32)> {
    nccl::version()
}

/// The collectives of one rank: MPI always (the world, CPU tensors, the
/// barrier), NCCL too in a run on CUDA devices.
///
/// Dropping it ends NCCL's communicator first, then MPI's (MPI itself is
/// finalised when the process exits).
#[derive(Debug)]
pub(crate) struct Comm {
    // Fields drop in this order.
    nccl: Option<NcclComm>,
    mpi: MpiComm,
}

impl Comm {
    pub(crate) fn new(mpi: MpiComm, nccl: Option<NcclComm>) -> Self {
        Comm { mpi, nccl }
    }

    /// This rank.
    pub(crate) fn rank(&self) -> usize {
        self.mpi.rank()
    }

    /// The number of ranks.
    pub(crate) fn size(&self) -> usize {
        self.mpi.size()
    }

    /// NCCL for a CUDA tensor, `None` for a CPU tensor.
    fn nccl_for(&self, tensor: &Tensor, what: &str) -> Result<Option<&NcclComm>> {
        if !tensor.device().is_cuda() {
            return Ok(None);
        }
        match &self.nccl {
            Some(nccl) => Ok(Some(nccl)),
            None => Err(Error::Distributed(format!(
                "{what} of a {:?} tensor, but this run's ranks are on the CPU and communicate through MPI; move the tensor to the CPU",
                tensor.device()
            ))),
        }
    }

    /// Whether gradients of `kind` on `device` travel as they are: NCCL
    /// carries 16-bit floats, MPI does not (they travel as f32).
    pub(crate) fn carries(kind: Kind, device: tch::Device) -> bool {
        if device.is_cuda() {
            NcclComm::carries(kind)
        } else {
            MpiComm::carries(kind)
        }
    }

    pub(crate) fn all_reduce(&self, tensor: &Tensor, op: ReduceOp) -> Result<Tensor> {
        match self.nccl_for(tensor, "all_reduce")? {
            Some(nccl) => nccl.all_reduce(tensor, op),
            None => self.mpi.all_reduce(tensor, op),
        }
    }

    pub(crate) fn all_reduce_into(
        &self,
        input: &Tensor,
        output: &Tensor,
        op: ReduceOp,
    ) -> Result<()> {
        match self.nccl_for(input, "all_reduce")? {
            Some(nccl) => nccl.all_reduce_into(input, output, op),
            None => self.mpi.all_reduce_into(input, output, op),
        }
    }

    pub(crate) fn broadcast(&self, tensor: &Tensor, src: usize) -> Result<Tensor> {
        if src >= self.size() {
            return Err(Error::InvalidArgument(format!(
                "broadcast from rank {src}, but the world has {} ranks",
                self.size()
            )));
        }
        match self.nccl_for(tensor, "broadcast")? {
            Some(nccl) => nccl.broadcast(tensor, src),
            None => self.mpi.broadcast(tensor, src),
        }
    }

    pub(crate) fn all_gather(&self, tensor: &Tensor) -> Result<Tensor> {
        match self.nccl_for(tensor, "all_gather")? {
            Some(nccl) => nccl.all_gather(tensor),
            None => self.mpi.all_gather(tensor),
        }
    }

    pub(crate) fn barrier(&self) -> Result<()> {
        self.mpi.barrier()
    }
}

/// How [`Fabric::all_reduce`](crate::Fabric::all_reduce) combines the
/// ranks' tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    /// Element-wise sum.
    Sum,
    /// Element-wise mean (the sum divided by the world size; integer
    /// tensors give a floating-point mean).
    Mean,
    /// Element-wise maximum.
    Max,
    /// Element-wise minimum.
    Min,
}
