//! Checkpoints: [`Fabric::save`](crate::Fabric::save) and
//! [`Fabric::load`](crate::Fabric::load) of a [`State`] holding models,
//! optimizers, the loss scaler, any serialisable value, data loaders'
//! positions and the random generators; numbered checkpoints
//! ([`Fabric::save_step`](crate::Fabric::save_step)) and the newest of
//! them ([`Fabric::load_latest`](crate::Fabric::load_latest)).
//!
//! # Format
//!
//! A checkpoint is a directory:
//!
//! | file | holds |
//! |---|---|
//! | `<name>.safetensors` for each model entry | the `VarStore`'s variables under their names (`layer.weight`), as `safetensors.torch.load_file` reads them |
//! | `<name>.safetensors` for each optimizer entry | the state tensors as `<parameter>/<state>` (`layer.weight/exp_avg`) |
//! | `meta.json` | the format and version, and every entry: the file of a model or optimizer with its size and CRC-32C, an optimizer's algorithm, hyperparameters, parameter names and parameter groups (each with its settings and parameters), a scheduler's schedule and position, the loss scaler's state, user values as JSON, and for each rank a loader's position and the generators' states (hexadecimal) |
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
//! - **Rank 0 writes**, the other ranks wait at a barrier. Entries of each
//!   rank ([`State::loader`], [`State::rng`]) are gathered to rank 0 first
//!   (an all-gather), so they are written in the same atomic step.
//!
//! # Exact resume
//!
//! With [`State::loader`] and [`State::rng`], a run loaded from a
//! checkpoint saved in the middle of an epoch goes on exactly as if it had
//! not stopped: the loader yields the batches of that epoch not yet taken,
//! in the same order (the order is a function of the seed and epoch, which
//! the checkpoint holds; the batches taken are skipped by index, never
//! made), and every random operation (dropout) draws what it would have.
//! Worker threads hold nothing between batches, so they need no state.
//! Random draws a data set makes itself on worker threads (from libtorch's
//! global generator) are not reproducible with or without a checkpoint.
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
mod numbered;
mod rng;
mod save;
#[cfg(test)]
mod swap_tests;
mod tensors;

use std::cell::{Cell, RefCell};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde::de::DeserializeOwned;
use tch::nn::VarStore;

use crate::data::{DataLoader, Dataset, FabricDataLoader, LoaderPosition};
use crate::device::ToDevice;
use crate::error::{Error, Result};
use crate::optim::LrScheduler;
pub use crate::optim::OptimizerSlot;
use crate::precision::GradScaler;

pub use load::LoadReport;
pub(crate) use load::load;
pub use numbered::Resumed;
pub(crate) use numbered::{latest_candidates, prune, step_path};
pub(crate) use rng::RngState;
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
    /// This process's (rank, world size), set by `Fabric::load`; (0, 1)
    /// when unset.
    rank: Cell<Option<(usize, usize)>>,
    /// Every rank's per-rank entries (loaders, generators), gathered by
    /// `Fabric::save` for rank 0 to write; this process's alone when unset.
    gathered: RefCell<Option<Vec<serde_json::Value>>>,
}

