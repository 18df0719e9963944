//! The replicas of `dp`'s models: one process driving several devices, as
//! PyTorch's `DataParallel`.
//!
//! The model set up on the first device is the one the optimizer steps.
//! Each further device holds a replica built by the same function. A
//! forward pass brings the replicas up to date with the first device's
//! variables (parameters and buffers, and whether each requires a
//! gradient), splits the batch along its first dimension into one chunk per
//! device (as `torch.chunk`), runs each chunk on its device, and
//! concatenates the outputs on the first device. The gather is
//! differentiable, so `backward` gives every replica the gradients of its
//! chunk; [`ReplicaGradients::reduce`] then adds them to the first device's
//! gradients, which become the gradients of the whole batch.
//!
//! Variables are copied into the replicas only when the first device's may
//! have changed since the last copy: after an optimizer step through a
//! [`FabricOptimizer`](crate::FabricOptimizer) of the run (libtorch's
//! optimizers do not bump version counters), or when a variable's version
//! counter moved (a checkpoint load, any in-place change through tch).
//! Copying bumps the replicas' version counters, and autograd refuses to go
//! back through a graph whose saved weights were modified, so copying on
//! every forward would break two forward passes before one backward
//! (`loss = f(model(a)) + f(model(b))`). Buffers (variables that need no
//! gradient, such as batch-norm statistics, which each replica updates on
//! its own chunk) are also copied at every forward under `no_grad`, where
//! no graph can be broken, so evaluation sees the first device's.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use tch::nn::VarStore;
use tch::{Device, Tensor};

use crate::error::{Error, Result};
use crate::shim;
use crate::tensors::Tensors;

/// A variable of the first device's model and its copies on the other
/// devices.
struct Replicated {
    primary: Tensor,
    copies: Vec<Tensor>,
    /// The first device's version counter at the last copy.
    copied_version: Option<i64>,
}

/// What a model's replicas share with the `Fabric`.
struct State {
    variables: Vec<Replicated>,
    /// The run's optimizer step count at the last copy.
    copied_step: Option<u64>,
}

type Shared = Arc<Mutex<State>>;

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

/// The replicas of a model on the devices after the first.
pub(crate) struct Replicas<M> {
    devices: Vec<Device>,
    modules: Vec<M>,
    /// Every variable, trainable or not, with its copies (shared with the
    /// `Fabric`'s [`ReplicaGradients`], which holds it weakly).
    variables: Shared,
    /// The run's optimizer step count.
    steps: Arc<AtomicU64>,
    /// Keeps the replicas' variables alive.
    _stores: Vec<VarStore>,
}

impl<M> std::fmt::Debug for Replicas<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replicas")
            .field("devices", &self.devices)
            .finish()
    }
}

/// The variables of every model set up under `dp`, whose replicas'
/// gradients `backward` adds up. Held weakly: a model that is dropped
/// drops its replicas.
#[derive(Default)]
pub(crate) struct ReplicaGradients {
    models: Vec<Weak<Mutex<State>>>,
}

/// Builds one replica per device of `devices` with `build`, each on its own
/// var store prepared by `prepare` (the precision's casts), and checks that
/// each has the variables of `primary`, by name, shape and dtype.
pub(crate) fn replicate<M>(
    primary: &VarStore,
    devices: &[Device],
    build: &dyn Fn(&tch::nn::Path) -> M,
    prepare: &dyn Fn(&mut VarStore) -> Result<()>,
    steps: Arc<AtomicU64>,
) -> Result<Replicas<M>> {
    let all = crate::vars::sorted(primary);
    let describe = |v: &[(String, Tensor)]| {
        v.iter()
            .map(|(n, t)| format!("{n} {:?} {:?}", t.size(), t.kind()))
            .collect::<Vec<_>>()
    };
    let expected = describe(&all);
    let mut variables: Vec<Replicated> = all
        .iter()
        .map(|(_, t)| Replicated {
            primary: t.shallow_clone(),
            copies: Vec::new(),
            copied_version: None,
        })
        .collect();
    let mut modules = Vec::with_capacity(devices.len());
    let mut stores = Vec::with_capacity(devices.len());
    for &device in devices {
        let mut vs = VarStore::new(device);
        let module = build(&vs.root());
        prepare(&mut vs)?;
        let copies = crate::vars::sorted(&vs);
        let found = describe(&copies);
        if found != expected {
            return Err(Error::InvalidArgument(format!(
                "under \"dp\" the build function must create the same variables on every call, under the path it is given; \
                 on the first device it created [{}], on {device:?} [{}]",
                expected.join(", "),
                found.join(", ")
            )));
        }
        for (slot, (_, copy)) in variables.iter_mut().zip(copies) {
            slot.copies.push(copy);
        }
        modules.push(module);
        stores.push(vs);
    }
    Ok(Replicas {
        devices: devices.to_vec(),
        modules,
        variables: Arc::new(Mutex::new(State {
            variables,
            copied_step: None,
        })),
        steps,
        _stores: stores,
    })
}

