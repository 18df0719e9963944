use fabric::{Callback, hooks};

#[derive(Callback)]
struct Printer;

#[hooks]
impl Printer {
    #[hook]
    fn on_train_epoch_end(&mut self, epoch: usize) {
        println!("{epoch}");
    }
}

fn main() {}
