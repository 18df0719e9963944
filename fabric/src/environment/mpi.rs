//! Open MPI's environment (`mpirun`, or `srun` with PMIx).

use super::{ClusterEnvironment, env_number, required_number};
use crate::Result;

/// The environment of a process started by Open MPI's `mpirun` (or by
/// fabric's own launcher, which uses it), from the `OMPI_COMM_WORLD_*`
/// variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MpiEnvironment {
    world_size: usize,
    global_rank: usize,
    local_rank: usize,
    local_size: usize,
}

impl MpiEnvironment {
    const NAME: &'static str = "Open MPI";

    /// Whether `OMPI_COMM_WORLD_SIZE` is set.
    pub fn detect() -> bool {
        std::env::var_os("OMPI_COMM_WORLD_SIZE").is_some()
    }

    /// Reads `OMPI_COMM_WORLD_{SIZE,RANK,LOCAL_RANK,LOCAL_SIZE}`.
    pub fn from_env() -> Result<Self> {
        let world_size = required_number(Self::NAME, "OMPI_COMM_WORLD_SIZE")?;
        let global_rank = required_number(Self::NAME, "OMPI_COMM_WORLD_RANK")?;
        let local_rank =
            env_number(Self::NAME, "OMPI_COMM_WORLD_LOCAL_RANK")?.unwrap_or(global_rank);
        let local_size =
            env_number(Self::NAME, "OMPI_COMM_WORLD_LOCAL_SIZE")?.unwrap_or(world_size);
        Ok(MpiEnvironment {
            world_size,
            global_rank,
            local_rank,
            local_size: local_size.max(1),
        })
    }
}

impl ClusterEnvironment for MpiEnvironment {
    fn name(&self) -> &str {
        Self::NAME
    }
    fn world_size(&self) -> usize {
        self.world_size
    }
    fn global_rank(&self) -> usize {
        self.global_rank
    }
    fn local_rank(&self) -> usize {
        self.local_rank
    }
    fn node_rank(&self) -> usize {
        self.global_rank / self.local_size
    }
    fn num_nodes(&self) -> Option<usize> {
        Some(self.world_size.div_ceil(self.local_size))
    }
}
