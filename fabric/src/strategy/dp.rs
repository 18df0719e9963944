//! `dp`: one process driving several devices, as PyTorch's `DataParallel`.
//!
//! The model set up on the first device is the one the optimizer steps.
//! Each further device holds a replica built by the same function. A
//! forward pass copies the first device's variables (parameters and
//! buffers) into every replica, splits the batch along its first dimension
//! into one chunk per device (as `torch.chunk`), runs each chunk on its
//! device, and concatenates the outputs on the first device. The gather is
//! differentiable, so `backward` gives every replica the gradients of its
//! chunk; [`ReplicaGradients::reduce`] then adds them to the first device's
//! gradients, which become the gradients of the whole batch.

use tch::nn::{ModuleT, VarStore};
use tch::{Device, Tensor};

use crate::error::{Error, Result};

/// A variable of the first device's model and its copies on the other
/// devices.
struct Replicated {
    primary: Tensor,
    copies: Vec<Tensor>,
}

/// The replicas of a model on the devices after the first.
pub(crate) struct Replicas<M> {
    devices: Vec<Device>,
    modules: Vec<M>,
    /// Every variable, trainable or not, with its copies.
    variables: Vec<Replicated>,
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

/// The trainable variables of the first device with their copies, whose
/// gradients `backward` adds up.
#[derive(Default)]
pub(crate) struct ReplicaGradients {
    pairs: Vec<Replicated>,
}

/// Sorted `(name, tensor)` pairs of a var store's variables.
/// Trainable variables are the ones requiring a gradient.
fn named(vs: &VarStore, trainable_only: bool) -> Vec<(String, Tensor)> {
    let mut variables: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .filter(|(_, t)| !trainable_only || t.requires_grad())
        .collect();
    variables.sort_by(|a, b| a.0.cmp(&b.0));
    variables
}

/// Builds one replica per device of `devices` with `build`, each on its own
/// var store prepared by `prepare` (the precision's casts), and checks that
/// each has the variables of `primary`, by name, shape and dtype.
pub(crate) fn replicate<M>(
    primary: &VarStore,
    devices: &[Device],
    build: &dyn Fn(&tch::nn::Path) -> M,
    prepare: &dyn Fn(&mut VarStore) -> Result<()>,
) -> Result<(Replicas<M>, ReplicaGradients)> {
    let all = named(primary, false);
    let trainable = named(primary, true);
    let unreplicated = |named: &[(String, Tensor)]| -> Vec<Replicated> {
        named
            .iter()
            .map(|(_, t)| Replicated {
                primary: t.shallow_clone(),
                copies: Vec::new(),
            })
            .collect()
    };
    let mut variables = unreplicated(&all);
    let mut gradients = unreplicated(&trainable);
    let mut modules = Vec::with_capacity(devices.len());
    let mut stores = Vec::with_capacity(devices.len());
    for &device in devices {
        let mut vs = VarStore::new(device);
        let module = build(&vs.root());
        prepare(&mut vs)?;
        let copies = named(&vs, false);
        let describe = |v: &[(String, Tensor)]| {
            v.iter()
                .map(|(n, t)| format!("{n} {:?} {:?}", t.size(), t.kind()))
                .collect::<Vec<_>>()
        };
        if describe(&copies) != describe(&all) {
            return Err(Error::InvalidArgument(format!(
                "under \"dp\" the build function must create the same variables on every call, under the path it is given; \
                 on the first device it created [{}], on {device:?} [{}]",
                describe(&all).join(", "),
                describe(&copies).join(", ")
            )));
        }
        let copied_trainable = named(&vs, true);
        if copied_trainable.len() != trainable.len() {
            return Err(Error::InvalidArgument(format!(
                "under \"dp\" the replica on {device:?} has {} trainable variables, the first device's model {}; freeze variables after `setup_module_with`",
                copied_trainable.len(),
                trainable.len()
            )));
        }
        for (slot, (_, copy)) in variables.iter_mut().zip(copies) {
            slot.copies.push(copy);
        }
        for (slot, (_, copy)) in gradients.iter_mut().zip(copied_trainable) {
            slot.copies.push(copy);
        }
        modules.push(module);
        stores.push(vs);
    }
    Ok((
        Replicas {
            devices: devices.to_vec(),
            modules,
            variables,
            _stores: stores,
        },
        ReplicaGradients { pairs: gradients },
    ))
}

impl<M> Replicas<M> {
    /// The replicas' devices.
    pub(crate) fn devices(&self) -> &[Device] {
        &self.devices
    }
}

impl<M: ModuleT> Replicas<M> {
    /// Runs `primary` and the replicas on their chunks of `xs` (already in
    /// the run's precision) and returns the outputs concatenated on
    /// `primary_device`. `run` runs one module on one chunk on a device
    /// (under the precision's autocast).
    pub(crate) fn forward(
        &self,
        primary: &M,
        primary_device: Device,
        xs: &Tensor,
        run: &dyn Fn(&M, &Tensor, Device) -> Tensor,
    ) -> Tensor {
        if xs.dim() == 0 {
            return run(primary, xs, primary_device);
        }
        self.synchronise();
        let chunks = xs.chunk(self.devices.len() as i64 + 1, 0);
        let mut outputs = Vec::with_capacity(chunks.len());
        for (i, chunk) in chunks.iter().enumerate() {
            let output = if i == 0 {
                run(primary, chunk, primary_device)
            } else {
                let device = self.devices[i - 1];
                let output = run(&self.modules[i - 1], &chunk.to_device(device), device);
                output.to_device(primary_device)
            };
            outputs.push(output);
        }
        if outputs.len() == 1 {
            return outputs.pop().expect("one output");
        }
        Tensor::cat(&outputs, 0)
    }

    /// Copies every variable of the first device into the replicas.
    fn synchronise(&self) {
        tch::no_grad(|| {
            for variable in &self.variables {
                for copy in &variable.copies {
                    copy.shallow_clone().copy_(&variable.primary);
                }
            }
        });
    }
}

impl ReplicaGradients {
    /// Adds the gradients the replicas received to the first device's, and
    /// clears the replicas' for the next pass.
    pub(crate) fn reduce(&self) -> Result<()> {
        tch::no_grad(|| {
            for pair in &self.pairs {
                let mut sum = pair.primary.grad();
                for copy in &pair.copies {
                    let mut grad = copy.grad();
                    if !grad.defined() {
                        continue;
                    }
                    if !sum.defined() {
                        return Err(Error::Distributed(format!(
                            "a parameter of shape {:?} received a gradient on {:?} but none on the first device",
                            pair.primary.size(),
                            copy.device()
                        )));
                    }
                    let _ = sum.f_add_(&grad.f_to_device(sum.device())?)?;
                    let _ = grad.f_zero_()?;
                }
            }
            Ok(())
        })
    }

    /// Adds the trainable variables of another model set up under `dp`.
    pub(crate) fn extend(&mut self, other: ReplicaGradients) {
        self.pairs.extend(other.pairs);
    }
}
