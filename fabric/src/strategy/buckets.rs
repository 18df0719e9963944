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

/// One bucket to all-reduce, with what it needs to run on any thread: its
/// parameters and buffers (shallow copies).
pub(crate) struct BucketJob {
    /// (parameter, offset, number of elements, the parameter's index in
    /// the caller's numbering).
    members: Vec<(Tensor, i64, i64, usize)>,
    packed: Option<Tensor>,
    reduced: Tensor,
}

impl BucketJob {
    /// The caller's indices of the bucket's parameters.
    pub(crate) fn indices(&self) -> impl Iterator<Item = usize> + '_ {
        self.members.iter().map(|m| m.3)
    }

    /// Packs the bucket's gradients, all-reduces them and writes the average
    /// back into the gradients ([`all_reduce`](Self::all_reduce) then
    /// [`write_back`](Self::write_back)). A parameter without a gradient
    /// takes part with zeros and receives the average.
    pub(crate) fn run(&self, comm: &Comm) -> Result<()> {
        self.all_reduce(comm)?;
        self.write_back(comm.size())
    }

    /// Whether the reduction averages as it goes (NCCL, scaling each rank's
    /// values first, so 16-bit gradients cannot overflow in the sum) rather
    /// than summing (MPI; the sums are divided on the way back).
    fn averages(&self) -> bool {
        self.reduced.device().is_cuda()
    }

    /// Packs the bucket's gradients and all-reduces them into the bucket's
    /// buffer. It only reads the gradients, so it may run while the
    /// backward pass goes on: a gradient may share its memory with a tensor
    /// the rest of the pass still reads (the accumulator can adopt the
    /// incoming gradient, a view of it included), so writing it back must
    /// wait for the end of the pass.
    pub(crate) fn all_reduce(&self, comm: &Comm) -> Result<()> {
        let op = if self.averages() {
            ReduceOp::Mean
        } else {
            ReduceOp::Sum
        };
        tch::no_grad(|| {
            match &self.packed {
                Some(packed) => {
                    for &(ref param, offset, n, _) in &self.members {
                        let grad = param.grad();
                        let mut slot = packed.f_narrow(0, offset, n)?;
                        if grad.defined() {
                            slot.f_copy_(&grad.f_reshape([-1])?)?;
                        } else {
                            let _ = slot.f_zero_()?;
                        }
                    }
                    comm.all_reduce_into(packed, &self.reduced, op)?;
                }
                None => {
                    let grad = self.members[0].0.grad();
                    let grad = if grad.defined() {
                        grad.f_contiguous()?
                    } else {
                        self.reduced.f_zeros_like()?
                    };
                    comm.all_reduce_into(&grad.f_view([-1])?, &self.reduced, op)?;
                }
            }
            Ok(())
        })
    }

    /// Writes the average of an [`all_reduce`](Self::all_reduce) over
    /// `world` ranks back into the gradients (a parameter without one gets
    /// it as its gradient).
    pub(crate) fn write_back(&self, world: usize) -> Result<()> {
        let scale = Tensor::from(1.0 / world as f64);
        let averaged = self.averages();
        tch::no_grad(|| {
            for &(ref param, offset, n, _) in &self.members {
                let grad = param.grad();
                let sum = self
                    .reduced
                    .f_narrow(0, offset, n)?
                    .f_view(param.size().as_slice())?;
                if !grad.defined() {
                    let average = if averaged {
                        sum.f_to_dtype(param.kind(), false, true)?
                    } else {
                        sum.f_mul(&scale)?.f_to_kind(param.kind())?
                    };
                    crate::shim::set_grad(param, Some(&average))?;
                } else if averaged {
                    grad.shallow_clone().f_copy_(&sum)?;
                } else if grad.kind() == sum.kind() && grad.is_contiguous() {
                    // Divided and written back in one pass.
                    let _ = sum.f_mul_out(&grad, &scale)?;
                } else {
                    grad.shallow_clone().f_copy_(&sum.f_mul(&scale)?)?;
                }
            }
            Ok(())
        })
    }
}

/// The gradient buckets of `ddp`, allocated once and reused every step, so
/// averaging allocates nothing. A gradient of [`OWN_BUCKET_BYTES`] or more
/// is a bucket of its own, all-reduced straight from the gradient; smaller
/// ones are packed into a flat buffer per bucket first. Each bucket is
/// all-reduced in one MPI call into a second buffer, and the sums come back
/// into the gradients divided by the world size, in one pass. Gradients of
/// 16-bit kinds, which MPI does not carry, travel as f32.
///
/// Buckets are filled from the last parameter to the first, as PyTorch's
/// DDP does: a backward pass usually reaches the last layers first, so the
/// first buckets are the first complete, which lets `ddp` start their
/// all-reduce while the backward pass goes on.
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
        for (i, param) in params.iter().enumerate().rev() {
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

    /// The buckets of `params`, laid out for them (once, while they keep
    /// their shapes and kinds) and ready to run in order, every rank
    /// running the same buckets in the same order. `indices[i]` is
    /// `params[i]`'s number in the jobs.
    pub(crate) fn jobs(
        &mut self,
        params: &[Tensor],
        indices: &[usize],
        bucket_bytes: usize,
    ) -> Result<Vec<BucketJob>> {
        self.lay_out(params, bucket_bytes)?;
        Ok(self
            .buckets
            .iter()
            .map(|bucket| BucketJob {
                members: bucket
                    .members
                    .iter()
                    .map(|&(i, offset, n)| (params[i].shallow_clone(), offset, n, indices[i]))
                    .collect(),
                packed: bucket.packed.as_ref().map(Tensor::shallow_clone),
                reduced: bucket.reduced.shallow_clone(),
            })
            .collect())
    }
}
