//! [`AutocastGuard`]: a scope in which eligible operations run in 16 bits.

use std::marker::PhantomData;

use tch::{Device, Kind};

use crate::error::{Error, Result};
use crate::shim::{self, AutocastDevice};

fn autocast_device(device: Device) -> Result<AutocastDevice> {
    match device {
        Device::Cpu => Ok(AutocastDevice::Cpu),
        Device::Cuda(_) => Ok(AutocastDevice::Cuda),
        other => Err(Error::InvalidArgument(format!(
            "autocast runs on the CPU and CUDA devices; {other:?} has no autocast in fabric"
        ))),
    }
}

/// Whether autocast is on for `device`'s type on this thread, and with
/// which dtype.
///
/// ```
/// use fabric::precision::{AutocastGuard, autocast_state};
/// use tch::{Device, Kind};
///
/// assert!(!autocast_state(Device::Cpu).unwrap().0);
/// {
///     let _guard = AutocastGuard::new(Device::Cpu, Kind::BFloat16).unwrap();
///     assert_eq!(autocast_state(Device::Cpu).unwrap(), (true, Kind::BFloat16));
/// }
/// assert!(!autocast_state(Device::Cpu).unwrap().0);
/// ```
pub fn autocast_state(device: Device) -> Result<(bool, Kind)> {
    shim::autocast_state(autocast_device(device)?)
}

/// While alive, eligible operations on `device`'s type (matrix products,
/// convolutions, ...) run in the guard's dtype, as inside PyTorch's
/// `torch.autocast`. Dropping it restores the state it found, so guards
/// nest, and an early return or `?` leaves autocast as it was.
///
/// Autocast state is per thread, so the guard cannot move to another thread.
#[must_use = "autocast applies while the guard is alive"]
#[derive(Debug)]
pub struct AutocastGuard {
    /// The device type and the state to restore; `None` for a guard that
    /// changes nothing.
    restore: Option<(AutocastDevice, bool, Kind)>,
    _not_send: PhantomData<*const ()>,
}

impl AutocastGuard {
    /// Turns autocast on for `device`'s type with `dtype` (`Kind::BFloat16`
    /// or `Kind::Half`).
    pub fn new(device: Device, dtype: Kind) -> Result<Self> {
        if !matches!(dtype, Kind::BFloat16 | Kind::Half) {
            return Err(Error::InvalidArgument(format!(
                "autocast runs operations in 16 bits: use Kind::BFloat16 or Kind::Half, not {dtype:?}"
            )));
        }
        Self::set(device, true, dtype)
    }

    /// Turns autocast off for `device`'s type, for a region that must run in
    /// full precision inside an autocast scope.
    pub fn disabled(device: Device) -> Result<Self> {
        let (_, dtype) = autocast_state(device)?;
        Self::set(device, false, dtype)
    }

    /// A guard that changes nothing (the `-true` precisions).
    pub(crate) fn noop() -> Self {
        AutocastGuard {
            restore: None,
            _not_send: PhantomData,
        }
    }

    fn set(device: Device, enabled: bool, dtype: Kind) -> Result<Self> {
        let device = autocast_device(device)?;
        let (was_enabled, was_dtype) = shim::autocast_state(device)?;
        shim::set_autocast(device, enabled, dtype)?;
        if let Err(error) = shim::autocast_enter() {
            let _ = shim::set_autocast(device, was_enabled, was_dtype);
            return Err(error);
        }
        Ok(AutocastGuard {
            restore: Some((device, was_enabled, was_dtype)),
            _not_send: PhantomData,
        })
    }
}

impl Drop for AutocastGuard {
    fn drop(&mut self) {
        if let Some((device, enabled, dtype)) = self.restore {
            // Both calls only fail on a corrupted libtorch; nothing to do
            // about it while dropping.
            let _ = shim::autocast_exit();
            let _ = shim::set_autocast(device, enabled, dtype);
        }
    }
}
