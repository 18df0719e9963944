use fabric::{Callback, hooks};

#[derive(Callback)]
struct Counter {
    starts: u32,
}

#[hooks]
impl Counter {
    #[hook]
    fn on_train_start(&mut self) -> u32 {
        self.starts += 1;
        self.starts
    }
}

fn main() {}
