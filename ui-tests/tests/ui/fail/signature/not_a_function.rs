use fabric::fabric;

#[fabric(accelerator = "cpu")]
struct Trainer {
    epochs: usize,
}

fn main() {
    let _ = Trainer { epochs: 1 }.epochs;
}
