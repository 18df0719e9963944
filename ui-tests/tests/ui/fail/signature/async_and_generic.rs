use fabric::{Fabric, fabric};

#[fabric(accelerator = "cpu")]
async fn train<T: Default>(fabric: &mut Fabric) -> Result<T, fabric::Error> {
    let _ = fabric;
    Ok(T::default())
}

fn main() {
    let _ = train::<u32>();
}
