//! Reporting: loggers, callbacks, progress and checkpoints.

use std::any::Any;
use std::marker::PhantomData;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use tch::Tensor;

use super::Fabric;
use crate::callbacks::hooks::Hook;
use crate::callbacks::{Callback, Outcome};
use crate::checkpoint::{self, LoadReport, Resumed, State};
use crate::collectives::ReduceOp;
use crate::error::{Error, Result};
use crate::loggers::{Hyperparams, Logger, LoggerError, Metric};
use crate::progress::Progress;

impl Fabric {
    /// Logs one metric to every logger, from global rank 0 only.
    pub fn log(&mut self, name: &str, value: impl Metric) -> Result<()> {
        self.log_dict([(name, value)], None)
    }

    /// Logs several metrics taken at `step` to every logger, from global
    /// rank 0 only.
    pub fn log_dict<'n, V: Metric>(
        &mut self,
        metrics: impl IntoIterator<Item = (&'n str, V)>,
        step: Option<u64>,
    ) -> Result<()> {
        if !self.is_global_zero() {
            return Ok(());
        }
        let metrics = metrics
            .into_iter()
            .map(|(name, value)| Ok((name, value.to_f64()?)))
            .collect::<Result<Vec<_>>>()?;
        self.latest_metrics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .update(&metrics);
        self.loggers
            .each("log_metrics", |logger| logger.log_metrics(&metrics, step))
    }

    /// Fires hook `H` on every registered callback that handles it, in
    /// registration order, as Lightning's `fabric.call(...)` but typed: a
    /// misspelt hook or a wrong argument does not compile, and callbacks
    /// without the hook are skipped by type.
    ///
    /// The handlers' outcomes are combined and returned: metrics they hand
    /// back are logged, and a stop request is remembered for
    /// [`should_stop`](Self::should_stop). The first handler error ends the
    /// dispatch and is returned.
    ///
    /// ```
    /// use fabric::{Fabric, hooks::{Metrics, OnTrainEpochEnd}};
    ///
    /// let mut fabric = Fabric::builder().accelerator("cpu").build().unwrap();
    /// let metrics = Metrics::from([("loss", 0.5)]);
    /// let outcome = fabric.call::<OnTrainEpochEnd>((3, &metrics)).unwrap();
    /// assert!(!outcome.should_stop());
    /// ```
    pub fn call<H: Hook>(&mut self, args: H::Args<'_>) -> Result<Outcome> {
        let outcome = self.callbacks.call::<H>(args)?;
        if outcome.should_stop() {
            self.stop_requested = true;
        }
        if !outcome.metrics().is_empty() {
            let metrics: Vec<(&str, f64)> = outcome
                .metrics()
                .iter()
                .map(|(k, v)| (k.as_str(), *v))
                .collect();
            self.log_dict(metrics, None)?;
        }
        Ok(outcome)
    }

    /// Whether a callback asked to stop training, agreed across ranks: true
    /// on every rank as soon as one rank's callbacks asked. With several
    /// processes this is a collective: call it at the same point on every
    /// rank (typically at the end of an epoch).
    pub fn should_stop(&self) -> Result<bool> {
        if self.world_size() == 1 {
            return Ok(self.stop_requested);
        }
        let flag = Tensor::from_slice(&[i64::from(self.stop_requested)]);
        Ok(self
            .strategy
            .all_reduce(&flag, ReduceOp::Max)?
            .f_int64_value(&[0])?
            != 0)
    }

    /// Logs the run's hyperparameters (any value serde serialises to a map:
    /// a struct, a `HashMap`, `serde_json::json!({...})`) to every logger,
    /// from global rank 0 only, as Lightning's `logger.log_hyperparams`.
    pub fn log_hyperparams<T: serde::Serialize + ?Sized>(&mut self, params: &T) -> Result<()> {
        if !self.is_global_zero() || self.loggers.is_empty() {
            return Ok(());
        }
        let params: Hyperparams = match serde_json::to_value(params) {
            Ok(serde_json::Value::Object(map)) => map,
            Ok(other) => {
                return Err(Error::InvalidArgument(format!(
                    "hyperparameters must serialise to a map of names to values, not {other}"
                )));
            }
            Err(e) => {
                return Err(Error::InvalidArgument(format!(
                    "hyperparameters cannot be serialised: {e}"
                )));
            }
        };
        self.loggers
            .each("log_hyperparams", |logger| logger.log_hyperparams(&params))
    }

