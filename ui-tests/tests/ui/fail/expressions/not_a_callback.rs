use fabric::{Fabric, fabric};

struct NotACallback;

#[fabric(accelerator = "cpu", callbacks = [NotACallback], loggers = "stdout")]
fn train(fabric: &mut Fabric) -> Result<(), fabric::Error> {
    let _ = fabric;
    Ok(())
}

fn main() {
    let _ = train();
}
