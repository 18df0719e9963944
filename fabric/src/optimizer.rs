//! [`FabricOptimizer`]: an optimizer set up by fabric.

use std::sync::{Arc, Mutex};

use tch::Tensor;
use tch::nn::Optimizer;

use crate::error::{Error, Result};
use crate::optim;
use crate::precision::GradScaler;

/// What [`Fabric::setup`](crate::Fabric::setup) and
/// [`Fabric::setup_optimizer`](crate::Fabric::setup_optimizer) accept: tch's
/// optimizer, or one of fabric's own ([`optim`]), whose state checkpoints
/// save. Both convert into it with `From`.
pub enum AnyOptimizer {
    /// tch's `nn::Optimizer` (its state is not reachable, so it cannot be
    /// checkpointed).
    Tch(Optimizer),
    /// fabric's optimizer, with reachable state.
    Optim(optim::Optimizer),
}

impl From<Optimizer> for AnyOptimizer {
    fn from(optimizer: Optimizer) -> Self {
        AnyOptimizer::Tch(optimizer)
    }
}

impl From<optim::Optimizer> for AnyOptimizer {
    fn from(optimizer: optim::Optimizer) -> Self {
        AnyOptimizer::Optim(optimizer)
    }
}

impl std::fmt::Debug for AnyOptimizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AnyOptimizer::Tch(o) => f
                .debug_struct("tch::nn::Optimizer")
                .field("parameters", &o.trainable_variables().len())
                .finish(),
            AnyOptimizer::Optim(o) => o.fmt(f),
        }
    }
}

/// An optimizer returned by [`Fabric::setup`](crate::Fabric::setup) or
/// [`Fabric::setup_optimizer`](crate::Fabric::setup_optimizer).
///
/// It wraps tch's [`Optimizer`] or fabric's own [`optim::Optimizer`] and
/// knows the parameters it updates. Under `16-mixed` its
/// [`step`](Self::step) unscales the gradients, skips the update when they
/// hold an infinity or NaN, and adapts the loss scale.
pub struct FabricOptimizer {
    inner: AnyOptimizer,
    scaler: Option<Arc<Mutex<GradScaler>>>,
    /// Set once the gradients of this iteration are unscaled: whether any
    /// holds an infinity or NaN (a one-element tensor).
    found_inf: Option<Tensor>,
    /// Counts this run's optimizer steps (`dp` copies the weights to its
    /// replicas after each).
    steps: Option<Arc<std::sync::atomic::AtomicU64>>,
}

impl std::fmt::Debug for FabricOptimizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FabricOptimizer")
            .field("optimizer", &self.inner)
            .field("loss_scaling", &self.scaler.is_some())
            .finish()
    }
}

fn lock(scaler: &Mutex<GradScaler>) -> std::sync::MutexGuard<'_, GradScaler> {
    scaler
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl FabricOptimizer {
    pub(crate) fn new(inner: AnyOptimizer, scaler: Option<Arc<Mutex<GradScaler>>>) -> Self {
        FabricOptimizer {
            inner,
            scaler,
            found_inf: None,
            steps: None,
        }
    }

    /// Counts each step in `steps`.
    pub(crate) fn counting_steps(mut self, steps: Arc<std::sync::atomic::AtomicU64>) -> Self {
        self.steps = Some(steps);
        self
    }

    /// Sets the gradients of every parameter to zero.
    pub fn zero_grad(&mut self) {
        match &mut self.inner {
            AnyOptimizer::Tch(o) => o.zero_grad(),
            AnyOptimizer::Optim(o) => o.zero_grad(),
        }
        self.found_inf = None;
    }

    /// Updates the parameters from their gradients. Returns `false` when the
    /// loss scaler (`16-mixed`) skipped the update because a gradient held an
    /// infinity or NaN, `true` otherwise.
    pub fn step(&mut self) -> Result<bool> {
        let Some(scaler) = self.scaler.clone() else {
            self.inner_step()?;
            return Ok(true);
        };
        self.unscale_gradients()?;
        let found_inf = self
            .found_inf
            .take()
            .ok_or_else(|| Error::InvalidArgument("gradients were not unscaled".into()))?;
        let finite = found_inf.f_double_value(&[0])? == 0.0;
        if finite {
            self.inner_step()?;
        }
        lock(&scaler).update(&found_inf)?;
        Ok(finite)
    }

    fn inner_step(&mut self) -> Result<()> {
        let result = match &mut self.inner {
            AnyOptimizer::Tch(o) => {
                o.step();
                Ok(())
            }
            AnyOptimizer::Optim(o) => o.step(),
        };
        if let Some(steps) = &self.steps {
            steps.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        result
    }

    /// Divides this iteration's gradients by the loss scale, once (before
    /// clipping, or in `step`). Does nothing without loss scaling.
    pub(crate) fn unscale_gradients(&mut self) -> Result<()> {
        let Some(scaler) = &self.scaler else {
            return Ok(());
        };
        if self.found_inf.is_none() {
            let grads: Vec<Tensor> = self
                .parameters()
                .iter()
                .map(Tensor::grad)
                .filter(Tensor::defined)
                .collect();
            self.found_inf = Some(lock(scaler).unscale(&grads)?);
        }
        Ok(())
    }

    /// Sets the learning rate of every parameter group.
    pub fn set_lr(&mut self, lr: f64) {
        match &mut self.inner {
            AnyOptimizer::Tch(o) => o.set_lr(lr),
            AnyOptimizer::Optim(o) => o.set_lr(lr),
        }
    }

    /// The parameters this optimizer updates.
    pub fn parameters(&self) -> Vec<Tensor> {
        match &self.inner {
            AnyOptimizer::Tch(o) => o.trainable_variables(),
            AnyOptimizer::Optim(o) => o.parameters().iter().map(Tensor::shallow_clone).collect(),
        }
    }

    /// The wrapped tch optimizer, `None` when this wraps one of fabric's.
    pub fn inner_mut(&mut self) -> Option<&mut Optimizer> {
        match &mut self.inner {
            AnyOptimizer::Tch(o) => Some(o),
            AnyOptimizer::Optim(_) => None,
        }
    }

    /// The wrapped fabric optimizer (its algorithm, learning rate and state),
    /// `None` when this wraps tch's.
    pub fn optimizer(&self) -> Option<&optim::Optimizer> {
        match &self.inner {
            AnyOptimizer::Optim(o) => Some(o),
            AnyOptimizer::Tch(_) => None,
        }
    }

    /// The wrapped fabric optimizer, mutably.
    pub fn optimizer_mut(&mut self) -> Option<&mut optim::Optimizer> {
        match &mut self.inner {
            AnyOptimizer::Optim(o) => Some(o),
            AnyOptimizer::Tch(_) => None,
        }
    }
}

fn not_stateful() -> Error {
    Error::InvalidArgument(
        "this optimizer is tch's `nn::Optimizer`, whose state cannot be read: build it with `fabric::optim` (Sgd, Adam, AdamW) to checkpoint it".into(),
    )
}

impl optim::OptimizerSlot for FabricOptimizer {
    fn stateful(&self) -> Result<&optim::Optimizer> {
        self.optimizer().ok_or_else(not_stateful)
    }
    fn stateful_mut(&mut self) -> Result<&mut optim::Optimizer> {
        self.optimizer_mut().ok_or_else(not_stateful)
    }
}