pub(crate) enum Entry<'a> {
    Model(&'a mut VarStore),
    Optimizer(&'a mut dyn OptimizerSlot),
    Scheduler(&'a mut LrScheduler),
    Scaler(Arc<Mutex<GradScaler>>),
    Value(&'a mut dyn ValueSlot),
    Loader(&'a mut dyn LoaderSlot),
    Rng,
}

impl Entry<'_> {
    fn kind(&self) -> &'static str {
        match self {
            Entry::Model(_) => "model",
            Entry::Optimizer(_) => "optimizer",
            Entry::Scheduler(_) => "scheduler",
            Entry::Scaler(_) => "grad scaler",
            Entry::Value(_) => "value",
            Entry::Loader(_) => "loader",
            Entry::Rng => "random generators",
        }
    }

    /// Whether each rank has its own (a loader's position, the generators).
    fn per_rank(&self) -> bool {
        matches!(self, Entry::Loader(_) | Entry::Rng)
    }

    /// This process's part of a per-rank entry.
    fn local(&self, name: &str) -> Result<Option<serde_json::Value>> {
        let value = match self {
            Entry::Loader(slot) => serde_json::to_value(slot.position()),
            Entry::Rng => serde_json::to_value(RngState::capture()?),
            _ => return Ok(None),
        };
        value
            .map(Some)
            .map_err(|e| Error::InvalidArgument(format!("checkpoint entry `{name}`: {e}")))
    }
}

impl std::fmt::Debug for State<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let entries: Vec<String> = self
            .entries
            .iter()
            .map(|(name, entry)| format!("{name}: {}", entry.kind()))
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

    /// A data loader's position ([`DataLoader`] or [`FabricDataLoader`]): its
    /// epoch, the batches of it the loop took, and its seed, for each rank.
    /// Loaded, the next `iter()` yields the rest of that epoch in the same
    /// order, without making the batches taken before (see
    /// [`DataLoader::restore_position`]). Loading checks that the loader
    /// has the same data set size, batch size, batches per epoch, order and
    /// world size.
    ///
    /// Save after the optimizer step of a batch: the position counts the
    /// batches the loop received, and a resumed run starts after them.
    pub fn loader(mut self, name: impl Into<String>, loader: &'a mut dyn LoaderSlot) -> Self {
        self.entries.push((name.into(), Entry::Loader(loader)));
        self
    }

    /// The states of libtorch's random generators, as the entry `rng`: the
    /// CPU generator and, where CUDA is available, each device's, of every
    /// rank (as Accelerate's `save_state`; Lightning's `save` does not hold
    /// them). Loaded, dropout and every other random operation draw what
    /// they would have drawn had the run not stopped. A checkpoint saved by
    /// a world of another size, or with more CUDA devices than this process
    /// sees, is an error.
    pub fn rng(mut self) -> Self {
        self.entries.push(("rng".into(), Entry::Rng));
        self
    }

    /// Whether an entry is per rank (a loader, the generators).
    pub(crate) fn has_per_rank(&self) -> bool {
        self.entries.iter().any(|(_, e)| e.per_rank())
    }

    /// This process's per-rank entries, by name.
    pub(crate) fn local_parts(&self) -> Result<serde_json::Value> {
        let mut parts = serde_json::Map::new();
        for (name, entry) in &self.entries {
            if let Some(value) = entry.local(name)? {
                parts.insert(name.clone(), value);
            }
        }
        Ok(serde_json::Value::Object(parts))
    }

    /// Every rank's per-rank entries, by rank, for the next save.
    pub(crate) fn set_gathered(&self, ranks: Option<Vec<serde_json::Value>>) {
        *self.gathered.borrow_mut() = ranks;
    }

    /// This process's rank and the world size, for the next load.
    pub(crate) fn set_rank(&self, rank: usize, world: usize) {
        self.rank.set(Some((rank, world.max(1))));
    }

    fn rank(&self) -> (usize, usize) {
        self.rank.get().unwrap_or((0, 1))
    }

    /// Every rank's part of the per-rank entry `name`, by rank: those
    /// gathered, else this process's.
    fn rank_values(&self, name: &str, entry: &Entry<'_>) -> Result<Vec<serde_json::Value>> {
        if let Some(ranks) = &*self.gathered.borrow() {
            return ranks
                .iter()
                .enumerate()
                .map(|(rank, parts)| {
                    parts.get(name).cloned().ok_or_else(|| {
                        Error::Distributed(format!(
                            "checkpoint entry `{name}`: rank {rank} did not send its part"
                        ))
                    })
                })
                .collect();
        }
        Ok(entry.local(name)?.into_iter().collect())
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

/// A data loader whose position a [`State`] can hold
/// ([`State::loader`]): fabric's [`DataLoader`], or a [`FabricDataLoader`]
/// wrapping one.
pub trait LoaderSlot {
    /// Where the loader is.
    fn position(&self) -> LoaderPosition;
    /// Why `saved` cannot continue in this loader, if it cannot.
    fn check_position(&self, saved: &LoaderPosition) -> Option<String>;
    /// Continues from `saved`.
    fn restore_position(&mut self, saved: &LoaderPosition) -> Result<()>;
}

impl<D: Dataset> LoaderSlot for DataLoader<D> {
    fn position(&self) -> LoaderPosition {
        DataLoader::position(self)
    }
    fn check_position(&self, saved: &LoaderPosition) -> Option<String> {
        DataLoader::check_position(self, saved)
    }
    fn restore_position(&mut self, saved: &LoaderPosition) -> Result<()> {
        DataLoader::restore_position(self, saved)
    }
}

impl<D: Dataset> LoaderSlot for FabricDataLoader<D>
where
    D::Batch: ToDevice,
{
    fn position(&self) -> LoaderPosition {
        self.loader().position()
    }
    fn check_position(&self, saved: &LoaderPosition) -> Option<String> {
        self.loader().check_position(saved)
    }
    fn restore_position(&mut self, saved: &LoaderPosition) -> Result<()> {
        self.loader_mut().restore_position(saved)
    }
}
