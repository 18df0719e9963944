use fabric::precision::MixedPrecision;
use fabric::{ClusterEnvironment, Fabric, SingleProcessEnvironment, fabric};

struct MyCluster;

impl ClusterEnvironment for MyCluster {
    fn main_address(&self) -> String {
        "10.0.0.1".into()
    }
    fn main_port(&self) -> u16 {
        29500
    }
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