/// The replicas of one model, as a strategy that runs replicas
/// ([`Strategy::track_replicas`](super::Strategy::track_replicas)) follows
/// them: held weakly, so that a model that is dropped drops its replicas.
pub struct ReplicaSet(Weak<Mutex<State>>);

impl std::fmt::Debug for ReplicaSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaSet")
            .field("alive", &(self.0.strong_count() > 0))
            .finish()
    }
}

impl<M> Replicas<M> {
    /// The handle a strategy follows these replicas by.
    pub(crate) fn set(&self) -> ReplicaSet {
        ReplicaSet(Arc::downgrade(&self.variables))
    }

    /// The replicas' devices.
    pub(crate) fn devices(&self) -> &[Device] {
        &self.devices
    }
}

impl<M> Replicas<M> {
    /// Runs `primary` and the replicas on their chunks of `args` (already
    /// in the run's precision) and returns the outputs gathered on
    /// `primary_device`. `run` runs one module on one chunk on a device
    /// (under the precision's autocast).
    ///
    /// Every tensor of `args` with at least one dimension is split along
    /// its first (as `torch.chunk`: fewer chunks than devices when the
    /// batch is smaller); they must agree on its size. Scalar tensors and
    /// plain values go whole to every device; arguments without a batched
    /// tensor run on the first device alone. Each output tensor is
    /// concatenated along its first dimension, scalars stacked into a
    /// vector of one value per chunk, as `DataParallel` does.
    pub(crate) fn forward<A, O>(
        &self,
        primary: &M,
        primary_device: Device,
        args: A,
        run: &dyn Fn(&M, A, Device) -> O,
    ) -> Result<O>
    where
        A: Tensors<Owned = A>,
        O: Tensors<Owned = O>,
    {
        // The batch size, from the first batched tensor; then every
        // batched tensor's chunks (none for scalars).
        let mut batch: Option<(usize, i64)> = None;
        let mut mismatch = None;
        let mut position = 0;
        args.for_each_tensor(&mut |t| {
            if t.dim() > 0 {
                let size = t.size()[0];
                match batch {
                    None => batch = Some((position, size)),
                    Some((first, expected)) if expected != size && mismatch.is_none() => {
                        mismatch = Some(format!(
                            "under \"dp\" every tensor argument is split along its first dimension, the batch, \
                             so they must agree on its size: tensor {first} (counting from 0, in argument order) has {expected} rows, tensor {position} has {size}"
                        ))
                    }
                    _ => {}
                }
            }
            position += 1;
        });
        if let Some(message) = mismatch {
            return Err(Error::InvalidArgument(message));
        }
        if batch.is_none() {
            return Ok(run(primary, args, primary_device));
        }
        self.synchronise();
        let devices = self.devices.len() as i64 + 1;
        let mut pieces: Vec<Option<Vec<Tensor>>> = Vec::new();
        let mut failed = None;
        args.for_each_tensor(&mut |t| {
            pieces.push(if t.dim() > 0 {
                match t.f_chunk(devices, 0) {
                    Ok(chunks) => Some(chunks),
                    Err(e) => {
                        failed.get_or_insert(e);
                        Some(Vec::new())
                    }
                }
            } else {
                None
            })
        });
        if let Some(e) = failed {
            return Err(e.into());
        }
        let chunks = pieces.iter().flatten().map(Vec::len).min().unwrap_or(1);
        let mut outputs = Vec::with_capacity(chunks);
        for i in 0..chunks {
            let device = if i == 0 {
                primary_device
            } else {
                self.devices[i - 1]
            };
            let mut position = 0;
            let part = args.map_tensors(&mut |t| {
                let piece = match &pieces[position] {
                    Some(chunks) => chunks[i].shallow_clone(),
                    None => t.shallow_clone(),
                };
                position += 1;
                to_device(piece, device)
            })?;
            outputs.push(if i == 0 {
                run(primary, part, device)
            } else {
                run(&self.modules[i - 1], part, device)
            });
        }
        gather(outputs, primary_device)
    }

