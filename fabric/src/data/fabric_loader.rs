//! [`FabricDataLoader`]: a [`DataLoader`] whose batches arrive on the run's
//! device.

use tch::{Device, TchError};

use super::dataset::Dataset;
use super::loader::{Batches, DataLoader};
use crate::device::ToDevice;
use crate::error::{Error, Result};

/// Moves a batch to a device.
type Transfer<B> = fn(B, Device) -> std::result::Result<B, TchError>;

/// A [`DataLoader`] set up by [`Fabric::setup_dataloaders`](crate::Fabric::setup_dataloaders):
/// its batches arrive on the run's device.
#[derive(Debug)]
pub struct FabricDataLoader<D: Dataset> {
    loader: DataLoader<D>,
    device: Device,
    transfer: Transfer<D::Batch>,
}

impl<D: Dataset> FabricDataLoader<D>
where
    D::Batch: ToDevice,
{
    /// Batches of `loader` on `device`: pinned by the loader and copied
    /// without blocking when it asked for pinned memory and `device` is a
    /// CUDA device, else copied as [`ToDevice`] does.
    pub(crate) fn new(mut loader: DataLoader<D>, device: Device) -> Self {
        let transfer = match loader.pinning() {
            Some(pinning) if device.is_cuda() => {
                loader.set_pin_device(device);
                pinning.transfer
            }
            _ => <D::Batch as ToDevice>::try_to_device,
        };
        FabricDataLoader {
            loader,
            device,
            transfer,
        }
    }

    /// The batches of the next epoch, on the run's device.
    pub fn iter(&mut self) -> DeviceBatches<D> {
        DeviceBatches {
            batches: self.loader.iter(),
            device: self.device,
            transfer: self.transfer,
            failed: false,
        }
    }

    /// Sets the number of the next epoch, which seeds its order; the
    /// current epoch keeps a position restored from a checkpoint (see
    /// [`DataLoader::set_epoch`]).
    pub fn set_epoch(&mut self, epoch: u64) {
        self.loader.set_epoch(epoch);
    }

    /// The number of batches in an epoch.
    pub fn len(&self) -> usize {
        self.loader.len()
    }

    /// Whether an epoch has no batch.
    pub fn is_empty(&self) -> bool {
        self.loader.is_empty()
    }

    /// The wrapped loader.
    pub fn loader(&self) -> &DataLoader<D> {
        &self.loader
    }

    /// The wrapped loader, mutably (for
    /// [`restore_position`](DataLoader::restore_position)).
    pub fn loader_mut(&mut self) -> &mut DataLoader<D> {
        &mut self.loader
    }
}

impl<D: Dataset> IntoIterator for &mut FabricDataLoader<D>
where
    D::Batch: ToDevice,
{
    type Item = Result<D::Batch>;
    type IntoIter = DeviceBatches<D>;

    fn into_iter(self) -> DeviceBatches<D> {
        self.iter()
    }
}

/// The batches of one epoch of a [`FabricDataLoader`], on the run's device;
/// a batch that cannot be moved there (the device is out of memory) is an
/// `Err` item, after which the epoch ends.
pub struct DeviceBatches<D: Dataset> {
    batches: Batches<D>,
    device: Device,
    transfer: Transfer<D::Batch>,
    failed: bool,
}

impl<D: Dataset> Iterator for DeviceBatches<D>
where
    D::Batch: ToDevice,
{
    type Item = Result<D::Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let device = self.device;
        let moved = self.batches.next()?.and_then(|batch| {
            (self.transfer)(batch, device)
                .map_err(|e| Error::Data(format!("moving a batch to {device:?} failed: {e}")))
        });
        self.failed = moved.is_err();
        Some(moved)
    }
}

#[cfg(test)]
mod tests {
    use tch::{Kind, Tensor};

    use super::*;
    use crate::data::TensorDataset;

    #[test]
    fn a_batch_that_cannot_reach_the_device_is_an_err_not_a_panic() {
        let dataset = TensorDataset::new(Tensor::arange(6, (Kind::Float, Device::Cpu))).unwrap();
        // libtorch's builds have no Vulkan backend: the move fails.
        let mut loader =
            FabricDataLoader::new(DataLoader::new(dataset).batch_size(2), Device::Vulkan);
        let items: Vec<_> = loader.iter().collect();
        assert_eq!(items.len(), 1, "the epoch ends at the first error");
        let err = items[0].as_ref().unwrap_err().to_string();
        assert!(err.contains("moving a batch to Vulkan failed"), "{err}");
    }
}
