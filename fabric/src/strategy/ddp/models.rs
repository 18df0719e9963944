//! The models `ddp` set up, each with its trainable parameters, which of
//! them received a gradient since its last reduction, and its own gradient
//! buckets; and the decision, shared by every rank, of which models a
//! backward pass reduces.

use std::hash::{Hash, Hasher};

use tch::{Kind, Tensor};

use super::super::buckets::{BucketJob, GradientBuckets};
use crate::collectives::{Comm, ReduceOp};
use crate::error::{Error, Result};
use crate::shim::hooks::GradReadyHooks;

/// One model set up under `ddp`.
pub(super) struct DdpModel {
    /// Its trainable parameters, in the order of their names.
    params: Vec<Tensor>,
    /// Their names for messages (`` `fc.weight` of model 2 ``).
    names: Vec<String>,
    /// Which parameters received a gradient since the last reduction.
    used: Vec<bool>,
    buckets: GradientBuckets,
    /// The number of its first parameter among the strategy's gradient
    /// hooks (the others follow in order).
    first_hook: usize,
    /// Whether backward passes average its gradients (off under
    /// [`no_backward_sync`](crate::Fabric::no_backward_sync_for) for it).
    pub(super) sync: bool,
}

/// A gradient as it was before a backward pass: the tensor (held, so its
/// memory cannot be reused by another) and its version, which accumulating
/// into it in place bumps.
type GradBefore = Option<(Tensor, i64)>;

impl DdpModel {
    pub(super) fn new(params: Vec<Tensor>, names: Vec<String>, first_hook: usize) -> Self {
        let used = vec![false; params.len()];
        DdpModel {
            params,
            names,
            used,
            buckets: GradientBuckets::default(),
            first_hook,
            sync: true,
        }
    }

    /// Its trainable parameters.
    pub(super) fn params(&self) -> &[Tensor] {
        &self.params
    }

    /// Forgets the gradients seen since the last reduction.
    fn clear(&mut self) {
        self.used.iter_mut().for_each(|u| *u = false);
    }

    /// The gradients of the model before a backward pass, to tell
    /// afterwards which parameters it reached.
    pub(super) fn before_backward(&self) -> Result<Vec<GradBefore>> {
        let states = self
            .params
            .iter()
            .map(|p| {
                let grad = p.grad();
                Ok(if grad.defined() {
                    let version = grad.f_internal_version()?;
                    Some((grad, version))
                } else {
                    None
                })
            })
            .collect::<Result<_>>()?;
        Ok(states)
    }

    /// Records which parameters the backward pass gave a gradient: one
    /// that had none and has one now, or whose gradient was replaced or
    /// added to (its version moved).
    pub(super) fn after_backward(&mut self, before: Vec<GradBefore>) -> Result<()> {
        for ((param, used), before) in self.params.iter().zip(&mut self.used).zip(before) {
            let grad = param.grad();
            let reached = match before {
                None => grad.defined(),
                Some((old, version)) => {
                    !grad.defined()
                        || grad.data_ptr() != old.data_ptr()
                        || grad.f_internal_version()? != version
                }
            };
            *used |= reached;
        }
        Ok(())
    }
}

/// What a rank is about to do when `ddp`'s ranks first check that they
/// agree, before any collective whose shape depends on the models.
pub(super) enum Step {
    /// Setting up model `number` (from 1), with `variables` variables whose
    /// names, shapes, kinds and trainability hash to `signature`.
    Setup {
        number: usize,
        variables: usize,
        signature: u64,
    },
    /// Averaging gradients after a backward pass, with `models` models set
    /// up, `params` trainable parameters in all, `syncing` a mask of the
    /// models whose gradients are averaged.
    Backward {
        models: usize,
        params: usize,
        syncing: u64,
    },
}

impl Step {
    fn values(&self) -> [i64; 4] {
        // Masked to 62 bits: negated, they stay in range.
        let mask = (1u64 << 62) - 1;
        match *self {
            Step::Setup {
                number,
                variables,
                signature,
            } => [
                1,
                number as i64,
                variables as i64,
                (signature & mask) as i64,
            ],
            Step::Backward {
                models,
                params,
                syncing,
            } => [2, models as i64, params as i64, (syncing & mask) as i64],
        }
    }

