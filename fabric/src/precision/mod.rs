//! Precision: the dtype of parameters and inputs, autocast, and loss scaling.
//!
//! The `precision` option picks one of the built-in plugins
//! ([`TruePrecision`] for the `-true` modes, [`MixedPrecision`] for the
//! `-mixed` ones); a [`PrecisionPlugin`] of your own can be passed through
//! `plugins` instead, with [`Plugin::precision`](crate::Plugin::precision).

mod autocast;
mod scaler;

pub use autocast::{AutocastGuard, autocast_state};
pub use scaler::{GradScaler, GradScalerConfig, GradScalerState};

use fabric_options::Precision;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};

/// How a run handles numeric precision, as Lightning's `Precision` plugins.
///
/// fabric calls it at fixed points: [`convert_module`](Self::convert_module)
/// in `setup`, [`convert_input`](Self::convert_input) and
/// [`convert_output`](Self::convert_output) around a set-up module's
/// forward pass, which runs under autocast when
/// [`autocast_dtype`](Self::autocast_dtype) says so, and a [`GradScaler`]
/// around `backward` and the optimizer step when
/// [`loss_scaling`](Self::loss_scaling) asks for one.
///
/// ```
/// use fabric::precision::PrecisionPlugin;
/// use fabric::{Fabric, Plugin};
/// use tch::{Kind, Tensor};
///
/// /// Keeps f32 weights but feeds the model f64 inputs cast down to f32.
/// struct Sanitise;
/// impl PrecisionPlugin for Sanitise {
///     fn convert_input(&self, xs: &Tensor) -> Tensor {
///         xs.nan_to_num(0.0, None, None).to_kind(Kind::Float)
///     }
/// }
///
/// let fabric = Fabric::builder().accelerator("cpu").plugin(Plugin::precision(Sanitise)).build().unwrap();
/// assert_eq!(fabric.precision_name(), "Sanitise");
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a precision plugin",
    note = "implement `fabric::precision::PrecisionPlugin` for `{Self}`"
)]
pub trait PrecisionPlugin: Send + Sync + 'static {
    /// A name for messages; the type's name by default.
    fn name(&self) -> &str {
        let full = std::any::type_name::<Self>();
        full.rsplit("::").next().unwrap_or(full)
    }

    /// Rejects a device this precision cannot run on (checked when the
    /// `Fabric` is built).
    fn check_device(&self, device: Device) -> Result<()> {
        let _ = device;
        Ok(())
    }

    /// The dtype parameters have after [`convert_module`](Self::convert_module).
    fn param_kind(&self) -> Kind {
        Kind::Float
    }

    /// Casts a model's variables (in place) when it is set up.
    fn convert_module(&self, vs: &mut VarStore) -> Result<()> {
        let _ = vs;
        Ok(())
    }

    /// Converts a floating-point input before the forward pass: fabric
    /// calls it on each floating-point tensor of a forward pass's arguments
    /// (integer and boolean tensors, such as token ids and masks, are
    /// passed as they are).
    fn convert_input(&self, xs: &Tensor) -> Tensor {
        xs.shallow_clone()
    }

    /// Converts a forward pass's output for the user: fabric calls it on
    /// each tensor of the outputs.
    fn convert_output(&self, ys: Tensor) -> Tensor {
        ys
    }

    /// The dtype the forward pass autocasts to, if any.
    fn autocast_dtype(&self) -> Option<Kind> {
        None
    }

    /// The loss scaler's settings, if losses are to be scaled.
    fn loss_scaling(&self) -> Option<GradScalerConfig> {
        None
    }
}

fn cast_floating(xs: &Tensor, kind: Kind) -> Tensor {
    if xs.is_floating_point() && xs.kind() != kind {
        xs.to_kind(kind)
    } else {
        xs.shallow_clone()
    }
}

fn cast_module(vs: &mut VarStore, kind: Kind) {
    match kind {
        Kind::Double => vs.double(),
        Kind::Half => vs.half(),
        Kind::BFloat16 => vs.bfloat16(),
        _ => vs.float(),
    }
}

/// The `-true` precisions: parameters and floating-point inputs in one
/// dtype. As in Lightning, 16-bit outputs come back as `f32`; `64-true`
/// stays `f64` end to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TruePrecision {
    kind: Kind,
}

impl TruePrecision {
    /// Parameters and inputs in `kind` (`Double`, `Float`, `Half` or
    /// `BFloat16`).
    pub fn new(kind: Kind) -> Result<Self> {
        match kind {
            Kind::Double | Kind::Float | Kind::Half | Kind::BFloat16 => Ok(TruePrecision { kind }),
            other => Err(Error::InvalidArgument(format!(
                "a true precision is one of Double, Float, Half, BFloat16, not {other:?}"
            ))),
        }
    }
}

impl PrecisionPlugin for TruePrecision {
    fn name(&self) -> &str {
        match self.kind {
            Kind::Double => "64-true",
            Kind::Half => "16-true",
            Kind::BFloat16 => "bf16-true",
            _ => "32-true",
        }
    }

