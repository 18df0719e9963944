//! The models `ddp` set up, each with its trainable parameters, which of
//! them received a gradient since its last reduction, and its own gradient
//! buckets; and the decision, shared by every rank, of which models a
//! backward pass reduces.

use tch::{Kind, Tensor};

use super::super::buckets::GradientBuckets;
use crate::collectives::{Comm, ReduceOp};
use crate::error::{Error, Result};

/// One model set up under `ddp`.
pub(super) struct DdpModel {
    /// Its trainable parameters, in the order of their names.
    params: Vec<Tensor>,
    /// Their names for messages (`` `fc.weight` of model 2 ``).
    names: Vec<String>,
    /// Which parameters received a gradient since the last reduction.
    used: Vec<bool>,
    buckets: GradientBuckets,
}

/// A gradient as it was before a backward pass: the tensor (held, so its
/// memory cannot be reused by another) and its version, which accumulating
/// into it in place bumps.
type GradBefore = Option<(Tensor, i64)>;

impl DdpModel {
    pub(super) fn new(params: Vec<Tensor>, names: Vec<String>) -> Self {
        let used = vec![false; params.len()];
        DdpModel {
            params,
            names,
            used,
            buckets: GradientBuckets::default(),
        }
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

/// Reduces the gradients of the models that took part in the backward
/// passes since their last reduction (some rank's backward reached some of
/// their parameters), the same models on every rank; the others keep
/// their gradients as they are. Averages over the ranks when `comm` is given.
///
/// A parameter of such a model that some rank's backward did not reach is
/// an error naming it, unless `allow_unused` (`find_unused_parameters`):
/// then it takes part with a zero gradient on the ranks that did not reach
/// it, and one that no rank reached keeps its gradient as it is.
pub(super) fn reduce(
    models: &mut [DdpModel],
    comm: Option<&Comm>,
    allow_unused: bool,
    bucket_bytes: usize,
) -> Result<()> {
    let counts = usage_counts(models, comm)?;
    let world = comm.map_or(1, Comm::size) as i64;
    let rank = comm.map_or(0, Comm::rank);
    let mut at = 0;
    let mut missing = Vec::new();
    let mut taking_part = Vec::new();
    for (m, model) in models.iter().enumerate() {
        let model_count = counts[at];
        let param_counts = &counts[at + 1..at + 1 + model.params.len()];
        at += 1 + model.params.len();
        if model_count == 0 {
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
    for (m, reduced) in taking_part {
        let model = &mut models[m];
        if let Some(comm) = comm {
            let params: Vec<Tensor> = reduced
                .iter()
                .map(|&i| model.params[i].shallow_clone())
                .collect();
            let names: Vec<String> = reduced.iter().map(|&i| model.names[i].clone()).collect();
            // A parameter some other rank used takes part with a zero
            // gradient here, so that the average counts this rank.
            for param in &params {
                if !param.grad().defined() {
                    zero_grad(param)?;
                }
            }
            model.buckets.average(comm, &params, &names, bucket_bytes)?;
        }
        model.clear();
    }
    Ok(())
}

/// Gives `param`, which has no gradient, a gradient of zeros (tch has no
/// setter for `.grad`: a backward pass through `0 * sum(param)` makes one).
fn zero_grad(param: &Tensor) -> Result<()> {
    tch::with_grad(|| param.f_sum(param.kind())?.f_mul_scalar(0.0)?.f_backward())?;
    Ok(())
}