    fn describe(&self) -> String {
        match *self {
            Step::Setup { number, .. } => format!("setting up model {number}"),
            Step::Backward { models, .. } => format!(
                "averaging gradients after a backward pass with {models} model{} set up",
                if models == 1 { "" } else { "s" }
            ),
        }
    }
}

/// The signature of a model's variables (sorted by name), the same on every
/// rank that sets up the same model.
pub(super) fn signature(variables: &[(String, Tensor)]) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    for (name, variable) in variables {
        name.hash(&mut hasher);
        variable.size().hash(&mut hasher);
        format!("{:?}", variable.kind()).hash(&mut hasher);
        variable.requires_grad().hash(&mut hasher);
    }
    hasher.finish()
}

/// Checks, in one small all-reduce of fixed size (which every step of
/// every rank makes first, so that it always matches), that every rank is
/// about to take the same `step`; a clear error on every rank if not,
/// instead of collectives that do not match.
pub(super) fn agree(comm: &Comm, step: &Step) -> Result<()> {
    let local = step.values();
    let both: Vec<i64> = local
        .iter()
        .copied()
        .chain(local.iter().map(|v| -v))
        .collect();
    let max = comm.all_reduce(&Tensor::from_slice(&both), ReduceOp::Max)?;
    let max = Vec::<i64>::try_from(&max.f_to_kind(Kind::Int64)?)?;
    let (high, low): (Vec<i64>, Vec<i64>) =
        (max[..4].to_vec(), max[4..].iter().map(|v| -v).collect());
    if high == low {
        return Ok(());
    }
    let rank = comm.rank();
    let advice = "every rank must set up the same models, in the same order, with the same parameters (names, shapes, dtypes, which are trainable), and use no_backward_sync alike";
    let message = if high[0] != low[0] {
        let other = match step {
            Step::Setup { .. } => "another rank is averaging gradients after a backward pass",
            Step::Backward { .. } => "another rank is still setting up a model",
        };
        format!(
            "the ranks are out of step under ddp: rank {rank} is {}, while {other} (they set up different numbers of models); {advice}",
            step.describe()
        )
    } else if high[1] != low[1] {
        format!(
            "the ranks set up different numbers of models under ddp (from {} to {}; rank {rank} is {}); {advice}",
            low[1],
            high[1],
            step.describe()
        )
    } else {
        match step {
            Step::Setup {
                number, variables, ..
            } => format!(
                "model {number} differs between the ranks under ddp: its variables are not the same on every rank (rank {rank} has {variables}, the ranks from {} to {}, or their names, shapes, dtypes or trainability differ); {advice}",
                low[2], high[2]
            ),
            Step::Backward { .. } if high[2] != low[2] => format!(
                "the ranks' models have different numbers of trainable parameters under ddp (from {} to {}); {advice}",
                low[2], high[2]
            ),
            Step::Backward { .. } => format!(
                "the ranks average the gradients of different models after this backward pass (no_backward_sync is on for a model on some ranks only; rank {rank}); {advice}"
            ),
        }
    };
    Err(Error::Distributed(message))
}

/// The [`Step::Backward`] of `models`.
fn backward_step(models: &[DdpModel]) -> Step {
    Step::Backward {
        models: models.len(),
        params: models.iter().map(|m| m.params.len()).sum(),
        syncing: models
            .iter()
            .enumerate()
            .filter(|(_, m)| m.sync)
            .fold(0, |mask, (i, _)| mask | (1u64 << (i % 62))),
    }
}

/// What the ranks tell each other before reducing: for each model, how many
/// ranks reached some of its parameters, and for each parameter, how many
/// ranks gave it a gradient.
fn usage_counts(models: &[DdpModel], comm: Option<&Comm>) -> Result<Vec<i64>> {
    let mut local = Vec::new();
    for model in models {
        local.push(i64::from(model.used.iter().any(|&u| u)));
        local.extend(model.used.iter().map(|&u| i64::from(u)));
    }
    let Some(comm) = comm else {
        return Ok(local);
    };
    let counts = comm.all_reduce(&Tensor::from_slice(&local), ReduceOp::Sum)?;
    Ok(Vec::<i64>::try_from(&counts.f_to_kind(Kind::Int64)?)?)
}

