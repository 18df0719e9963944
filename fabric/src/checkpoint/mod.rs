//! Checkpoints: [`Fabric::save`](crate::Fabric::save) and
//! [`Fabric::load`](crate::Fabric::load) of a [`State`] holding models,
//! optimizers, the loss scaler and any serialisable value.
//!
//! # Format
//!
//! A checkpoint is a directory:
//!
//! | file | holds |
//! |---|---|
//! | `<name>.safetensors` for each model entry | the `VarStore`'s variables under their names (`layer.weight`), as `safetensors.torch.load_file` reads them |
//! | `<name>.safetensors` for each optimizer entry | the state tensors as `<parameter>/<state>` (`layer.weight/exp_avg`) |
//! | `meta.json` | the format and version, and every entry: the file of a model or optimizer with its size and CRC-32C, an optimizer's algorithm, hyperparameters, parameter names and parameter groups (each with its settings and parameters), a scheduler's schedule and position, the loss scaler's state, and user values as JSON |
//!
//! So with `State::new().model("model", &mut vs)`, Python reads the weights
//! with `safetensors.torch.load_file("ckpt/model.safetensors")`.
//!
//! # Guarantees
//!
//! - **Atomic.** The directory is written under a temporary name beside the
//!   final one, every file and the directory are flushed to the disk, and
//!   the directory is then swapped with the previous checkpoint in one step
//!   (`renameat2(RENAME_EXCHANGE)` on Linux). A crash or kill at any point
//!   leaves the previous checkpoint complete under the final name; the next
//!   save removes what an interrupted one left.
//! - **Also without an atomic exchange** (NFS, Lustre, other systems): the
//!   previous checkpoint first moves aside to `.<name>.previous`, then the
//!   new one takes the final name. While the final name is missing, loading
//!   it reads the previous checkpoint from `.<name>.previous`; a save
//!   interrupted there leaves it, and the next save puts it back before
//!   anything else. No save deletes the only complete checkpoint.
//! - **A previous checkpoint that cannot be deleted** (a file of another
//!   owner, an immutable file, a read-only directory inside it) does not fail
//!   the save, which succeeded: a warning on stderr says that the checkpoint
//!   was saved and names where the previous one is left
//!   (`.<name>.tmp-<pid>-<n>` beside it). Later saves work, try to delete it
//!   again and warn while they cannot.
//! - **Rank 0 writes**, the other ranks wait at a barrier.
//! - **Checked before loaded.** Loading reads and checks everything first:
//!   the files' sizes and checksums, and every name, shape and dtype against
//!   the state. A missing or unexpected key, a wrong shape or dtype, a
//!   truncated, altered or foreign file is an error naming each problem, and
//!   nothing in the state has changed.
//!   [`Fabric::load_with`](crate::Fabric::load_with) with `strict = false`
//!   loads what matches instead and reports the rest in the [`LoadReport`].
//! - An existing path that is not a fabric checkpoint is never replaced.

mod atomic;
mod format;
mod load;
mod save;
#[cfg(test)]
mod swap_tests;
mod tensors;

use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde::de::DeserializeOwned;
use tch::nn::VarStore;

use crate::error::{Error, Result};
use crate::optim::LrScheduler;
pub use crate::optim::OptimizerSlot;
use crate::precision::GradScaler;

pub use load::LoadReport;
pub(crate) use load::load;
pub(crate) use save::save;

/// What a checkpoint holds, by entry name, as Lightning's `state` dict:
/// models (their `VarStore`), optimizers, learning-rate schedulers, the
/// loss scaler and user values.
///
/// The entries borrow the objects, so a `State` is built where it is used:
///
/// ```
/// use fabric::{Fabric, checkpoint::State, optim::Sgd};
/// use tch::nn;
///
/// # fn main() -> fabric::Result<()> {
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("ckpt");
/// let mut fabric = Fabric::builder().accelerator("cpu").build()?;
/// let mut vs = nn::VarStore::new(tch::Device::Cpu);
/// let net = nn::linear(vs.root() / "layer", 4, 2, Default::default());
/// let opt = Sgd::new(0.1).momentum(0.9).build(&vs)?;
/// let (_model, mut opt) = fabric.setup(&mut vs, net, opt)?;
/// let mut step = 100u64;
///
/// fabric.save(&path, &State::new().model("model", &mut vs).optimizer("optimizer", &mut opt).value("step", &mut step))?;
///
/// step = 0;
/// let report = fabric.load(&path, &mut State::new().model("model", &mut vs).optimizer("optimizer", &mut opt).value("step", &mut step))?;
/// assert_eq!(step, 100);
/// assert!(report.is_complete());
/// # Ok(()) }
/// ```
#[derive(Default)]
pub struct State<'a> {
    entries: Vec<(String, Entry<'a>)>,
}

