//! [`FabricModule`]: a model set up by fabric.

use std::cell::Cell;
use std::ops::Deref;
use std::sync::Arc;

use tch::nn::ModuleT;
use tch::{Device, Tensor};

use crate::precision::{AutocastGuard, PrecisionPlugin};
use crate::strategy::replicas::Replicas;

/// A model returned by [`Fabric::setup`](crate::Fabric::setup): calling
/// [`forward`](Self::forward) converts the input to the run's precision,
/// runs the model under the precision's autocast, and converts the output
/// back for the user, as Lightning's `_FabricModule` does.
///
/// Like a PyTorch module it has a training mode, on by default, switched
/// with [`train`](Self::train) and [`eval`](Self::eval), and passed to
/// [`ModuleT::forward_t`] (dropout, batch norm). The wrapped model is
/// reachable through `Deref` and [`inner`](Self::inner).
///
/// Under `strategy = "dp"` it also holds the model's replicas on the other
/// devices: a forward pass splits the batch between the devices and
/// gathers the outputs on the first (see
/// [`Fabric::setup_module_with`](crate::Fabric::setup_module_with)).
pub struct FabricModule<M> {
    module: M,
    precision: Arc<dyn PrecisionPlugin>,
    device: Device,
    training: Cell<bool>,
    replicas: Option<Replicas<M>>,
    /// Which of the fabric's models it is (the order of `setup_module`
    /// calls, from 0), for per-model `no_backward_sync`.
    index: Option<usize>,
}

impl<M: std::fmt::Debug> std::fmt::Debug for FabricModule<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FabricModule")
            .field("module", &self.module)
            .field("precision", &self.precision.name())
            .field("device", &self.device)
            .field("training", &self.training.get())
            .field("replicas", &self.replicas)
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
            replicas: None,
            index: None,
        }
    }

    pub(crate) fn with_index(mut self, index: usize) -> Self {
        self.index = Some(index);
        self
    }

    /// Which of the fabric's models it is (`None` for a module not set up
    /// by a fabric).
    pub(crate) fn index(&self) -> Option<usize> {
        self.index
    }

    pub(crate) fn with_replicas(mut self, replicas: Replicas<M>) -> Self {
        self.replicas = Some(replicas);
        self
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

    /// The devices the model runs on: one, or under `dp` every device the
    /// batch is split between (the first holds the model the optimizer
    /// steps).
    pub fn devices(&self) -> Vec<Device> {
        let mut devices = vec![self.device];
        if let Some(replicas) = &self.replicas {
            devices.extend(replicas.devices());
        }
        devices
    }

    /// The wrapped model, taken out of the wrapper (under `dp`, the first
    /// device's; the replicas are dropped).
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
        let run = |module: &M, xs: &Tensor, device: Device| {
            // The device type and dtype were validated when the Fabric was
            // built, so entering autocast cannot fail here.
            let _autocast = self
                .precision
                .autocast_dtype()
                .and_then(|dtype| AutocastGuard::new(device, dtype).ok());
            module.forward_t(xs, train)
        };
        let ys = match &self.replicas {
            Some(replicas) => replicas.forward(&self.module, self.device, &xs, &run),
            None => run(&self.module, &xs, self.device),
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
