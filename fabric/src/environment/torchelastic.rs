//! torchrun's (torchelastic's) environment.

use super::{ClusterEnvironment, env_number, required_number};
use crate::Result;

/// The environment `torchrun` sets: `RANK`, `WORLD_SIZE`, `LOCAL_RANK`,
/// `LOCAL_WORLD_SIZE`, `GROUP_RANK`, `MASTER_ADDR`, `MASTER_PORT`.
///
/// Detected, as in Lightning, by `TORCHELASTIC_RUN_ID`, or by `RANK`,
/// `WORLD_SIZE`, `LOCAL_RANK` and `MASTER_ADDR` all being set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TorchElasticEnvironment {
    world_size: usize,
    global_rank: usize,
    local_rank: usize,
    node_rank: usize,
    local_world_size: Option<usize>,
    main_address: String,
    main_port: u16,
}

impl TorchElasticEnvironment {
    const NAME: &'static str = "torchrun";

    /// Whether torchrun's variables are set.
    pub fn detect() -> bool {
        let set = |name| std::env::var_os(name).is_some();
        set("TORCHELASTIC_RUN_ID")
            || ["RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR"]
                .into_iter()
                .all(set)
    }

    /// Reads the variables.
    pub fn from_env() -> Result<Self> {
        let port = required_number(Self::NAME, "MASTER_PORT")?;
        Ok(TorchElasticEnvironment {
            world_size: required_number(Self::NAME, "WORLD_SIZE")?,
            global_rank: required_number(Self::NAME, "RANK")?,
            local_rank: required_number(Self::NAME, "LOCAL_RANK")?,
            node_rank: env_number(Self::NAME, "GROUP_RANK")?.unwrap_or(0),
            local_world_size: env_number(Self::NAME, "LOCAL_WORLD_SIZE")?,
            main_address: std::env::var("MASTER_ADDR").map_err(|_| {
                crate::Error::ClusterEnvironment {
                    environment: Self::NAME.into(),
                    message: "MASTER_ADDR is not set".into(),
                }
            })?,
            main_port: u16::try_from(port).map_err(|_| crate::Error::ClusterEnvironment {
                environment: Self::NAME.into(),
                message: format!("MASTER_PORT={port} is not a port number"),
            })?,
        })
    }
}

impl TorchElasticEnvironment {
    /// Where rank 0 can be reached for a rendezvous (`MASTER_ADDR` and `MASTER_PORT`), as
    /// Lightning's `main_address` and `main_port`.
    pub fn main_address_and_port(&self) -> (String, u16) {
        (self.main_address.clone(), self.main_port)
    }
}

impl ClusterEnvironment for TorchElasticEnvironment {
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
        self.node_rank
    }
    fn num_nodes(&self) -> Option<usize> {
        self.local_world_size
            .filter(|n| *n > 0)
            .map(|n| self.world_size.div_ceil(n))
    }
}
