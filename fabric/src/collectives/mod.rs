//! Collectives between the processes of a run: Open MPI for CPU tensors.
//!
//! [`Fabric::all_reduce`](crate::Fabric::all_reduce),
//! [`broadcast`](crate::Fabric::broadcast),
//! [`all_gather`](crate::Fabric::all_gather) and
//! [`barrier`](crate::Fabric::barrier) go through here. With one process
//! they return their input.

mod mpi;
pub(crate) mod watchdog;

pub(crate) use mpi::MpiComm;

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
