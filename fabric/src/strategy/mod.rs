//! Strategies: how many processes a run has, who starts them, and the
//! gradient averaging of `ddp`.

use fabric_options::{Devices, Strategy};
use tch::{Kind, Tensor};

use crate::collectives::{Comm, ReduceOp};
use crate::environment::ClusterEnvironment;
use crate::error::{Error, Result};

pub(crate) mod dp;

/// What `build` does with the resolved options.
pub(crate) enum Plan {
    /// One process: no collectives.
    Single,
    /// This process is one rank of a multi-process run that exists already
    /// (started by `mpirun`, `srun`, fabric's own launcher, ...).
    Join,
    /// Start this many `ddp` ranks, supervising them from this process.
    Launch(usize),
    /// Start this many `ddp_spawn` workers running the training function.
    Spawn(usize),
}

/// The processes per node and nodes a run has, checked against the
/// environment it runs in.
pub(crate) struct Layout {
    pub(crate) strategy: Strategy,
    pub(crate) per_node: usize,
    pub(crate) plan: Plan,
}

fn mismatch(env: &dyn ClusterEnvironment, message: String) -> Error {
    Error::ClusterEnvironment {
        environment: env.name().to_owned(),
        message,
    }
}

/// Resolves `strategy` against the devices selected per node, `num_nodes`
/// and the environment, as Lightning does: several devices or nodes pick
/// `ddp`; an environment with several processes makes this one a rank.
pub(crate) fn resolve(
    strategy: Strategy,
    devices: &Devices,
    selected: usize,
    num_nodes: usize,
    num_nodes_given: bool,
    env: &dyn ClusterEnvironment,
) -> Result<Layout> {
    let world = env.world_size();
    if world > 1 {
        // This process is a rank of a run that exists.
        let nodes = match env.num_nodes() {
            Some(n) if num_nodes_given && n != num_nodes => {
                return Err(mismatch(
                    env,
                    format!(
                        "it reports {n} node(s), but `num_nodes = {num_nodes}`; set `num_nodes = {n}`"
                    ),
                ));
            }
            Some(n) => n,
            None => num_nodes,
        };
        let per_node = world.div_ceil(nodes);
        if !matches!(devices, Devices::Auto) && selected * nodes != world {
            return Err(mismatch(
                env,
                format!(
                    "it reports {world} processes, but `devices = {devices}` on {nodes} node(s) makes {}; set `devices = {per_node}` (processes per node)",
                    selected * nodes
                ),
            ));
        }
        let strategy = match strategy {
            Strategy::Auto | Strategy::Ddp => Strategy::Ddp,
            Strategy::DdpSpawn if crate::launcher::is_spawn_worker() => Strategy::DdpSpawn,
            Strategy::DdpSpawn => {
                return Err(mismatch(
                    env,
                    "its launcher created the processes already; `ddp_spawn` starts processes itself: use `strategy = \"ddp\"`".into(),
                ));
            }
            other => {
                return Err(mismatch(
                    env,
                    format!("it runs {world} processes, which \"{other}\" cannot use; use \"ddp\""),
                ));
            }
        };
        return Ok(Layout {
            strategy,
            per_node,
            plan: Plan::Join,
        });
    }
    if strategy == Strategy::Dp {
        // One process, whatever the number of devices; that the devices
        // are CUDA devices is checked by the builder.
        return Ok(Layout {
            strategy,
            per_node: 1,
            plan: Plan::Single,
        });
    }
    let processes = selected * num_nodes;
    if processes == 1 {
        let strategy = if strategy == Strategy::Auto {
            Strategy::SingleDevice
        } else {
            strategy
        };
        return Ok(Layout {
            strategy,
            per_node: 1,
            plan: Plan::Single,
        });
    }
    if num_nodes > 1 {
        return Err(Error::Launch(format!(
            "`num_nodes = {num_nodes}` needs the processes of every node started by a cluster launcher (`mpirun` across hosts, or `srun --mpi=pmix`); fabric's own launcher starts processes on this machine only"
        )));
    }
    match strategy {
        Strategy::Auto | Strategy::Ddp => Ok(Layout {
            strategy: Strategy::Ddp,
            per_node: processes,
            plan: Plan::Launch(processes),
        }),
        Strategy::DdpSpawn => Ok(Layout {
            strategy,
            per_node: processes,
            plan: Plan::Spawn(processes),
        }),
        other => Err(Error::InvalidArgument(format!(
            "\"{other}\" runs on one device, but {processes} were selected; use \"ddp\""
        ))),
    }
}

