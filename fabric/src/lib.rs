//! # fabric
//!
//! What Lightning Fabric is to PyTorch, for [tch] (the Rust bindings of
//! libtorch): devices, strategies, precision, loggers and callbacks around a
//! training loop you write yourself — with the configuration checked by the
//! compiler when you use the `#[fabric(...)]` attribute.
//!
//! ```
//! use fabric::Fabric;
//! use tch::{nn, nn::OptimizerConfig};
//!
//! # fn main() -> fabric::Result<()> {
//! let mut fabric = Fabric::builder().accelerator("cpu").precision("64-true").build()?;
//! let mut vs = nn::VarStore::new(tch::Device::Cpu);
//! let net = nn::linear(vs.root(), 4, 2, Default::default());
//! let opt = nn::Adam::default().build(&vs, 1e-3)?;
//! let (model, _opt) = fabric.setup(&mut vs, net, opt)?;
//! let out = model.forward(&tch::Tensor::ones([1, 4], (tch::Kind::Float, tch::Device::Cpu)));
//! assert_eq!(out.kind(), tch::Kind::Double);
//! # Ok(()) }
//! ```
//!
//! The runtime is organised by the concepts Lightning users name:
//! accelerators ([`Fabric::device`]), strategies, precision
//! ([`Fabric::autocast`]), cluster environments ([`ClusterEnvironment`]),
//! [`data`], [`Logger`]s ([`CsvLogger`], [`TensorBoardLogger`]) and
//! [`Callback`]s; around them, optimizers whose state is checkpointed
//! ([`optim`]), [`checkpoint`]s ([`Fabric::save`], [`Fabric::load`]) and a
//! [`Progress`] bar.
//!
//! ## Cargo features
//!
//! - `mpi` (on by default): the Open MPI transport of multi-process runs
//!   (`ddp` under `mpirun`, SLURM or fabric's own launcher; it also starts
//!   NCCL's communicator for CUDA ranks). Building it needs Open MPI's
//!   headers (`mpicc`) and libclang. Without it, fabric builds with neither
//!   and trains in one process (one device, or `dp` over the CUDA devices
//!   of one process); asking for several processes is
//!   [`Error::FeatureDisabled`], before any rank starts.
//! - `doc-only`: builds the documentation without libtorch, as tch's
//!   feature of that name (docs.rs builds with it); not for programs, which
//!   it leaves unlinked.
//! - `testing`: the scaffolding of fabric's own test suite (`fabric::testing`).
#![cfg_attr(docsrs, feature(doc_cfg))]

mod accelerator;
mod builder;
pub mod callbacks;
pub use callbacks::hooks;
pub mod checkpoint;
pub mod collectives;
mod connector;
pub mod cuda;
pub mod data;
mod device;
pub mod environment;
mod error;
#[allow(clippy::module_inception)]
mod fabric;
mod failure;
mod fs;
mod launcher;
mod loggers;
mod machine;
mod module;
pub mod optim;
mod optimizer;
mod overrides;
mod plugins;
pub mod precision;
pub mod preemption;
mod process;
mod progress;
mod seed;
mod shim;
mod signals;
pub mod strategy;
mod switches;
mod tensors;
#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;
mod vars;

#[doc(hidden)]
pub mod __private {
    pub use crate::__plugin_kind as plugin_kind;
    pub use crate::private::*;
}
mod private;

pub use builder::{DEFAULT_COLLECTIVE_TIMEOUT, DEFAULT_FAILURE_TIMEOUT, FabricBuilder};
pub use callbacks::{Callback, Handles, HookTable, IntoOutcome, Outcome};
pub use collectives::ReduceOp;
pub use device::ToDevice;
pub use environment::{ClusterEnvironment, SingleProcessEnvironment};
pub use error::{Error, Result};
pub use fabric::{Fabric, LoggerMut, LoggerRef};
pub use fabric_macros::{Callback, Tensors, fabric, hook, hooks};
pub use launcher::TrainResult;
pub use loggers::{CsvLogger, Hyperparams, Logger, LoggerError, Metric, TensorBoardLogger};
pub use module::{FabricModule, Forward};
pub use optimizer::{AnyOptimizer, FabricOptimizer};
pub use plugins::{IntoPlugin, Plugin};
pub use process::Threads;
pub use progress::Progress;
pub use strategy::{DdpStrategy, GradClip, IntoStrategy, Strategy};
pub use tensors::Tensors;

/// The option types and their parser, shared with `#[fabric(...)]`
/// (`options::Strategy` is the `strategy` option's names; the
/// [`Strategy`] trait is the object a run uses).
pub use fabric_options as options;
pub use fabric_options::{Accelerator, Devices, Precision};
