//! Gradient clipping, by norm or by value, as Lightning's
//! `fabric.clip_gradients`.

use tch::{Kind, Tensor};

use crate::error::{Error, Result};

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
            let norms = grads
                .iter()
                .map(|g| {
                    g.f_to_kind(Kind::Double)?.f_norm_scalaropt_dim(
                        norm_type,
                        [0i64; 0].as_slice(),
                        false,
                    )
                })
                .collect::<std::result::Result<Vec<_>, _>>()?;
            let norms = Tensor::f_stack(&norms, 0)?;
            let total = if norm_type.is_infinite() {
                norms.f_max()?.f_double_value(&[])?
            } else {
                norms
                    .f_norm_scalaropt_dim(norm_type, [0i64; 0].as_slice(), false)?
                    .f_double_value(&[])?
            };
            if !total.is_finite() && error_if_nonfinite {
                return Err(Error::NonFiniteNorm { norm: total });
            }
            let coefficient = max_norm / (total + 1e-6);
            if coefficient < 1.0 {
                for grad in grads {
                    let _ = grad.shallow_clone().f_mul_scalar_(coefficient)?;
                }
            }
            Ok(Some(total))
        }
    })
}
