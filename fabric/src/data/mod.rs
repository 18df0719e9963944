//! Data: data sets, samplers and the loader that batches them, on the
//! iterating thread or on worker threads.
//!
//! ```
//! use fabric::data::{DataLoader, TensorDataset};
//! use tch::{Kind, Tensor};
//!
//! let x = Tensor::arange(10, (Kind::Float, tch::Device::Cpu)).view([10, 1]);
//! let y = Tensor::arange(10, (Kind::Int64, tch::Device::Cpu));
//! let mut loader = DataLoader::new(TensorDataset::new((x, y)).unwrap()).batch_size(4).shuffle(true).seed(7);
//! let sizes: Vec<i64> = loader.iter().map(|batch| batch.unwrap().0.size()[0]).collect();
//! assert_eq!(sizes, [4, 4, 2]);
//! ```

mod dataset;
mod fabric_loader;
mod loader;
mod pin;
mod sampler;
mod workers;

pub use dataset::{Dataset, TensorDataset, Tensors};
pub use fabric_loader::{DeviceBatches, FabricDataLoader};
pub use loader::{Batches, DataLoader, LoaderPosition};
pub use pin::PinMemory;
pub use sampler::{RandomSampler, Sampler, SequentialSampler};
