use fabric::fabric;

struct Trainer;

impl Trainer {
    #[fabric(accelerator = "cpu")]
    fn train(&mut self) -> Result<(), fabric::Error> {
        Ok(())
    }
}

fn main() {
    let _ = Trainer.train();
}
