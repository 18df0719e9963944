//! The MPI transport of a build without the `mpi` feature: [`MpiComm`] has
//! no values, so no code path can hold one, and [`MpiComm::join`] (the only
//! way to get one) says which feature to enable.

use std::time::Duration;

use tch::{Kind, Tensor};

use super::ReduceOp;
use crate::error::{Error, Result};

/// No MPI communicator can exist in this build.
#[derive(Debug)]
pub(crate) enum MpiComm {}

/// No shared-memory window in this build: it needs no room.
pub(crate) fn shared_window_bytes(_ranks: usize) -> u64 {
    0
}

impl MpiComm {
    /// Always an error naming the `mpi` feature.
    pub(crate) fn join(
        _global_rank: usize,
        world_size: usize,
        _timeout: Duration,
        _failure_bound: Duration,
        _shared_memory_room: bool,
    ) -> Result<Self> {
        Err(Error::FeatureDisabled {
            feature: "mpi",
            needed_by: format!(
                "a world of {world_size} processes (its CPU collectives, and the start of NCCL's)"
            ),
        })
    }

    pub(crate) fn rank(&self) -> usize {
        match *self {}
    }

    pub(crate) fn size(&self) -> usize {
        match *self {}
    }

    /// What MPI would carry as it is (only asked of a live communicator's
    /// tensors, of which there are none here).
    pub(crate) fn carries(_kind: Kind) -> bool {
        false
    }

    pub(crate) fn all_reduce(&self, _tensor: &Tensor, _op: ReduceOp) -> Result<Tensor> {
        match *self {}
    }

    pub(crate) fn all_reduce_into(
        &self,
        _input: &Tensor,
        _output: &Tensor,
        _op: ReduceOp,
    ) -> Result<()> {
        match *self {}
    }

    pub(crate) fn broadcast(&self, _tensor: &Tensor, _src: usize) -> Result<Tensor> {
        match *self {}
    }

    pub(crate) fn all_gather(&self, _tensor: &Tensor) -> Result<Tensor> {
        match *self {}
    }

    pub(crate) fn barrier(&self) -> Result<()> {
        match *self {}
    }
}