    fn check_device(&self, device: Device) -> Result<()> {
        if self.kind == Kind::Double && device == Device::Mps {
            return Err(Error::InvalidArgument(
                "\"64-true\" needs float64, which MPS does not have; use \"32-true\"".into(),
            ));
        }
        Ok(())
    }

    fn param_kind(&self) -> Kind {
        self.kind
    }

    fn convert_module(&self, vs: &mut VarStore) -> Result<()> {
        cast_module(vs, self.kind);
        Ok(())
    }

    fn convert_input(&self, xs: &Tensor) -> Tensor {
        cast_floating(xs, self.kind)
    }

    fn convert_output(&self, ys: Tensor) -> Tensor {
        if matches!(self.kind, Kind::Half | Kind::BFloat16) {
            cast_floating(&ys, Kind::Float)
        } else {
            ys
        }
    }
}

/// The `-mixed` precisions: `f32` parameters, forward pass under autocast,
/// inputs cast to the autocast dtype and outputs back to `f32` (as
/// Lightning's `MixedPrecision`); float16 adds a [`GradScaler`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MixedPrecision {
    dtype: Kind,
    scaler: Option<GradScalerConfig>,
}

impl MixedPrecision {
    /// `bf16-mixed`: bfloat16 autocast, no loss scaling.
    pub fn bf16() -> Self {
        MixedPrecision {
            dtype: Kind::BFloat16,
            scaler: None,
        }
    }

    /// `16-mixed`: float16 autocast with a loss scaler of these settings.
    pub fn fp16(scaler: GradScalerConfig) -> Self {
        MixedPrecision {
            dtype: Kind::Half,
            scaler: Some(scaler),
        }
    }
}

impl PrecisionPlugin for MixedPrecision {
    fn name(&self) -> &str {
        if self.dtype == Kind::Half {
            "16-mixed"
        } else {
            "bf16-mixed"
        }
    }

    fn check_device(&self, device: Device) -> Result<()> {
        match device {
            Device::Cuda(_) => Ok(()),
            Device::Cpu if self.dtype == Kind::BFloat16 => Ok(()),
            Device::Cpu => Err(Error::InvalidArgument(
                "\"16-mixed\" needs a CUDA device: float16 autocast with loss scaling does not run on the CPU; use `precision = \"bf16-mixed\"`".into(),
            )),
            other => Err(Error::InvalidArgument(format!(
                "\"{}\" needs autocast, which fabric runs on the CPU and CUDA devices, not on {other:?}; use \"32-true\"",
                self.name()
            ))),
        }
    }

    fn convert_module(&self, vs: &mut VarStore) -> Result<()> {
        cast_module(vs, Kind::Float);
        Ok(())
    }

    fn convert_input(&self, xs: &Tensor) -> Tensor {
        cast_floating(xs, self.dtype)
    }

    fn convert_output(&self, ys: Tensor) -> Tensor {
        cast_floating(&ys, Kind::Float)
    }

    fn autocast_dtype(&self) -> Option<Kind> {
        Some(self.dtype)
    }

    fn loss_scaling(&self) -> Option<GradScalerConfig> {
        self.scaler
    }
}

/// Lightning's `BitsandbytesPrecision` (4- and 8-bit weight quantisation).
/// bitsandbytes is a Python/CUDA library with no libtorch binding, so a run
/// configured with it fails to build with an error naming what to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BitsandbytesPrecision {
    mode: String,
}

impl BitsandbytesPrecision {
    /// The plugin with Lightning's `mode` (`"nf4"`, `"nf4-dq"`, `"fp4"`,
    /// `"int8"`, ...).
    pub fn new(mode: impl Into<String>) -> Self {
        BitsandbytesPrecision { mode: mode.into() }
    }
}

impl PrecisionPlugin for BitsandbytesPrecision {
    fn name(&self) -> &str {
        "bitsandbytes"
    }

    fn check_device(&self, _device: Device) -> Result<()> {
        Err(Error::NotAvailableYet {
            option: "plugins",
            value: format!("BitsandbytesPrecision(mode = \"{}\")", self.mode),
            reason: "bitsandbytes is a Python/CUDA library with no libtorch binding; use `precision = \"bf16-true\"` to halve the weights' memory".into(),
        })
    }
}

/// The built-in plugin for a `precision` value.
pub(crate) fn from_option(mode: Precision) -> Result<Box<dyn PrecisionPlugin>> {
    Ok(match mode {
        Precision::True64 => Box::new(TruePrecision { kind: Kind::Double }),
        Precision::True32 => Box::new(TruePrecision { kind: Kind::Float }),
        Precision::True16 => Box::new(TruePrecision { kind: Kind::Half }),
        Precision::TrueBf16 => Box::new(TruePrecision {
            kind: Kind::BFloat16,
        }),
        Precision::MixedBf16 => Box::new(MixedPrecision::bf16()),
        Precision::Mixed16 => Box::new(MixedPrecision::fp16(GradScalerConfig::default())),
        Precision::TransformerEngine | Precision::TransformerEngineFloat16 => {
            return Err(Error::NotAvailableYet {
                option: "precision",
                value: format!("\"{mode}\""),
                reason: "NVIDIA Transformer Engine is a Python library with no libtorch binding; use \"bf16-mixed\" or \"16-mixed\"".into(),
            });
        }
    })
}