/// The default gradient bucket size, as PyTorch's DDP.
pub(crate) const DEFAULT_BUCKET_BYTES: usize = 25 * 1024 * 1024;

/// Gradients of at least this many bytes are a bucket of their own and are
/// all-reduced from where they are, without being packed first.
const OWN_BUCKET_BYTES: usize = 1024 * 1024;

/// One bucket of gradients: which parameters, where in the flat buffers.
struct Bucket {
    /// (parameter index, offset, number of elements).
    members: Vec<(usize, i64, i64)>,
    /// The gradients, packed, before the all-reduce; `None` for a bucket of
    /// one large gradient, which is all-reduced from where it is.
    packed: Option<Tensor>,
    /// The all-reduced sums.
    reduced: Tensor,
}

/// The gradient buckets of `ddp`, allocated once and reused every step, so
/// averaging allocates nothing. A gradient of [`OWN_BUCKET_BYTES`] or more
/// is a bucket of its own, all-reduced straight from the gradient; smaller
/// ones are packed into a flat buffer per bucket first. Each bucket is
/// all-reduced in one MPI call into a second buffer, and the sums come back
/// into the gradients divided by the world size, in one pass. Gradients of
/// 16-bit kinds, which MPI does not carry, travel as f32.
#[derive(Default)]
pub(crate) struct GradientBuckets {
    buckets: Vec<Bucket>,
    /// (shape, kind) of every parameter the buckets were laid out for.
    layout: Vec<(Vec<i64>, tch::Kind)>,
}

impl GradientBuckets {
    fn lay_out(&mut self, params: &[Tensor], bucket_bytes: usize) -> Result<()> {
        let layout: Vec<_> = params.iter().map(|p| (p.size(), p.kind())).collect();
        if layout == self.layout {
            return Ok(());
        }
        if let Some(p) = params.iter().find(|p| {
            matches!(
                p.kind(),
                Kind::ComplexHalf | Kind::ComplexFloat | Kind::ComplexDouble
            )
        }) {
            // Travelling as f32 would drop the imaginary parts.
            return Err(Error::Distributed(format!(
                "ddp does not average complex gradients ({:?} parameter of shape {:?}); keep real and imaginary parts in separate real parameters",
                p.kind(),
                p.size()
            )));
        }
        let bytes = |p: &Tensor| p.numel() * p.kind().elt_size_in_bytes();
        let alone =
            |p: &Tensor| bytes(p) >= OWN_BUCKET_BYTES && Comm::carries(p.kind(), p.device());
        // Each large gradient alone; the others, in parameter order, share
        // buckets of their kind of about `bucket_bytes`, however they are
        // interleaved with the large ones.
        let mut groups: Vec<Vec<usize>> = Vec::new();
        let mut filling: Vec<(Kind, Vec<usize>, usize)> = Vec::new();
        for (i, param) in params.iter().enumerate() {
            if alone(param) {
                groups.push(vec![i]);
                continue;
            }
            let kind = param.kind();
            match filling.iter().position(|(k, _, _)| *k == kind) {
                Some(f) if filling[f].2 < bucket_bytes => {
                    filling[f].1.push(i);
                    filling[f].2 += bytes(param);
                }
                Some(f) => {
                    let (_, full, _) =
                        std::mem::replace(&mut filling[f], (kind, vec![i], bytes(param)));
                    groups.push(full);
                }
                None => filling.push((kind, vec![i], bytes(param))),
            }
        }
        groups.extend(filling.into_iter().map(|(_, members, _)| members));
        self.buckets.clear();
        for group in groups {
            let first = &params[group[0]];
            let mut members = Vec::with_capacity(group.len());
            let mut offset = 0;
            for i in group {
                let n = params[i].numel() as i64;
                members.push((i, offset, n));
                offset += n;
            }
            let kind = first.kind();
            let wire = if Comm::carries(kind, first.device()) {
                kind
            } else {
                Kind::Float
            };
            let options = (wire, first.device());
            let packed = if members.len() == 1 && alone(first) {
                None
            } else {
                Some(Tensor::f_empty([offset], options)?)
            };
            self.buckets.push(Bucket {
                members,
                packed,
                reduced: Tensor::f_empty([offset], options)?,
            });
        }
        self.layout = layout;
        Ok(())
    }