    /// The first registered logger of type `T`, as Lightning's
    /// `fabric.logger` (for its `log_dir`, say). It borrows the `Fabric`
    /// mutably: the loggers are shared with the failure handling, which
    /// finalises them when the launcher ends this rank, so no other call
    /// may run while it is held.
    pub fn logger<T: Logger>(&mut self) -> Option<LoggerRef<'_, T>> {
        self.loggers.get::<T>()
    }

    /// The first registered logger of type `T`, mutably.
    pub fn logger_mut<T: Logger>(&mut self) -> Option<LoggerMut<'_, T>> {
        self.loggers.get_mut::<T>()
    }

    /// A progress bar over `total` steps showing steps per second and the
    /// latest metrics logged with [`log`](Self::log)/[`log_dict`](Self::log_dict).
    /// It draws on global rank 0 only, when standard output and standard
    /// error are terminals, and unless
    /// [`progress_bar(false)`](crate::FabricBuilder::progress_bar) was set;
    /// otherwise it is hidden.
    pub fn progress(&self, total: u64) -> Progress {
        Progress::new(
            total,
            self.progress_bar && self.is_global_zero(),
            Arc::clone(&self.latest_metrics),
        )
    }

    // ---- checkpoints ---------------------------------------------------

    /// Saves `state` to the checkpoint directory `path`, as Lightning's
    /// `fabric.save(path, state)`, through the strategy: global rank 0
    /// writes, atomically (a crash leaves the previous checkpoint intact),
    /// and every rank waits until it is written. The format is described in
    /// [`checkpoint`](crate::checkpoint).
    ///
    /// Entries of each rank ([`State::loader`], [`State::rng`]) are
    /// gathered to rank 0 first, which writes them all; so every rank must
    /// call `save`, as for any collective.
    ///
    /// Fires [`OnSaveCheckpoint`](crate::hooks::OnSaveCheckpoint) first.
    pub fn save(&mut self, path: impl AsRef<Path>, state: &State<'_>) -> Result<()> {
        self.call::<crate::hooks::OnSaveCheckpoint>((path.as_ref(),))?;
        if state.has_per_rank() {
            let ranks = self.gather_per_rank(state)?;
            state.set_gathered(Some(ranks));
        }
        let saved = self.strategy.save_checkpoint(path.as_ref(), state);
        state.set_gathered(None);
        saved
    }

    /// Every rank's per-rank entries of `state`, by rank, on every rank:
    /// their JSON gathered as bytes (lengths first, then padded to the
    /// longest). A rank that cannot encode its part sends length -1, so
    /// that every rank fails instead of waiting.
    fn gather_per_rank(&self, state: &State<'_>) -> Result<Vec<serde_json::Value>> {
        let local = state.local_parts();
        if self.world_size() <= 1 {
            return Ok(vec![local?]);
        }
        let bytes = match &local {
            Ok(value) => Some(serde_json::to_vec(value).map_err(|e| {
                Error::InvalidArgument(format!("checkpoint per-rank entries: {e}"))
            })?),
            Err(_) => None,
        };
        let len = bytes.as_ref().map_or(-1, |b| b.len() as i64);
        let lens = self.strategy.all_gather(&Tensor::from_slice(&[len]))?;
        let lens = Vec::<i64>::try_from(lens.reshape([-1]))?;
        let local = local?;
        if let Some(rank) = lens.iter().position(|&l| l < 0) {
            return Err(Error::Distributed(format!(
                "saving a checkpoint: rank {rank} could not capture its loader or generator state (its error is in its output)"
            )));
        }
        let longest = lens.iter().copied().max().unwrap_or(0).max(1) as usize;
        let mut padded = bytes.unwrap_or_default();
        padded.resize(longest, 0);
        let all = self.strategy.all_gather(&Tensor::from_slice(&padded))?;
        let all = Vec::<u8>::try_from(all.reshape([-1]))?;
        let ranks = lens
            .iter()
            .enumerate()
            .map(|(rank, &len)| {
                let part = &all[rank * longest..rank * longest + len as usize];
                serde_json::from_slice(part).map_err(|e| {
                    Error::Distributed(format!(
                        "saving a checkpoint: rank {rank}'s loader and generator state arrived damaged: {e}"
                    ))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        debug_assert_eq!(ranks[self.global_rank()], local);
        Ok(ranks)
    }

    /// Saves `state` as step `step`'s checkpoint in `dir`:
    /// `dir/step-000000120` for step 120 (see [`save`](Self::save)), and
    /// returns its path. [`load_latest`](Self::load_latest) finds the newest.
    pub fn save_step(
        &mut self,
        dir: impl AsRef<Path>,
        step: u64,
        state: &State<'_>,
    ) -> Result<std::path::PathBuf> {
        let path = checkpoint::step_path(dir.as_ref(), step);
        self.save(&path, state)?;
        Ok(path)
    }

    /// [`save_step`](Self::save_step), then deletes the numbered
    /// checkpoints of `dir` but the `keep_last` newest (at least 1) up to
    /// `step`, on rank 0: the one just saved is always kept, and higher
    /// numbers (a damaged newer checkpoint that `load_latest` skipped) are
    /// left alone. The new checkpoint is complete before any is deleted,
    /// and each is renamed away before it is deleted, so a crash never
    /// leaves a half-deleted one under a checkpoint's name; what
    /// interrupted saves left in `dir` is removed. A failure to delete is a
    /// warning, not an error: the save succeeded.
    pub fn save_step_keep_last(
        &mut self,
        dir: impl AsRef<Path>,
        step: u64,
        keep_last: usize,
        state: &State<'_>,
    ) -> Result<std::path::PathBuf> {
        if keep_last == 0 {
            return Err(Error::InvalidArgument(
                "keep_last must be at least 1: the checkpoint just saved is kept".into(),
            ));
        }
        let path = self.save_step(&dir, step, state)?;
        if self.is_global_zero() {
            // Warnings only: the save succeeded on every rank, and an error
            // here on rank 0 alone would part the ranks.
            checkpoint::prune(dir.as_ref(), keep_last, step);
        }
        Ok(path)
    }

    /// Loads the newest complete numbered checkpoint of `dir` (written by
    /// [`save_step`](Self::save_step)) into `state`, and says which it was;
    /// `None`, with `state` unchanged, when `dir` has none (or does not
    /// exist): a fresh start. So a training function has one code path
    /// for starting and restarting:
    ///
    /// ```
    /// use fabric::{Fabric, checkpoint::State, optim::AdamW};
    /// use tch::nn;
    ///
    /// # fn main() -> fabric::Result<()> {
    /// let dir = tempfile::tempdir().unwrap();
    /// let mut fabric = Fabric::builder().accelerator("cpu").build()?;
    /// let mut vs = nn::VarStore::new(tch::Device::Cpu);
    /// let net = nn::linear(vs.root() / "layer", 4, 2, Default::default());
    /// let opt = AdamW::new(1e-3).build(&vs)?;
    /// let (_model, mut opt) = fabric.setup(&mut vs, net, opt)?;
    /// let mut step = 0u64;
    /// let resumed = fabric.load_latest(dir.path(), &mut State::new().model("model", &mut vs).optimizer("opt", &mut opt).value("step", &mut step).rng())?;
    /// assert!(resumed.is_none(), "a fresh start");
    /// while step < 3 {
    ///     // ... train one step ...
    ///     step += 1;
    ///     fabric.save_step_keep_last(dir.path(), step, 2, &State::new().model("model", &mut vs).optimizer("opt", &mut opt).value("step", &mut step).rng())?;
    /// }
    /// step = 0;
    /// let resumed = fabric.load_latest(dir.path(), &mut State::new().model("model", &mut vs).optimizer("opt", &mut opt).value("step", &mut step).rng())?;
    /// assert_eq!(resumed.map(|r| r.step), Some(3));
    /// assert_eq!(step, 3);
    /// # Ok(()) }
    /// ```
    ///
    /// A newest checkpoint that is incomplete or damaged (a crash while it
    /// was written by other means than `save`, a truncated file, a failed
    /// disk) is skipped with a warning on stderr, for the one before it.
    /// A checkpoint that does not fit the state (a missing entry, another
    /// shape, a loader of another length, another world size) is an error,
    /// not skipped: the program changed, and an older checkpoint would not
    /// fit either. Under several processes, every rank loads the same step
    /// (rank 0's list decides), and skips it if any rank could not read it;
    /// if no step is readable by every rank and some rank loaded one of
    /// them, the ranks' states differ and this is an error, not a fresh
    /// start.
    pub fn load_latest(
        &mut self,
        dir: impl AsRef<Path>,
        state: &mut State<'_>,
    ) -> Result<Option<Resumed>> {
        let dir = dir.as_ref();
        let local = checkpoint::latest_candidates(dir);
        // Rank 0's steps, newest first; -1 if it cannot list `dir`.
        let steps: Vec<i64> = match &local {
            Ok(found) => found.iter().map(|(s, _)| *s as i64).collect(),
            Err(_) => vec![-1],
        };
        let steps = if self.world_size() > 1 {
            let count = Tensor::from_slice(&[steps.len() as i64]);
            let count = self.strategy.broadcast(&count, 0)?.f_int64_value(&[0])? as usize;
            if count == 0 {
                Vec::new()
            } else {
                let mut ours = steps.clone();
                ours.resize(count, 0);
                let theirs = self.strategy.broadcast(&Tensor::from_slice(&ours), 0)?;
                Vec::<i64>::try_from(theirs.reshape([-1]))?
            }
        } else {
            steps
        };
        let local = match local {
            Ok(found) => found,
            // Rank 0's list decides; a rank that cannot list `dir` tries
            // the same steps by their names (and, if it cannot read them,
            // makes every rank skip them) rather than leave the others
            // waiting in the collectives below.
            Err(error) if self.global_rank() != 0 => {
                eprintln!("fabric: warning: {error}; trying rank 0's checkpoints by name");
                Vec::new()
            }
            Err(error) => return Err(error),
        };
        if steps.first() == Some(&-1) {
            return Err(Error::Distributed(format!(
                "rank 0 cannot list {} (its error is in its output)",
                dir.display()
            )));
        }
        // Whether this rank loaded a checkpoint that another rank could not
        // read: its state has changed, so it cannot start afresh.
        let mut changed = false;
        for step in steps {
            let step = step as u64;
            let path = local
                .iter()
                .find(|(s, _)| *s == step)
                .map_or_else(|| checkpoint::step_path(dir, step), |(_, p)| p.clone());
            let loaded = self.load(&path, state);
            // 0: loaded, 1: damaged or missing here (skip), 2: does not fit.
            let outcome: i64 = match &loaded {
                Ok(_) => 0,
                Err(Error::Checkpoint { .. }) => 1,
                Err(_) => 2,
            };
            let worst = if self.world_size() > 1 {
                self.strategy
                    .all_reduce(&Tensor::from_slice(&[outcome]), ReduceOp::Max)?
                    .int64_value(&[0])
            } else {
                outcome
            };
            match (loaded, worst) {
                (Ok(report), 0) => return Ok(Some(Resumed { step, path, report })),
                (Err(error), 2) if outcome == 2 => return Err(error),
                (_, 2) => {
                    return Err(Error::Distributed(format!(
                        "loading {}: another rank's state does not fit it (its error is in its output)",
                        path.display()
                    )));
                }
                (Err(error), _) => eprintln!(
                    "fabric: warning: skipping the checkpoint {}: {error}; trying the one before",
                    path.display()
                ),
                (Ok(_), _) => {
                    changed = true;
                    eprintln!(
                        "fabric: warning: skipping the checkpoint {}: another rank could not read it; trying the one before",
                        path.display()
                    );
                }
            }
        }
        // No checkpoint every rank could read. A fresh start only if no rank
        // loaded one of them, or the ranks would start from different states.
        let changed = if self.world_size() > 1 {
            self.strategy
                .all_reduce(&Tensor::from_slice(&[i64::from(changed)]), ReduceOp::Max)?
                .int64_value(&[0])
                != 0
        } else {
            changed
        };
        if changed {
            return Err(Error::Distributed(format!(
                "no checkpoint of {} could be read by every rank, and some ranks loaded one the others could not: the ranks' states differ; make the checkpoints readable by every rank (a directory every node sees) or remove them to start afresh",
                dir.display()
            )));
        }
        Ok(None)
    }

    /// Loads the checkpoint at `path` into `state`, strictly: every entry,
    /// key, shape and dtype of the state must be in the checkpoint and fit,
    /// or nothing changes and the error lists each problem. Values of the
    /// checkpoint that the state does not name come back in
    /// [`LoadReport::remainder`].
    pub fn load(&mut self, path: impl AsRef<Path>, state: &mut State<'_>) -> Result<LoadReport> {
        self.load_with(path, state, true)
    }

    /// [`load`](Self::load) with Lightning's `strict`: with `strict = false`,
    /// what fits is loaded and the rest is reported in the [`LoadReport`]
    /// (damaged or foreign files are errors in both modes). Fires
    /// [`OnLoadCheckpoint`](crate::hooks::OnLoadCheckpoint) once loaded.
    pub fn load_with(
        &mut self,
        path: impl AsRef<Path>,
        state: &mut State<'_>,
        strict: bool,
    ) -> Result<LoadReport> {
        state.set_rank(self.global_rank(), self.world_size());
        let report = self
            .strategy
            .load_checkpoint(path.as_ref(), state, strict)?;
        self.call::<crate::hooks::OnLoadCheckpoint>((path.as_ref(),))?;
        Ok(report)
    }

    /// The first registered callback of type `T`.
    pub fn callback<T: Callback>(&self) -> Option<&T> {
        self.callbacks.get::<T>()
    }

    /// The first registered callback of type `T`, mutably.
    pub fn callback_mut<T: Callback>(&mut self) -> Option<&mut T> {
        self.callbacks.get_mut::<T>()
    }
}

type Loggers = Vec<Box<dyn Logger>>;

/// The loggers of a `Fabric`, shared with the failure handling, which
/// finalises them when the launcher ends this rank (unless they were
/// finalised already: `finalize` runs once).
pub(crate) struct SharedLoggers(Arc<Mutex<(Loggers, bool)>>);

fn lock(loggers: &Mutex<(Loggers, bool)>) -> MutexGuard<'_, (Loggers, bool)> {
    loggers.lock().unwrap_or_else(|p| p.into_inner())
}

impl SharedLoggers {
    pub(crate) fn new(loggers: Loggers) -> Self {
        SharedLoggers(Arc::new(Mutex::new((loggers, false))))
    }

    fn is_empty(&self) -> bool {
        lock(&self.0).0.is_empty()
    }

    /// Calls `f` on every logger; the first error, naming the logger and
    /// `what` it was doing.
    fn each(
        &self,
        what: &str,
        mut f: impl FnMut(&mut dyn Logger) -> std::result::Result<(), LoggerError>,
    ) -> Result<()> {
        for logger in lock(&self.0).0.iter_mut() {
            f(&mut **logger).map_err(|source| Error::Plugin {
                what: format!("logger `{}`: {what}", logger.name()),
                source,
            })?;
        }
        Ok(())
    }

    /// Finalises every logger, once; the first error.
    pub(crate) fn finalize(&self, success: bool) -> Result<()> {
        finalize_all(&mut lock(&self.0), success)
    }

    /// What the failure handling runs: the loggers finalised as failed,
    /// unless the `Fabric` is gone or finalised them already.
    pub(crate) fn failure_flush(&self) -> impl Fn() + Send + Sync + 'static {
        let loggers = Arc::downgrade(&self.0);
        move || {
            if let Some(loggers) = loggers.upgrade()
                && let Err(error) = finalize_all(&mut lock(&loggers), false)
            {
                eprintln!("fabric: {error}");
            }
        }
    }

    fn position<T: Logger>(loggers: &Loggers) -> Option<usize> {
        loggers.iter().position(|l| (&**l as &dyn Any).is::<T>())
    }

    fn get<T: Logger>(&mut self) -> Option<LoggerRef<'_, T>> {
        let guard = lock(&self.0);
        let index = Self::position::<T>(&guard.0)?;
        Some(LoggerRef {
            guard,
            index,
            kind: PhantomData,
        })
    }

    fn get_mut<T: Logger>(&mut self) -> Option<LoggerMut<'_, T>> {
        let guard = lock(&self.0);
        let index = Self::position::<T>(&guard.0)?;
        Some(LoggerMut {
            guard,
            index,
            kind: PhantomData,
        })
    }
}

