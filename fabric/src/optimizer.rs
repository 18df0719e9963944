//! [`FabricOptimizer`]: an optimizer set up by fabric.

use std::sync::{Arc, Mutex};

use tch::Tensor;
use tch::nn::Optimizer;

use crate::error::{Error, Result};
use crate::precision::GradScaler;

/// An optimizer returned by [`Fabric::setup`](crate::Fabric::setup) or
/// [`Fabric::setup_optimizer`](crate::Fabric::setup_optimizer).
///
/// It wraps tch's [`Optimizer`] and knows the parameters it updates. Under
/// `16-mixed` its [`step`](Self::step) unscales the gradients, skips the
/// update when they hold an infinity or NaN, and adapts the loss scale.
pub struct FabricOptimizer {
    inner: Optimizer,
    scaler: Option<Arc<Mutex<GradScaler>>>,
    /// Set once the gradients of this iteration are unscaled: whether any
    /// holds an infinity or NaN (a one-element tensor).
    found_inf: Option<Tensor>,
}

impl std::fmt::Debug for FabricOptimizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FabricOptimizer")
            .field("parameters", &self.inner.trainable_variables().len())
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
    pub(crate) fn new(inner: Optimizer, scaler: Option<Arc<Mutex<GradScaler>>>) -> Self {
        FabricOptimizer {
            inner,
            scaler,
            found_inf: None,
        }
    }

    /// Sets the gradients of every parameter to zero.
    pub fn zero_grad(&mut self) {
        self.inner.zero_grad();
        self.found_inf = None;
    }

    /// Updates the parameters from their gradients. Returns `false` when the
    /// loss scaler (`16-mixed`) skipped the update because a gradient held an
    /// infinity or NaN, `true` otherwise.
    pub fn step(&mut self) -> Result<bool> {
        let Some(scaler) = self.scaler.clone() else {
            self.inner.step();
            return Ok(true);
        };
        self.unscale_gradients()?;
        let found_inf = self
            .found_inf
            .take()
            .ok_or_else(|| Error::InvalidArgument("gradients were not unscaled".into()))?;
        let finite = found_inf.f_double_value(&[0])? == 0.0;
        if finite {
            self.inner.step();
        }
        lock(&scaler).update(&found_inf)?;
        Ok(finite)
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
        self.inner.set_lr(lr);
    }

    /// The parameters this optimizer updates.
    pub fn parameters(&self) -> Vec<Tensor> {
        self.inner.trainable_variables()
    }

    /// The wrapped tch optimizer.
    pub fn inner_mut(&mut self) -> &mut Optimizer {
        &mut self.inner
    }
}
