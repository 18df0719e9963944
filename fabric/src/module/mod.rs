//! [`FabricModule`]: a model set up by fabric.

mod forward;

pub use forward::Forward;

use crate::tensors::Tensors;

use std::cell::Cell;
use std::sync::Arc;

use tch::nn::ModuleT;
use tch::{Device, Tensor};

use crate::error::Result;
use crate::precision::{AutocastGuard, PrecisionPlugin};
use crate::strategy::replicas::Replicas;

/// A model returned by [`Fabric::setup`](crate::Fabric::setup): calling
/// [`forward`](Self::forward) converts the floating-point tensors of its
/// arguments to the run's precision, runs the model under the precision's
/// autocast, and converts the outputs back for the user, as Lightning's
/// `_FabricModule` does.
///
/// Any model can be set up: a tch `Module`/`ModuleT` takes one tensor
/// (`model.forward(&xs)`); a model of several inputs or outputs (tuples,
/// structs of tensors with `#[derive(Tensors)]`, plain values alongside)
/// implements [`Forward`] for them. [`forward_with`](Self::forward_with) runs any other method of the
/// model the same way.
///
/// Like a PyTorch module it has a training mode, on by default, switched
/// with [`train`](Self::train) and [`eval`](Self::eval), and passed to the
/// model's forward pass (dropout, batch norm).
///
/// The wrapped model is reachable only through [`inner`](Self::inner) and
/// [`into_inner`](Self::into_inner), whose calls skip the precision (no
/// cast, no autocast): there is no `Deref` to it, so that a method call on
/// the set-up module cannot silently bypass the precision.
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
    /// Which fabric set it up, and which of its models it is (the order of
    /// `setup_module` calls, from 0), for per-model `no_backward_sync`.
    index: Option<(u64, usize)>,
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

    pub(crate) fn with_index(mut self, fabric: u64, index: usize) -> Self {
        self.index = Some((fabric, index));
        self
    }

    /// Which fabric set it up and which of its models it is (`None` for a
    /// module not set up by a fabric).
    pub(crate) fn index(&self) -> Option<(u64, usize)> {
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

    /// The wrapped model, as it is: calling it directly skips the run's
    /// precision (inputs are not cast, autocast is off, outputs are not
    /// converted back) and, under `dp`, the other devices. Run its forward
    /// pass through [`forward`](Self::forward), and its other methods
    /// through [`forward_with`](Self::forward_with).
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
    /// device's; the replicas are dropped). Its calls skip the run's
    /// precision, as [`inner`](Self::inner)'s do.
    pub fn into_inner(self) -> M {
        self.module
    }
}

impl<M> FabricModule<M> {
    /// Runs the model on `args` in the current mode, with the run's
    /// precision: `model.forward(&xs)` for a tch `Module`/`ModuleT`,
    /// `model.forward((&xs, &mask, 0.5))` for a model that implements
    /// [`Forward`] for `(Tensor, Tensor, f64)`. Panics where libtorch
    /// fails, as tch's `forward` does, and under `dp` on arguments whose
    /// tensors disagree on the batch size; [`f_forward_t`](Self::f_forward_t)
    /// returns those as errors.
    pub fn forward<A>(&self, args: A) -> M::Output
    where
        A: Tensors,
        M: Forward<A::Owned>,
    {
        self.forward_t(args, self.training.get())
    }

    /// [`forward`](Self::forward) in training mode if `train`, whatever the
    /// module's mode.
    pub fn forward_t<A>(&self, args: A, train: bool) -> M::Output
    where
        A: Tensors,
        M: Forward<A::Owned>,
    {
        self.f_forward_t(args, train)
            .unwrap_or_else(|e| panic!("forward pass: {e}"))
    }

    /// [`forward_t`](Self::forward_t), returning libtorch's errors and
    /// `dp`'s batch-size mismatches.
    pub fn f_forward_t<A>(&self, args: A, train: bool) -> Result<M::Output>
    where
        A: Tensors,
        M: Forward<A::Owned>,
    {
        self.f_forward_with(args, |module, args| module.call(args, train))
    }

    /// Runs `f` on the model and `args` as [`forward`](Self::forward) runs
    /// the forward pass: the floating-point tensors of `args` cast to the
    /// run's precision, `f` under its autocast, the tensors `f` returns
    /// converted back, and under `dp` `f` called on each device's replica
    /// with its chunk of the batch. For a method other than the forward
    /// pass (`model.forward_with(&xs, |m, xs| m.encode(&xs))`).
    pub fn forward_with<A, O>(&self, args: A, f: impl Fn(&M, A::Owned) -> O) -> O
    where
        A: Tensors,
        O: Tensors<Owned = O>,
    {
        self.f_forward_with(args, f)
            .unwrap_or_else(|e| panic!("forward pass: {e}"))
    }

    /// [`forward_with`](Self::forward_with), returning libtorch's errors and
    /// `dp`'s batch-size mismatches.
    pub fn f_forward_with<A, O>(&self, args: A, f: impl Fn(&M, A::Owned) -> O) -> Result<O>
    where
        A: Tensors,
        O: Tensors<Owned = O>,
    {
        let precision = &*self.precision;
        let args = args.map_tensors(&mut |t| {
            Ok(if t.is_floating_point() {
                precision.convert_input(t)
            } else {
                t.shallow_clone()
            })
        })?;
        let run = |module: &M, args: A::Owned, device: Device| -> O {
            // The device type and dtype were validated when the Fabric was
            // built, so entering autocast cannot fail here.
            let _autocast = precision
                .autocast_dtype()
                .and_then(|dtype| AutocastGuard::new(device, dtype).ok());
            f(module, args)
        };
        let outputs = match &self.replicas {
            Some(replicas) => replicas.forward(&self.module, self.device, args, &run)?,
            None => run(&self.module, args, self.device),
        };
        outputs.map_tensors(&mut |t| Ok(precision.convert_output(t.shallow_clone())))
    }
}

/// A set-up tch model is itself a tch model (it can go in an
/// `nn::Sequential`), which runs with the run's precision.
impl<M: ModuleT> ModuleT for FabricModule<M> {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        FabricModule::forward_t(self, xs, train)
    }
}