fn finalize_all(loggers: &mut (Loggers, bool), success: bool) -> Result<()> {
    if std::mem::replace(&mut loggers.1, true) {
        return Ok(());
    }
    let mut first_error = None;
    for logger in loggers.0.iter_mut() {
        if let Err(source) = logger.finalize(success) {
            first_error.get_or_insert(Error::Plugin {
                what: format!("logger `{}`: finalize", logger.name()),
                source,
            });
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// A registered logger of type `T`, from [`Fabric::logger`]; it derefs to
/// the logger.
pub struct LoggerRef<'a, T> {
    guard: MutexGuard<'a, (Loggers, bool)>,
    index: usize,
    kind: PhantomData<&'a T>,
}

/// A registered logger of type `T`, mutably, from [`Fabric::logger_mut`].
pub struct LoggerMut<'a, T> {
    guard: MutexGuard<'a, (Loggers, bool)>,
    index: usize,
    kind: PhantomData<&'a mut T>,
}

impl<T: Logger> std::ops::Deref for LoggerRef<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        (&*self.guard.0[self.index] as &dyn Any)
            .downcast_ref()
            .expect("the logger's type was checked when this reference was made")
    }
}

impl<T: Logger> std::ops::Deref for LoggerMut<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        (&*self.guard.0[self.index] as &dyn Any)
            .downcast_ref()
            .expect("the logger's type was checked when this reference was made")
    }
}

impl<T: Logger> std::ops::DerefMut for LoggerMut<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        (&mut *self.guard.0[self.index] as &mut dyn Any)
            .downcast_mut()
            .expect("the logger's type was checked when this reference was made")
    }
}
