//! Strategies: how many processes a run has, who starts them, and the
//! gradient averaging of `ddp`.

use fabric_options::{Devices, Strategy};
use tch::Tensor;

use crate::collectives::{MpiComm, ReduceOp};
use crate::environment::ClusterEnvironment;
use crate::error::{Error, Result};

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
    let processes = selected * num_nodes;
    if processes == 1 {
        let strategy = if strategy == Strategy::Auto {
            Strategy::SingleDevice
        } else {
            strategy
        };
        if strategy == Strategy::Dp {
            return Err(not_dp());
        }
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
        Strategy::Dp => Err(not_dp()),
        other => Err(Error::InvalidArgument(format!(
            "\"{other}\" runs on one device, but {processes} were selected; use \"ddp\""
        ))),
    }
}

fn not_dp() -> Error {
    Error::NotAvailableYet {
        option: "strategy",
        value: "\"dp\"".into(),
        reason: "data parallelism in one process over several CUDA devices is not implemented; use \"ddp\" (one process per device), which is also faster".into(),
    }
}

/// The default gradient bucket size, as PyTorch's DDP.
pub(crate) const DEFAULT_BUCKET_BYTES: usize = 25 * 1024 * 1024;

/// Averages the gradients of `params` over every rank, in buckets of about
/// `bucket_bytes`: each bucket is flattened into one tensor, all-reduced in
/// one MPI call, and copied back.
pub(crate) fn average_gradients(
    comm: &MpiComm,
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
    let mut start = 0;
    while start < grads.len() {
        let kind = grads[start].kind();
        let mut end = start;
        let mut bytes = 0;
        while end < grads.len()
            && grads[end].kind() == kind
            && (end == start || bytes < bucket_bytes)
        {
            bytes += grads[end].numel() * kind.elt_size_in_bytes();
            end += 1;
        }
        let bucket = &grads[start..end];
        let flat = Tensor::f_cat(&bucket.iter().map(|g| g.view([-1])).collect::<Vec<_>>(), 0)?;
        let averaged = comm.all_reduce(&flat, ReduceOp::Mean)?.f_to_kind(kind)?;
        let mut offset = 0;
        tch::no_grad(|| -> Result<()> {
            for grad in bucket {
                let n = grad.numel() as i64;
                let mut grad = grad.shallow_clone();
                grad.f_copy_(
                    &averaged
                        .f_narrow(0, offset, n)?
                        .f_view(grad.size().as_slice())?,
                )?;
                offset += n;
            }
            Ok(())
        })?;
        start = end;
    }
    Ok(())
}

/// Makes every rank's variables equal to rank 0's.
pub(crate) fn broadcast_parameters(comm: &MpiComm, variables: &[Tensor]) -> Result<()> {
    tch::no_grad(|| {
        for variable in variables {
            let value = comm.broadcast(variable, 0)?;
            variable.shallow_clone().f_copy_(&value)?;
        }
        Ok(())
    })
}

/// A seed every rank agrees on: rank 0's.
pub(crate) fn agree_on_seed(comm: &MpiComm, seed: u64) -> Result<u64> {
    let value = comm.broadcast(&Tensor::from_slice(&[seed as i64]), 0)?;
    Ok(value.f_int64_value(&[0])? as u64)
}
