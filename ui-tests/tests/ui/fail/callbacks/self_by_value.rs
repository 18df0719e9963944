use fabric::{Callback, hooks};

#[derive(Callback)]
struct Once;

#[hooks]
impl Once {
    #[hook]
    fn on_train_start(self) {}
}

fn main() {}