/// The models whose gradients are averaged now, each with the parameters
/// that take part, from every rank's usage counts: those that average
/// ([`DdpModel::sync`]) and took part in the backward passes since their
/// last reduction (some rank's backward reached some of their parameters),
/// the same models on every rank; a parameter that no rank reached keeps
/// its gradient as it is.
///
/// A parameter of such a model that some rank's backward did not reach is
/// an error naming it, unless `allow_unused` (`find_unused_parameters`):
/// then it takes part with a zero gradient on the ranks that did not reach
/// it.
fn decide(
    models: &mut [DdpModel],
    counts: &[i64],
    world: i64,
    rank: usize,
    allow_unused: bool,
) -> Result<Vec<(usize, Vec<usize>)>> {
    let mut at = 0;
    let mut missing = Vec::new();
    let mut taking_part = Vec::new();
    for (m, model) in models.iter().enumerate() {
        let model_count = counts[at];
        let param_counts = &counts[at + 1..at + 1 + model.params.len()];
        at += 1 + model.params.len();
        if model_count == 0 || !model.sync {
            continue;
        }
        if !allow_unused {
            for (i, &count) in param_counts.iter().enumerate() {
                if count < world {
                    let whose = if model.used[i] {
                        "on another rank"
                    } else {
                        "on this rank"
                    };
                    missing.push(format!("{} ({whose})", model.names[i]));
                }
            }
        }
        let reduced: Vec<usize> = (0..model.params.len())
            .filter(|&i| param_counts[i] > 0)
            .collect();
        taking_part.push((m, reduced));
    }
    if !missing.is_empty() {
        for (m, _) in &taking_part {
            models[*m].clear();
        }
        let shown = missing.len().min(5);
        let more = if missing.len() > shown {
            format!(" and {} more", missing.len() - shown)
        } else {
            String::new()
        };
        return Err(Error::Distributed(format!(
            "on rank {rank}, parameters of a model that took part in this backward received no gradient: {}{more}. \
             ddp reduces every trainable parameter of each model the backward pass reached; if some are not used in producing the loss, \
             pass find_unused_parameters (`strategy = \"ddp_find_unused_parameters_true\"` or `DdpStrategy::new().find_unused_parameters(true)`) \
             so that they take part with a zero gradient, or freeze them",
            missing[..shown].join(", ")
        )));
    }
    Ok(taking_part)
}

/// The buckets of the models taking part, in the order every rank runs
/// them: the last model set up first (a backward pass usually reaches it
/// first), each model's buckets from its last parameters to its first.
fn jobs(
    models: &mut [DdpModel],
    taking_part: &[(usize, Vec<usize>)],
    bucket_bytes: usize,
) -> Result<Vec<BucketJob>> {
    let mut jobs = Vec::new();
    for (m, reduced) in taking_part.iter().rev() {
        let model = &mut models[*m];
        let params: Vec<Tensor> = reduced
            .iter()
            .map(|&i| model.params[i].shallow_clone())
            .collect();
        let indices: Vec<usize> = reduced.iter().map(|&i| model.first_hook + i).collect();
        jobs.extend(model.buckets.jobs(&params, &indices, bucket_bytes)?);
    }
    Ok(jobs)
}

/// Reduces, after a backward pass, the gradients of the models that take
/// part (see [`decide`]). Averages over the ranks when `comm` is given.
/// A parameter some other rank used takes part with a zero gradient here,
/// so that the average counts this rank.
pub(super) fn reduce(
    models: &mut [DdpModel],
    comm: Option<&Comm>,
    allow_unused: bool,
    bucket_bytes: usize,
) -> Result<()> {
    if let Some(comm) = comm {
        agree(comm, &backward_step(models))?;
    }
    let counts = usage_counts(models, comm)?;
    let world = comm.map_or(1, Comm::size) as i64;
    let rank = comm.map_or(0, Comm::rank);
    let taking_part = decide(models, &counts, world, rank, allow_unused)?;
    if let Some(comm) = comm {
        for job in jobs(models, &taking_part, bucket_bytes)? {
            job.run(comm)?;
        }
    }
    for (m, _) in taking_part {
        models[m].clear();
    }
    Ok(())
}

