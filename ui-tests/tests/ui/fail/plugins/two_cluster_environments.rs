use fabric::precision::MixedPrecision;
use fabric::{ClusterEnvironment, Fabric, SingleProcessEnvironment, fabric};

struct MyCluster;

impl ClusterEnvironment for MyCluster {
    fn world_size(&self) -> usize {
        1
    }
    fn global_rank(&self) -> usize {
        0
    }
}

// The precision plugin between them is fine.
#[fabric(
    accelerator = "cpu",
    plugins = [MyCluster, MixedPrecision::bf16(), SingleProcessEnvironment],
)]
fn train(fabric: &mut Fabric) -> Result<(), fabric::Error> {
    let _ = fabric;
    Ok(())
}

fn main() {
    let _ = train();
}
