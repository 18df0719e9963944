//! A cluster environment of your own, passed as a plugin, as in Lightning's
//! documentation:
//!
//! ```python
//! class MyCluster(ClusterEnvironment):
//!     def world_size(self): return the_world_size
//!     def global_rank(self): return the_rank
//!
//! fabric = Fabric(plugins=[MyCluster()], ...)
//! ```
//!
//! Here `MyCluster` reads its scheduler's variables (`MY_CLUSTER_ADDR`,
//! `MY_CLUSTER_PORT`, `MY_CLUSTER_WORLD_SIZE`, `MY_CLUSTER_RANK`), with a
//! single process as the default, and fabric takes the ranks from it: only
//! global rank 0 logs. fabric's Open MPI worlds need no main address or
//! port, so the trait has none (Lightning's `main_address`/`main_port`):
//! this example keeps them for its own message. fabric checks what an environment reports
//! (a rank outside the world is an error naming the environment).
//!
//! Run it with `cargo run --release --example custom_environment`.

use fabric::data::{DataLoader, TensorDataset};
use fabric::optim::Sgd;
use fabric::{ClusterEnvironment, Fabric};
use fabric_examples::{digits, env_or};
use tch::nn;

/// A cluster whose scheduler describes the processes in `MY_CLUSTER_*`
/// variables.
#[derive(Debug, Clone)]
pub struct MyCluster {
    /// The address of the process with global rank 0.
    pub address: String,
    /// The port it listens on.
    pub port: u16,
    /// How many processes take part.
    pub world_size: usize,
    /// This process's rank.
    pub rank: usize,
}

impl MyCluster {
    /// The cluster as the scheduler's variables describe it.
    pub fn from_env() -> anyhow::Result<Self> {
        Ok(MyCluster {
            address: env_or("MY_CLUSTER_ADDR", "127.0.0.1".to_owned())?,
            port: env_or("MY_CLUSTER_PORT", 29500)?,
            world_size: env_or("MY_CLUSTER_WORLD_SIZE", 1)?,
            rank: env_or("MY_CLUSTER_RANK", 0)?,
        })
    }
}

impl ClusterEnvironment for MyCluster {
    fn world_size(&self) -> usize {
        self.world_size
    }
    fn global_rank(&self) -> usize {
        self.rank
    }
}

/// Trains the digits classifier for `epochs` in the cluster's process and
/// returns the held-out accuracy.
pub fn run(cluster: MyCluster, epochs: usize) -> anyhow::Result<f64> {
    let mut fabric = Fabric::builder()
        .accelerator("cpu")
        .plugin(cluster.clone())
        .build()?;
    fabric.print(format!(
        "environment {}: rank {} of {}, main process at {}:{}",
        fabric.environment_name(),
        fabric.global_rank(),
        fabric.world_size(),
        cluster.address,
        cluster.port
    ));
    fabric.seed_everything(3);
    let (images, labels) = digits::load(&digits::default_path())?;
    let (train_x, train_y, test_x, test_y) = digits::split(&images, &labels, 0.2, 0);
    let mut vs = nn::VarStore::new(tch::Device::Cpu);
    let net = digits::mlp(&vs.root(), 64);
    let optimizer = Sgd::new(0.1).momentum(0.9).build(&vs)?;
    let (model, mut optimizer) = fabric.setup(&mut vs, net, optimizer)?;
    let mut loader = fabric.setup_dataloaders(
        DataLoader::new(TensorDataset::new((train_x, train_y))?)
            .batch_size(32)
            .shuffle(true),
    )?;
    for epoch in 0..epochs {
        let mut total = 0.0;
        for batch in &mut loader {
            let (x, y) = batch?;
            optimizer.zero_grad();
            let loss = model.forward(&x).cross_entropy_for_logits(&y);
            fabric.backward(&loss)?;
            optimizer.step()?;
            total += loss.double_value(&[]);
        }
        fabric.print(format!(
            "epoch {}: train loss {:.4}",
            epoch + 1,
            total / loader.len() as f64
        ));
    }
    model.eval();
    let logits = tch::no_grad(|| model.forward(&test_x));
    Ok(digits::accuracy(&logits, &test_y))
}

fn main() -> anyhow::Result<()> {
    let accuracy = run(MyCluster::from_env()?, env_or("EPOCHS", 5)?)?;
    println!("held-out accuracy: {:.2}%", accuracy * 100.0);
    Ok(())
}
