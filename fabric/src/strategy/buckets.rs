//! `ddp`'s gradient buckets: gradients packed into flat buffers of about
//! `bucket_cap_mb` and all-reduced one bucket at a time, as PyTorch's DDP.

use tch::{Kind, Tensor};

use crate::collectives::{Comm, ReduceOp};
use crate::error::{Error, Result};

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
    ///
    /// `names` describe the parameters for messages (`names[i]` is
    /// `params[i]`'s).
    pub(crate) fn average(
        &mut self,
        comm: &Comm,
        params: &[Tensor],
        names: &[String],
        bucket_bytes: usize,
    ) -> Result<()> {
        let grads: Vec<Tensor> = params.iter().map(Tensor::grad).collect();
        if let Some(i) = grads.iter().position(|g| !g.defined()) {
            return Err(Error::Distributed(format!(
                "parameter {} (shape {:?}) received no gradient on rank {}: under ddp every trainable parameter must take part in the loss",
                names.get(i).map_or("?", String::as_str),
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
