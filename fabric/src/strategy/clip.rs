//! Gradient clipping, by norm or by value, as Lightning's
//! `fabric.clip_gradients`.

use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::shim;

/// How [`Fabric::clip_gradients`](crate::Fabric::clip_gradients) clips, as
/// Lightning's `clip_val` and `max_norm`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum GradClip {
    /// Scales all gradients together so that their total norm is at most
    /// `max_norm`.
    Norm {
        /// The largest total norm allowed.
        max_norm: f64,
        /// The norm's order: 2.0 for Euclidean, `f64::INFINITY` for max.
        norm_type: f64,
        /// Whether a non-finite total norm is an error (Lightning's default)
        /// rather than clipped anyway.
        error_if_nonfinite: bool,
    },
    /// Clamps every gradient element into `[-value, value]`.
    Value(f64),
}

impl GradClip {
    /// Clipping by Euclidean norm, erroring on a non-finite norm.
    pub fn norm(max_norm: f64) -> Self {
        GradClip::Norm {
            max_norm,
            norm_type: 2.0,
            error_if_nonfinite: true,
        }
    }

    /// Clipping by value.
    pub fn value(value: f64) -> Self {
        GradClip::Value(value)
    }
}

/// Clips `grads` in place; the total norm before clipping for
/// [`GradClip::Norm`].
pub(crate) fn clip(grads: &[Tensor], clip: GradClip) -> Result<Option<f64>> {
    tch::no_grad(|| match clip {
        GradClip::Value(value) => {
            if !(value.is_finite() && value >= 0.0) {
                return Err(Error::InvalidArgument(format!(
                    "clip value must be finite and not negative, got {value}"
                )));
            }
            for grad in grads {
                let _ = grad.shallow_clone().f_clamp_(-value, value)?;
            }
            Ok(None)
        }
        GradClip::Norm {
            max_norm,
            norm_type,
            error_if_nonfinite,
        } => {
            let valid = max_norm.is_finite() && max_norm >= 0.0 && norm_type > 0.0;
            if !valid {
                return Err(Error::InvalidArgument(format!(
                    "clipping by norm needs a finite max_norm >= 0 and a norm_type > 0, got max_norm = {max_norm}, norm_type = {norm_type}"
                )));
            }
            if grads.is_empty() {
                return Ok(Some(0.0));
            }
            let total = total_norm(grads, norm_type)?;
            let total_value = total.f_double_value(&[])?;
            if !total_value.is_finite() && error_if_nonfinite {
                return Err(Error::NonFiniteNorm { norm: total_value });
            }
            // As torch: `max_norm / (total + 1e-6)` clamped to 1, in the
            // norm's dtype, multiplied into every gradient (by 1 when the
            // norm is within bounds, which changes nothing).
            let coefficient = total
                .f_add_scalar(1e-6)?
                .f_reciprocal()?
                .f_mul_scalar(max_norm)?
                .f_clamp_max(1.0)?;
            for ((device, _), members) in by_device_and_kind(grads)? {
                shim::foreach_mul_(&members, &coefficient.f_to_device(device)?)?;
            }
            Ok(Some(total_value))
        }
    })
}

/// Tensors of one device and kind.
type Grouped = ((Device, Kind), Vec<Tensor>);

/// `grads` grouped by device and kind, in order of first appearance, as
/// torch's `_group_tensors_by_device_and_dtype`.
fn by_device_and_kind(grads: &[Tensor]) -> Result<Vec<Grouped>> {
    let mut groups: Vec<Grouped> = Vec::new();
    for grad in grads {
        let key = (grad.device(), grad.f_kind()?);
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, members)) => members.push(grad.shallow_clone()),
            None => groups.push((key, vec![grad.shallow_clone()])),
        }
    }
    Ok(groups)
}

/// The total `norm_type`-norm of `grads`, as if they were one vector, as a
/// zero-dimensional tensor on the first gradient's device, as
/// `torch.nn.utils.get_total_norm` computes it: the norm of each gradient
/// with `_foreach_norm`, one call per device and dtype, in the gradient's
/// dtype (in float32 for 16-bit gradients, whose norm would overflow at
/// 65504 in float16), then the norm of those norms, in the widest of their
/// dtypes. No gradient is converted or copied.
pub(crate) fn total_norm(grads: &[Tensor], norm_type: f64) -> Result<Tensor> {
    let first = grads[0].device();
    let mut norms = Vec::with_capacity(grads.len());
    for ((_, kind), members) in by_device_and_kind(grads)? {
        let dtype = matches!(kind, Kind::Half | Kind::BFloat16).then_some(Kind::Float);
        norms.extend(shim::foreach_norm(&members, norm_type, dtype)?);
    }
    let widest = if norms.iter().any(|n| n.kind() == Kind::Double) {
        Kind::Double
    } else {
        Kind::Float
    };
    let norms = norms
        .iter()
        .map(|n| n.f_to_device(first)?.f_to_kind(widest))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    // `norm` with no dimensions is ATen's `linalg_vector_norm`.
    Ok(Tensor::f_stack(&norms, 0)?.f_norm_scalaropt_dim(norm_type, [0i64; 0].as_slice(), false)?)
}