/// Runs the backward pass of `loss` while averaging the gradients of the
/// models that take part, each bucket all-reduced on a communication thread
/// as soon as the backward pass has accumulated all its gradients, as
/// PyTorch's DDP does; returns once every bucket is averaged.
///
/// Which parameters the pass reaches is known before it runs (the
/// accumulators in the loss's graph), so the ranks agree beforehand on
/// which models and parameters take part, and run the same buckets in the
/// same order; a bucket whose parameters this rank does not reach is ready
/// at once, and a bucket still incomplete when the backward pass ends (it
/// failed) runs with the gradients as they are, so that no rank waits for
/// another forever. The buckets and their arithmetic are those of
/// [`reduce`]: the averages are the same to the bit.
pub(super) fn backward_overlapped(
    models: &mut [DdpModel],
    comm: &mut Comm,
    hooks: &GradReadyHooks,
    loss: &Tensor,
    allow_unused: bool,
    bucket_bytes: usize,
) -> Result<()> {
    let reached = hooks.reached(loss)?;
    agree(comm, &backward_step(models))?;
    for model in models.iter_mut() {
        for (i, used) in model.used.iter_mut().enumerate() {
            *used |= reached[model.first_hook + i];
        }
    }
    let counts = usage_counts(models, Some(comm))?;
    let world = comm.size() as i64;
    let taking_part = match decide(models, &counts, world, comm.rank(), allow_unused) {
        Ok(taking_part) => taking_part,
        Err(error) => {
            // Gradients as without ddp, then the error, as `reduce` does.
            loss.f_backward()?;
            return Err(error);
        }
    };
    let bucket_jobs = jobs(models, &taking_part, bucket_bytes)?;
    // What each bucket waits for: its parameters this pass reaches.
    let pending: Vec<Vec<usize>> = bucket_jobs
        .iter()
        .map(|job| job.indices().filter(|&i| reached[i]).collect())
        .collect();
    hooks.arm();
    let waiter = hooks.waiter();
    // The communication thread borrows the communicator exclusively: this
    // thread makes no collective until it is joined (MPI serialises the
    // calls of the process anyway, `collectives::world`). It only packs and
    // all-reduces; the averages are written back into the gradients here,
    // once the backward pass is over (see `BucketJob::all_reduce`).
    let thread_comm = &mut *comm;
    let (backward, reduced) = std::thread::scope(|scope| {
        let communication = std::thread::Builder::new()
            .name("fabric-ddp-reduce".into())
            .spawn_scoped(scope, move || {
                let reduced = bucket_jobs
                    .iter()
                    .zip(&pending)
                    .try_for_each(|(job, pending)| {
                        waiter.wait(pending);
                        job.all_reduce(thread_comm)
                    });
                (bucket_jobs, reduced)
            });
        // Whatever happens to the backward pass (an error, a panic), the
        // waiting thread is released.
        let finish = FinishOnDrop(hooks);
        let backward = loss.f_backward();
        drop(finish);
        let reduced = match communication {
            Ok(thread) => match thread.join() {
                Ok((bucket_jobs, reduced)) => reduced.map(|()| Some(bucket_jobs)),
                Err(_) => Err(Error::Distributed(
                    "ddp's gradient reduction thread panicked".into(),
                )),
            },
            Err(_) => Ok(None),
        };
        (backward, reduced)
    });
    // The averages go back into the gradients; without a thread (the
    // system refused one), the buckets are all-reduced here first, after
    // the backward pass, as the other ranks expect.
    let reduced = reduced.and_then(|reduced| {
        let world = comm.size();
        match reduced {
            Some(bucket_jobs) => bucket_jobs.iter().try_for_each(|job| job.write_back(world)),
            None => jobs(models, &taking_part, bucket_bytes)?
                .iter()
                .try_for_each(|job| job.run(comm)),
        }
    });
    for (m, _) in taking_part {
        models[m].clear();
    }
    backward?;
    reduced
}

/// Ends an armed pass of the hooks when dropped, so that a thread waiting
/// on them returns even if the backward pass unwinds.
struct FinishOnDrop<'a>(&'a GradReadyHooks);

impl Drop for FinishOnDrop<'_> {
    fn drop(&mut self) {
        self.0.finish();
    }
}