pub(crate) enum Entry<'a> {
    Model(&'a mut VarStore),
    Optimizer(&'a mut dyn OptimizerSlot),
    Scheduler(&'a mut LrScheduler),
    Scaler(Arc<Mutex<GradScaler>>),
    Value(&'a mut dyn ValueSlot),
}

impl std::fmt::Debug for State<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let entries: Vec<String> = self
            .entries
            .iter()
            .map(|(name, entry)| {
                let kind = match entry {
                    Entry::Model(_) => "model",
                    Entry::Optimizer(_) => "optimizer",
                    Entry::Scheduler(_) => "scheduler",
                    Entry::Scaler(_) => "grad scaler",
                    Entry::Value(_) => "value",
                };
                format!("{name}: {kind}")
            })
            .collect();
        f.debug_struct("State").field("entries", &entries).finish()
    }
}

impl<'a> State<'a> {
    /// An empty state.
    pub fn new() -> Self {
        State::default()
    }

    /// A model: every variable of `vs` (trainable or not), saved to
    /// `<name>.safetensors`.
    pub fn model(mut self, name: impl Into<String>, vs: &'a mut VarStore) -> Self {
        self.entries.push((name.into(), Entry::Model(vs)));
        self
    }

    /// An optimizer of fabric's ([`optim`](crate::optim)), set up
    /// ([`FabricOptimizer`](crate::FabricOptimizer)) or not: its hyperparameters and state tensors.
    /// A `FabricOptimizer` wrapping tch's optimizer is an error at save and
    /// load time, since its state is not reachable.
    pub fn optimizer(
        mut self,
        name: impl Into<String>,
        optimizer: &'a mut dyn OptimizerSlot,
    ) -> Self {
        self.entries
            .push((name.into(), Entry::Optimizer(optimizer)));
        self
    }

    /// A learning-rate scheduler: its schedule's settings and its position
    /// (as PyTorch's `scheduler.state_dict()`). The learning rates it set
    /// are the optimizer's, saved with the optimizer's entry; a lambda
    /// schedule's function is not saved (the scheduler loaded into keeps
    /// its own), and loading a schedule of another kind is an error.
    pub fn scheduler(mut self, name: impl Into<String>, scheduler: &'a mut LrScheduler) -> Self {
        self.entries
            .push((name.into(), Entry::Scheduler(scheduler)));
        self
    }

    /// The loss scaler of `16-mixed`, as [`Fabric::grad_scaler`](crate::Fabric::grad_scaler)
    /// returns it; `None` (no loss scaling) adds nothing.
    pub fn grad_scaler(
        mut self,
        name: impl Into<String>,
        scaler: Option<Arc<Mutex<GradScaler>>>,
    ) -> Self {
        if let Some(scaler) = scaler {
            self.entries.push((name.into(), Entry::Scaler(scaler)));
        }
        self
    }

    /// A value of any type serde can serialise and deserialise (numbers,
    /// strings, structs, maps...), stored as JSON and replaced on load.
    pub fn value<T: Serialize + DeserializeOwned + 'static>(
        mut self,
        name: impl Into<String>,
        value: &'a mut T,
    ) -> Self {
        self.entries.push((name.into(), Entry::Value(value)));
        self
    }

    /// Checks the entry names: unique, non-empty, made of ASCII letters,
    /// digits, `_`, `-` and `.`, and not `meta`.
    fn check_names(&self) -> Result<()> {
        for (i, (name, _)) in self.entries.iter().enumerate() {
            let valid = !name.is_empty()
                && name != "meta"
                && !name.starts_with('.')
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
            if !valid {
                return Err(Error::InvalidArgument(format!(
                    "checkpoint entry name `{name}` is not allowed: use ASCII letters, digits, `_`, `-` and `.` (not first), and not `meta`"
                )));
            }
            if self.entries[..i].iter().any(|(other, _)| other == name) {
                return Err(Error::InvalidArgument(format!(
                    "checkpoint entry `{name}` is given twice"
                )));
            }
        }
        Ok(())
    }
}

/// A user value of a [`State`], type-erased: encoded to JSON, and decoded
/// in two steps so that nothing changes until every entry decoded.
pub(crate) trait ValueSlot {
    fn encode(&self) -> Result<serde_json::Value, serde_json::Error>;
    fn decode(&self, value: serde_json::Value)
    -> Result<Box<dyn std::any::Any>, serde_json::Error>;
    fn assign(&mut self, decoded: Box<dyn std::any::Any>);
}

impl<T: Serialize + DeserializeOwned + 'static> ValueSlot for T {
    fn encode(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::to_value(self)
    }
    fn decode(
        &self,
        value: serde_json::Value,
    ) -> Result<Box<dyn std::any::Any>, serde_json::Error> {
        Ok(Box::new(serde_json::from_value::<T>(value)?))
    }
    fn assign(&mut self, decoded: Box<dyn std::any::Any>) {
        if let Ok(value) = decoded.downcast::<T>() {
            *self = *value;
        }
    }
}
