//! [`FabricModule`]: a model set up by fabric.

use std::cell::Cell;
use std::ops::Deref;
use std::sync::Arc;

use tch::nn::ModuleT;
use tch::{Device, Tensor};

use crate::precision::{AutocastGuard, PrecisionPlugin};

/// A model returned by [`Fabric::setup`](crate::Fabric::setup): calling
/// [`forward`](Self::forward) converts the input to the run's precision,
/// runs the model under the precision's autocast, and converts the output
/// back for the user, as Lightning's `_FabricModule` does.
///
/// Like a PyTorch module it has a training mode, on by default, switched
/// with [`train`](Self::train) and [`eval`](Self::eval), and passed to
/// [`ModuleT::forward_t`] (dropout, batch norm). The wrapped model is
/// reachable through `Deref` and [`inner`](Self::inner).
pub struct FabricModule<M> {
    module: M,
    precision: Arc<dyn PrecisionPlugin>,
    device: Device,
    training: Cell<bool>,
}

impl<M: std::fmt::Debug> std::fmt::Debug for FabricModule<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FabricModule")
            .field("module", &self.module)
            .field("precision", &self.precision.name())
            .field("device", &self.device)
            .field("training", &self.training.get())
            .finish()
    }
}

impl<M> FabricModule<M> {
    pub(crate) fn new(module: M, precision: Arc<dyn PrecisionPlugin>, device: Device) -> Self {
        FabricModule {
            module,
            precision,
            device,
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
    /// Runs the model on `xs` in the current mode, with the run's precision.
    pub fn forward(&self, xs: &Tensor) -> Tensor {
        self.forward_t(xs, self.training.get())
    }
}

impl<M: ModuleT> ModuleT for FabricModule<M> {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let xs = self.precision.convert_input(xs);
        let ys = {
            // The device type and dtype were validated when the Fabric was
            // built, so entering autocast cannot fail here.
            let _autocast = self
                .precision
                .autocast_dtype()
                .and_then(|dtype| AutocastGuard::new(self.device, dtype).ok());
            self.module.forward_t(&xs, train)
        };
        self.precision.convert_output(ys)
    }
}

impl<M> Deref for FabricModule<M> {
    type Target = M;

    fn deref(&self) -> &M {
        &self.module
    }
}
