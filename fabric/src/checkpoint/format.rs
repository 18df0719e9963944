//! `meta.json`, the index of a checkpoint directory.
//!
//! ```json
//! {
//!   "format": "fabric-checkpoint",
//!   "version": 1,
//!   "entries": {
//!     "model": {"type": "model", "file": "model.safetensors", "bytes": 1234, "crc32c": 5678},
//!     "optimizer": {"type": "optimizer", "file": "optimizer.safetensors", "bytes": 99, "crc32c": 1,
//!                   "algorithm": {"algorithm": "adam", "lr": 0.001, "betas": [0.9, 0.999], ...},
//!                   "parameters": ["l1.bias", "l1.weight"],
//!                   "groups": [{"name": "default", "algorithm": {...}, "parameters": ["l1.weight"]},
//!                              {"name": "no_decay", "algorithm": {...}, "parameters": ["l1.bias"]}]},
//!     "scheduler": {"type": "scheduler", "schedule": {"kind": "cosine_annealing", "t_max": 100, "eta_min": 0.0},
//!                   "last_epoch": 10, "step_count": 11, "base_lrs": [0.001, 0.001], "last_lrs": [...]},
//!     "scaler": {"type": "grad_scaler", "scale": 65536.0, "growth_tracker": 3, "init_scale": 65536.0,
//!                "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000},
//!     "step": {"type": "value", "value": 100},
//!     "train": {"type": "loader", "ranks": [{"epoch": 2, "consumed": 17, "batches": 40, "seed": 42,
//!               "shuffle": true, "custom_sampler": false, "batch_size": 16, "samples": 1280,
//!               "shard": [0, 2]}, {...rank 1...}]},
//!     "rng": {"type": "rng", "ranks": [{"cpu": "<hex: libtorch's CPU generator state>", "cuda": []}, ...]}
//!   }
//! }
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::optim::Algorithm;
use crate::optim::SchedulerState;
use crate::precision::{GradScalerConfig, GradScalerState};

pub(crate) const FORMAT: &str = "fabric-checkpoint";
pub(crate) const VERSION: u32 = 1;
pub(crate) const META_FILE: &str = "meta.json";

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Meta {
    pub format: String,
    pub version: u32,
    pub entries: BTreeMap<String, EntryMeta>,
}

/// A tensor file of the checkpoint, with its size and CRC-32C so that a
/// truncated or altered file is detected before anything is loaded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct FileMeta {
    pub file: String,
    pub bytes: u64,
    pub crc32c: u32,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum EntryMeta {
    Model {
        #[serde(flatten)]
        file: FileMeta,
    },
    Optimizer {
        #[serde(flatten)]
        file: FileMeta,
        algorithm: Algorithm,
        parameters: Vec<String>,
        /// The parameter groups; absent in checkpoints from before groups,
        /// which had one group of every parameter with `algorithm`.
        #[serde(default)]
        groups: Vec<GroupMeta>,
    },
    Scheduler {
        #[serde(flatten)]
        state: SchedulerState,
    },
    GradScaler {
        scale: f64,
        growth_tracker: i32,
        init_scale: f64,
        growth_factor: f64,
        backoff_factor: f64,
        growth_interval: u32,
    },
    Value {
        value: serde_json::Value,
    },
    /// A data loader's position, by rank (`LoaderPosition`s).
    Loader {
        ranks: Vec<serde_json::Value>,
    },
    /// libtorch's generator states, by rank (`RngState`s).
    Rng {
        ranks: Vec<serde_json::Value>,
    },
}

/// A parameter group of an optimizer entry: its name, settings and
/// parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct GroupMeta {
    pub name: String,
    pub algorithm: Algorithm,
    pub parameters: Vec<String>,
}

impl EntryMeta {
    pub(crate) fn type_name(&self) -> &'static str {
        match self {
            EntryMeta::Model { .. } => "model",
            EntryMeta::Optimizer { .. } => "optimizer",
            EntryMeta::Scheduler { .. } => "scheduler",
            EntryMeta::GradScaler { .. } => "grad scaler",
            EntryMeta::Value { .. } => "value",
            EntryMeta::Loader { .. } => "loader",
            EntryMeta::Rng { .. } => "random generators",
        }
    }

    pub(crate) fn scaler(state: GradScalerState) -> Self {
        EntryMeta::GradScaler {
            scale: state.scale,
            growth_tracker: state.growth_tracker,
            init_scale: state.config.init_scale,
            growth_factor: state.config.growth_factor,
            backoff_factor: state.config.backoff_factor,
            growth_interval: state.config.growth_interval,
        }
    }
}

/// The scaler state of a `GradScaler` entry.
pub(crate) fn scaler_state(entry: &EntryMeta) -> Option<GradScalerState> {
    match *entry {
        EntryMeta::GradScaler {
            scale,
            growth_tracker,
            init_scale,
            growth_factor,
            backoff_factor,
            growth_interval,
        } => Some(GradScalerState {
            config: GradScalerConfig {
                init_scale,
                growth_factor,
                backoff_factor,
                growth_interval,
            },
            scale,
            growth_tracker,
        }),
        _ => None,
    }
}

/// The separator of optimizer state keys: `<parameter>/<state>`, as in
/// `layer.weight/exp_avg`.
pub(crate) fn state_key(param: &str, state: &str) -> String {
    format!("{param}/{state}")
}
