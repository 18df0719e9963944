use fabric::fabric;

#[fabric(accelerator = "cpu")]
fn train() -> Result<(), fabric::Error> {
    Ok(())
}

fn main() {
    let _ = train();
}
