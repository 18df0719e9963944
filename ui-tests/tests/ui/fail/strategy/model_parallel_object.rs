// Lightning's docs: `Fabric(strategy=ModelParallelStrategy(...))`. Lightning
// 2.6 registers no `"model_parallel"` name; the class is still recognised.
use fabric::{Fabric, fabric};

#[fabric(strategy = ModelParallelStrategy(tensor_parallel_size = 2), accelerator = "gpu")]
fn train(fabric: &mut Fabric) -> Result<(), fabric::Error> {
    let _ = fabric;
    Ok(())
}

fn main() {
    let _ = train();
}
