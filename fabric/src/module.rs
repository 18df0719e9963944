//! [`FabricModule`]: a model set up by fabric.

use std::cell::Cell;
use std::ops::Deref;

use tch::Tensor;
use tch::nn::ModuleT;

use crate::precision::RunPrecision;

/// A model returned by [`Fabric::setup`](crate::Fabric::setup): calling
/// [`forward`](Self::forward) converts the input to the run's precision and
/// the output back for the user, as Lightning's `_FabricModule` does.
///
/// Like a PyTorch module it has a training mode, on by default, switched
/// with [`train`](Self::train) and [`eval`](Self::eval), and passed to
/// [`ModuleT::forward_t`] (dropout, batch norm). The wrapped model is
/// reachable through `Deref` and [`inner`](Self::inner).
#[derive(Debug)]
pub struct FabricModule<M> {
    module: M,
    precision: RunPrecision,
    training: Cell<bool>,
}

impl<M> FabricModule<M> {
    pub(crate) fn new(module: M, precision: RunPrecision) -> Self {
        FabricModule {
            module,
            precision,
            training: Cell::new(true),
        }
    }

    /// Switches to training mode (the default).
    pub fn train(&self) {
        self.training.set(true);
    }

    /// Switches to evaluation mode.
    pub fn eval(&self) {
        self.training.set(false);
    }

    /// Whether the module is in training mode.
    pub fn is_training(&self) -> bool {
        self.training.get()
    }

    /// The wrapped model.
    pub fn inner(&self) -> &M {
        &self.module
    }

    /// The wrapped model, taken out of the wrapper.
    pub fn into_inner(self) -> M {
        self.module
    }
}

impl<M: ModuleT> FabricModule<M> {
    /// Runs the model on `xs` in the current mode, with the input converted
    /// to the run's precision.
    pub fn forward(&self, xs: &Tensor) -> Tensor {
        self.forward_t(xs, self.training.get())
    }
}

impl<M: ModuleT> ModuleT for FabricModule<M> {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let xs = self.precision.convert_input(xs);
        self.precision
            .convert_output(self.module.forward_t(&xs, train))
    }
}

impl<M> Deref for FabricModule<M> {
    type Target = M;

    fn deref(&self) -> &M {
        &self.module
    }
}