    /// Brings the replicas up to date: whether each variable requires a
    /// gradient, always; its value, when the first device's may have
    /// changed (and buffers under `no_grad`, see the module's
    /// documentation).
    fn synchronise(&self) {
        let grad_enabled = shim::grad_enabled();
        let mut state = lock(&self.variables);
        let step = self.steps.load(Ordering::Relaxed);
        let stepped = state.copied_step != Some(step);
        state.copied_step = Some(step);
        tch::no_grad(|| {
            for variable in state.variables.iter_mut() {
                let requires_grad = variable.primary.requires_grad();
                let version = variable.primary.internal_version();
                let changed = stepped
                    || variable.copied_version != Some(version)
                    || (!requires_grad && !grad_enabled);
                for copy in &variable.copies {
                    if copy.requires_grad() != requires_grad {
                        let _ = copy.set_requires_grad(requires_grad);
                    }
                    if changed {
                        copy.shallow_clone().copy_(&variable.primary);
                    }
                }
                variable.copied_version = Some(version);
            }
        });
    }
}

fn to_device(t: Tensor, device: Device) -> Result<Tensor> {
    Ok(if t.device() == device {
        t
    } else {
        t.f_to_device(device)?
    })
}

/// The outputs of every chunk gathered on `device`: each tensor
/// concatenated along its first dimension (scalars stacked), plain values
/// taken from the first chunk's output.
fn gather<O: Tensors<Owned = O>>(mut outputs: Vec<O>, device: Device) -> Result<O> {
    if outputs.len() == 1 {
        return Ok(outputs.pop().expect("one output"));
    }
    let mut columns: Vec<Vec<Tensor>> = Vec::new();
    for (i, output) in outputs.iter().enumerate() {
        let mut count = 0;
        output.for_each_tensor(&mut |t| {
            if i == 0 {
                columns.push(Vec::new());
            }
            if let Some(column) = columns.get_mut(count) {
                column.push(t.shallow_clone());
            }
            count += 1;
        });
        if count != columns.len() {
            return Err(Error::InvalidArgument(format!(
                "under \"dp\" the outputs of the devices are gathered tensor by tensor, so each device's output must hold as many tensors: \
                 the first device's holds {}, device {i}'s {count} (a `Vec` or `Option` whose length depends on the batch?)",
                columns.len()
            )));
        }
    }
    let mut position = 0;
    outputs[0].map_tensors(&mut |_| {
        let column = columns[position]
            .iter()
            .map(|t| to_device(t.shallow_clone(), device))
            .collect::<Result<Vec<_>>>()?;
        position += 1;
        Ok(if column[0].dim() == 0 {
            Tensor::f_stack(&column, 0)?
        } else {
            Tensor::f_cat(&column, 0)?
        })
    })
}

impl ReplicaGradients {
    /// Adds the gradients the replicas received to the first device's
    /// (which become the replica's own where the first device got none:
    /// a parameter used only on some chunks), and clears the replicas'.
    pub(crate) fn reduce(&mut self) -> Result<()> {
        self.models.retain(|model| model.strong_count() > 0);
        for model in &self.models {
            let Some(variables) = model.upgrade() else {
                continue;
            };
            let state = lock(&variables);
            tch::no_grad(|| {
                for variable in state.variables.iter() {
                    for copy in &variable.copies {
                        let grad = copy.grad();
                        if !grad.defined() {
                            continue;
                        }
                        let mut sum = variable.primary.grad();
                        let grad_here = grad.f_to_device(variable.primary.device())?;
                        if sum.defined() {
                            let _ = sum.f_add_(&grad_here)?;
                        } else {
                            let own = if grad_here.data_ptr() == grad.data_ptr() {
                                grad_here.f_detach_copy()?
                            } else {
                                grad_here
                            };
                            shim::set_grad(&variable.primary, Some(&own))?;
                        }
                        shim::set_grad(copy, None)?;
                    }
                }
                Ok::<(), Error>(())
            })?;
        }
        Ok(())
    }

    /// Adds the replicas of another model set up under `dp`.
    pub(crate) fn track(&mut self, replicas: ReplicaSet) {
        self.models.push(replicas.0);
    }
}
