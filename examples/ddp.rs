//! Distributed data parallel training on CPU processes.
//!
//! Trains the digits classifier with `strategy = "ddp"` on 2 CPU
//! processes: started plainly, fabric re-runs this program under Open MPI's
//! `mpirun`, one rank per device; each rank trains on its shard of every
//! epoch, gradients are averaged after each `backward`, and every rank ends
//! with the same parameters. Rank 0 prints.
//!
//! ```sh
//! cargo run --release --example ddp                 # fabric starts the 2 ranks
//! mpirun -np 2 target/release/examples/ddp          # or start them yourself
//! EPOCHS=2 cargo run --release --example ddp
//! ```

use fabric::data::{DataLoader, TensorDataset};
use fabric::{Fabric, ReduceOp, fabric};
use fabric_examples::digits;
use tch::nn::{self, OptimizerConfig};
use tch::{Kind, Tensor};

#[fabric(accelerator = "cpu", strategy = "ddp", devices = 2)]
fn train(fabric: &mut Fabric) -> anyhow::Result<f64> {
    let epochs: usize = std::env::var("EPOCHS")
        .ok()
        .map(|e| e.parse())
        .transpose()?
        .unwrap_or(20);
    fabric.seed_everything(42);
    let (images, labels) = digits::load(&digits::default_path())?;
    let (train_x, train_y, test_x, test_y) = digits::split(&images, &labels, 0.2, 0);

    let mut vs = nn::VarStore::new(tch::Device::Cpu);
    let net = nn::seq()
        .add(nn::linear(
            vs.root() / "hidden",
            64,
            128,
            Default::default(),
        ))
        .add_fn(|x| x.relu())
        .add(nn::linear(vs.root() / "out", 128, 10, Default::default()));
    let optimizer = nn::Adam::default().build(&vs, 3e-3)?;
    let (model, mut optimizer) = fabric.setup(&mut vs, net, optimizer)?;
    // Each rank sees its own half of every epoch.
    let mut loader = fabric.setup_dataloaders(
        DataLoader::new(TensorDataset::new((train_x, train_y))?)
            .batch_size(32)
            .shuffle(true),
    )?;
    fabric.print(format!(
        "{} ranks, {} batches per rank and epoch",
        fabric.world_size(),
        loader.len()
    ));

    for epoch in 0..epochs {
        let mut total = Tensor::zeros([], (Kind::Float, tch::Device::Cpu));
        for batch in &mut loader {
            let (x, y) = batch?;
            optimizer.zero_grad();
            let loss = model.forward(&x).cross_entropy_for_logits(&y);
            fabric.backward(&loss)?;
            optimizer.step()?;
            total += loss.detach();
        }
        // The mean loss over every rank's batches.
        let mean = fabric.all_reduce(&(total / loader.len() as f64), ReduceOp::Mean)?;
        if (epoch + 1) % 5 == 0 || epoch + 1 == epochs {
            fabric.print(format!(
                "epoch {:>2}: train loss {:.4}",
                epoch + 1,
                mean.double_value(&[])
            ));
        }
    }

    model.eval();
    let accuracy = tch::no_grad(|| {
        model
            .forward(&test_x)
            .argmax(-1, false)
            .eq_tensor(&test_y)
            .to_kind(Kind::Double)
            .mean(None)
    });
    // Every rank holds the same parameters, so the same accuracy.
    Ok(accuracy.double_value(&[]))
}

fn main() -> anyhow::Result<()> {
    let accuracy = train()?;
    println!(
        "rank {} of {}: held-out accuracy {:.2}%",
        std::env::var("OMPI_COMM_WORLD_RANK").unwrap_or_default(),
        std::env::var("OMPI_COMM_WORLD_SIZE").unwrap_or_default(),
        accuracy * 100.0
    );
    Ok(())
}
