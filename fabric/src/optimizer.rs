//! [`FabricOptimizer`]: an optimizer set up by fabric.

use tch::Tensor;
use tch::nn::Optimizer;

/// An optimizer returned by [`Fabric::setup`](crate::Fabric::setup) or
/// [`Fabric::setup_optimizer`](crate::Fabric::setup_optimizer).
///
/// It wraps tch's [`Optimizer`] and knows the parameters it updates, which
/// [`Fabric::clip_gradients`](crate::Fabric::clip_gradients) uses.
pub struct FabricOptimizer {
    inner: Optimizer,
}

impl std::fmt::Debug for FabricOptimizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FabricOptimizer")
            .field("parameters", &self.inner.trainable_variables().len())
            .finish()
    }
}

impl FabricOptimizer {
    pub(crate) fn new(inner: Optimizer) -> Self {
        FabricOptimizer { inner }
    }

    /// Sets the gradients of every parameter to zero.
    pub fn zero_grad(&mut self) {
        self.inner.zero_grad();
    }

    /// Updates the parameters from their gradients.
    pub fn step(&mut self) {
        self.inner.step();
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
