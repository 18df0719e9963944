//! [`GradScaler`]: dynamic loss scaling for float16 training.

use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::shim;

/// The settings of a [`GradScaler`]; the defaults are PyTorch's and
/// Lightning's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GradScalerConfig {
    /// The first scale (65536).
    pub init_scale: f64,
    /// What the scale is multiplied by after `growth_interval` steps without
    /// an infinity or NaN (2).
    pub growth_factor: f64,
    /// What the scale is multiplied by after a step with an infinity or NaN
    /// (0.5).
    pub backoff_factor: f64,
    /// How many finite steps in a row grow the scale (2000).
    pub growth_interval: u32,
}

impl Default for GradScalerConfig {
    fn default() -> Self {
        GradScalerConfig {
            init_scale: 65536.0,
            growth_factor: 2.0,
            backoff_factor: 0.5,
            growth_interval: 2000,
        }
    }
}

/// The state of a [`GradScaler`] that a checkpoint saves.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GradScalerState {
    /// The settings.
    pub config: GradScalerConfig,
    /// The current scale.
    pub scale: f64,
    /// Finite steps in a row since the scale last changed.
    pub growth_tracker: i32,
}

/// Multiplies the loss by a large factor before `backward` so that float16
/// gradients do not underflow, divides the gradients by it before the
/// optimizer step, skips steps whose gradients hold an infinity or NaN, and
/// adapts the factor: halved after such a step, doubled after
/// `growth_interval` clean ones. Built on ATen's own kernels
/// (`_amp_foreach_non_finite_check_and_unscale_`, `_amp_update_scale_`), as
/// `torch.amp.GradScaler`.
///
/// fabric drives it under `precision = "16-mixed"`:
/// [`Fabric::backward`](crate::Fabric::backward) scales and
/// [`FabricOptimizer::step`](crate::FabricOptimizer::step) unscales, skips
/// and updates.
#[derive(Debug)]
pub struct GradScaler {
    config: GradScalerConfig,
    scale: Tensor,
    growth_tracker: Tensor,
}

impl GradScaler {
    /// A scaler keeping its state on `device` (the device of the gradients).
    pub fn new(config: GradScalerConfig, device: Device) -> Result<Self> {
        let valid = config.init_scale.is_finite()
            && config.init_scale > 0.0
            && config.growth_factor > 1.0
            && config.backoff_factor > 0.0
            && config.backoff_factor < 1.0
            && config.growth_interval > 0;
        if !valid {
            return Err(Error::InvalidArgument(format!(
                "invalid GradScaler settings {config:?}: init_scale must be finite and > 0, growth_factor > 1, 0 < backoff_factor < 1, growth_interval > 0"
            )));
        }
        Ok(GradScaler {
            config,
            scale: one_value(config.init_scale as f32, device)?,
            growth_tracker: one_value(0i32, device)?,
        })
    }

    /// The settings.
    pub fn config(&self) -> GradScalerConfig {
        self.config
    }

    /// The current scale.
    pub fn scale(&self) -> f64 {
        self.scale.double_value(&[0])
    }

    /// `loss` multiplied by the current scale.
    pub fn scale_loss(&self, loss: &Tensor) -> Result<Tensor> {
        let scale = self
            .scale
            .f_to_device(loss.device())?
            .f_to_kind(loss.kind())?
            .f_reshape([])?;
        Ok(loss.f_mul(&scale)?)
    }

    /// Divides `grads` by the current scale in place; returns a one-element
    /// tensor that is 1 if any of them holds an infinity or NaN, else 0.
    pub fn unscale(&self, grads: &[Tensor]) -> Result<Tensor> {
        let device = self.scale.device();
        let mut found_inf = Tensor::f_zeros([1], (Kind::Float, device))?;
        let inv_scale = self
            .scale
            .f_to_kind(Kind::Double)?
            .f_reciprocal()?
            .f_to_kind(Kind::Float)?;
        // The kernel takes tensors of one device and dtype at a time.
        let mut groups: Vec<(Device, Kind, Vec<Tensor>)> = Vec::new();
        for grad in grads {
            let key = (grad.device(), grad.kind());
            match groups.iter_mut().find(|(d, k, _)| (*d, *k) == key) {
                Some((_, _, group)) => group.push(grad.shallow_clone()),
                None => groups.push((key.0, key.1, vec![grad.shallow_clone()])),
            }
        }
        for (group_device, _, group) in groups {
            let group_found = Tensor::f_zeros([1], (Kind::Float, group_device))?;
            shim::non_finite_check_and_unscale(
                &group,
                &group_found,
                &inv_scale.f_to_device(group_device)?,
            )?;
            let _ = found_inf.f_add_(&group_found.f_to_device(device)?)?;
        }
        Ok(found_inf.f_clamp_max(1.0)?)
    }

    /// Adapts the scale after a step: backs off if `found_inf` is non-zero,
    /// grows it after `growth_interval` finite steps in a row.
    pub fn update(&mut self, found_inf: &Tensor) -> Result<()> {
        let found_inf = found_inf
            .f_to_device(self.scale.device())?
            .f_to_kind(Kind::Float)?;
        let _ = self.scale.f_internal_amp_update_scale_(
            &self.growth_tracker,
            &found_inf,
            self.config.growth_factor,
            self.config.backoff_factor,
            i64::from(self.config.growth_interval),
        )?;
        Ok(())
    }

    /// The state a checkpoint saves.
    pub fn state(&self) -> GradScalerState {
        GradScalerState {
            config: self.config,
            scale: self.scale(),
            growth_tracker: self.growth_tracker.int64_value(&[0]) as i32,
        }
    }

    /// Restores a saved state.
    pub fn load_state(&mut self, state: GradScalerState) -> Result<()> {
        let device = self.scale.device();
        let mut restored = GradScaler::new(state.config, device)?;
        restored.scale = one_value(state.scale as f32, device)?;
        restored.growth_tracker = one_value(state.growth_tracker, device)?;
        *self = restored;
        Ok(())
    }
}

/// A one-element tensor on `device`. Made on the CPU and moved: tch's
/// `f_full` frees its fill value before reading libtorch's error, and so
/// panics where it should return the error.
fn one_value<T: tch::kind::Element>(value: T, device: Device) -> Result<Tensor> {
    Ok(Tensor::f_from_slice(&[value])?.f_to_device(device)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_libtorch_error_is_an_err_not_a_panic() {
        // libtorch's builds have no Vulkan backend: allocating there fails.
        let err = GradScaler::new(GradScalerConfig::default(), Device::Vulkan).unwrap_err();
        assert!(matches!(err, Error::Torch(_)), "{err}");

        let mut scaler = GradScaler::new(GradScalerConfig::default(), Device::Cpu).unwrap();
        // A quantized scale, which libtorch cannot convert to a float:
        // unscaling reports it instead of aborting the process.
        scaler.scale =
            Tensor::ones([1], (Kind::Float, Device::Cpu)).quantize_per_tensor(1.0, 0, Kind::QInt8);
        let grad = Tensor::ones([2], (Kind::Float, Device::Cpu));
        assert!(scaler.unscale(&[grad]).is_err());
    }
}
