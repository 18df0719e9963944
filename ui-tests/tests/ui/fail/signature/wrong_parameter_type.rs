use fabric::fabric;

#[fabric(accelerator = "cpu")]
fn train(device: &mut String) -> Result<(), fabric::Error> {
    let _ = device;
    Ok(())
}

fn main() {
    let _ = train();
}