    /// Averages the gradients of `params` over every rank.
    pub(crate) fn average(
        &mut self,
        comm: &Comm,
        params: &[Tensor],
        bucket_bytes: usize,
    ) -> Result<()> {
        let grads: Vec<Tensor> = params.iter().map(Tensor::grad).collect();
        if let Some(i) = grads.iter().position(|g| !g.defined()) {
            return Err(Error::Distributed(format!(
                "parameter {i} (shape {:?}) received no gradient on rank {}: under ddp every trainable parameter must take part in the loss",
                params[i].size(),
                comm.rank()
            )));
        }
        self.lay_out(params, bucket_bytes)?;
        let scale = Tensor::from(1.0 / comm.size() as f64);
        // NCCL averages as it reduces (scaling each rank's values first,
        // so 16-bit gradients cannot overflow in the sum); MPI sums, and
        // the sums are divided on the way back.
        let averaged = |t: &Tensor| t.device().is_cuda();
        let op = |t: &Tensor| {
            if averaged(t) {
                ReduceOp::Mean
            } else {
                ReduceOp::Sum
            }
        };
        tch::no_grad(|| {
            for bucket in &self.buckets {
                match &bucket.packed {
                    Some(packed) => {
                        for &(i, offset, n) in &bucket.members {
                            packed
                                .f_narrow(0, offset, n)?
                                .f_copy_(&grads[i].f_reshape([-1])?)?;
                        }
                        comm.all_reduce_into(packed, &bucket.reduced, op(&bucket.reduced))?;
                    }
                    None => {
                        let grad = grads[bucket.members[0].0].f_contiguous()?;
                        comm.all_reduce_into(
                            &grad.f_view([-1])?,
                            &bucket.reduced,
                            op(&bucket.reduced),
                        )?;
                    }
                }
                for &(i, offset, n) in &bucket.members {
                    let grad = &grads[i];
                    let sum = bucket
                        .reduced
                        .f_narrow(0, offset, n)?
                        .f_view(grad.size().as_slice())?;
                    if averaged(&bucket.reduced) {
                        grad.shallow_clone().f_copy_(&sum)?;
                    } else if grad.kind() == sum.kind() && grad.is_contiguous() {
                        // Divided and written back in one pass.
                        let _ = sum.f_mul_out(grad, &scale)?;
                    } else {
                        grad.shallow_clone().f_copy_(&sum.f_mul(&scale)?)?;
                    }
                }
            }
            Ok(())
        })
    }
}

/// Makes every rank's variables equal to rank 0's.
pub(crate) fn broadcast_parameters(comm: &Comm, variables: &[Tensor]) -> Result<()> {
    tch::no_grad(|| {
        for variable in variables {
            let value = comm.broadcast(variable, 0)?;
            variable.shallow_clone().f_copy_(&value)?;
        }
        Ok(())
    })
}

/// A seed every rank agrees on: rank 0's.
pub(crate) fn agree_on_seed(comm: &Comm, seed: u64) -> Result<u64> {
    let value = comm.broadcast(&Tensor::from_slice(&[seed as i64]), 0)?;
    Ok(value.f_int64_value(&[0])? as u64)
}

/// The `ddp` strategy with parameters, for `strategy = DdpStrategy::new()...`,
/// as Lightning's `strategy=DDPStrategy(...)`.
///
/// ```
/// use std::time::Duration;
/// use fabric::{DdpStrategy, Fabric};
///
/// let fabric = Fabric::builder()
///     .accelerator("cpu")
///     .strategy(DdpStrategy::new().bucket_cap_mb(50.0).collective_timeout(Duration::from_secs(600)))
///     .build()
///     .unwrap();
/// assert_eq!(fabric.strategy(), fabric::Strategy::Ddp);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DdpStrategy {
    pub(crate) bucket_cap_mb: Option<f64>,
    pub(crate) collective_timeout: Option<std::time::Duration>,
    pub(crate) failure_timeout: Option<std::time::Duration>,
}

impl DdpStrategy {
    /// `ddp` with PyTorch's defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// The size of the gradient buckets, in megabytes (25 by default).
    pub fn bucket_cap_mb(mut self, megabytes: f64) -> Self {
        self.bucket_cap_mb = Some(megabytes);
        self
    }

    /// How long a collective may wait for the other ranks (30 minutes by
    /// default).
    pub fn collective_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.collective_timeout = Some(timeout);
        self
    }

    /// How long a rank may take to end once the run failed elsewhere (10
    /// seconds by default).
    pub fn failure_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.failure_timeout = Some(timeout);
        self
    }
}
