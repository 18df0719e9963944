//! Precision: the dtype of parameters and inputs, and the autocast scope.

use fabric_options::Precision;
use tch::{Kind, Tensor, nn::VarStore};

use crate::accelerator::ResolvedAccelerator;
use crate::error::{Error, Result};

/// The precision a run uses, resolved from the `precision` option.
///
/// The `-true` modes cast parameters and floating-point inputs to their
/// dtype. Mixed modes (autocast) are not available yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RunPrecision {
    mode: Precision,
    kind: Kind,
}

impl RunPrecision {
    pub(crate) fn resolve(mode: Precision, accelerator: ResolvedAccelerator) -> Result<Self> {
        let kind = match mode {
            Precision::True64 => Kind::Double,
            Precision::True32 => Kind::Float,
            Precision::True16 => Kind::Half,
            Precision::TrueBf16 => Kind::BFloat16,
            Precision::Mixed16 | Precision::MixedBf16 => {
                return Err(Error::NotAvailableYet {
                    option: "precision",
                    value: format!("\"{mode}\""),
                    reason: "mixed precision (autocast and loss scaling) is not implemented yet; use \"32-true\", or \"bf16-true\" to train in bfloat16".into(),
                });
            }
            Precision::TransformerEngine | Precision::TransformerEngineFloat16 => {
                return Err(Error::NotAvailableYet {
                    option: "precision",
                    value: format!("\"{mode}\""),
                    reason: "NVIDIA Transformer Engine is a Python library with no libtorch binding; use \"bf16-true\"".into(),
                });
            }
        };
        if kind == Kind::Double && accelerator == ResolvedAccelerator::Mps {
            return Err(Error::InvalidArgument(
                "\"64-true\" needs float64, which MPS does not support; use \"32-true\"".into(),
            ));
        }
        Ok(RunPrecision { mode, kind })
    }

    /// The mode, such as `Precision::True64`.
    pub(crate) fn mode(self) -> Precision {
        self.mode
    }

    /// The dtype of parameters and inputs.
    pub(crate) fn kind(self) -> Kind {
        self.kind
    }

    /// Casts the floating-point variables of `vs` to this precision's dtype.
    pub(crate) fn convert_module(self, vs: &mut VarStore) {
        match self.kind {
            Kind::Double => vs.double(),
            Kind::Half => vs.half(),
            Kind::BFloat16 => vs.bfloat16(),
            _ => vs.float(),
        }
    }

    /// Casts a floating-point input to this precision's dtype; other
    /// tensors (labels, indices) pass unchanged.
    pub(crate) fn convert_input(self, xs: &Tensor) -> Tensor {
        if xs.is_floating_point() && xs.kind() != self.kind {
            xs.to_kind(self.kind)
        } else {
            xs.shallow_clone()
        }
    }

    /// Casts a module's output for the user, as Lightning does: 16-bit
    /// `-true` outputs come back as `f32`; `64-true` stays `f64` end to end.
    pub(crate) fn convert_output(self, ys: Tensor) -> Tensor {
        if matches!(self.kind, Kind::Half | Kind::BFloat16) && ys.is_floating_point() {
            ys.to_kind(Kind::Float)
        } else {
            ys
        }
    }
}

/// The scope of [`Fabric::autocast`](crate::Fabric::autocast): operations run
/// inside it use the precision's autocast dtype. For the `-true` modes,
/// which need no autocast, it changes nothing.
#[must_use = "autocast applies while the guard is alive"]
#[derive(Debug)]
pub struct AutocastGuard {
    _not_send: std::marker::PhantomData<*const ()>,
}

impl AutocastGuard {
    pub(crate) fn new(_precision: RunPrecision) -> Self {
        AutocastGuard {
            _not_send: std::marker::PhantomData,
        }
    }
}
