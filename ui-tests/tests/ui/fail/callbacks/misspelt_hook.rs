use fabric::hooks::Metrics;
use fabric::{Callback, hooks};

#[derive(Callback)]
struct Printer;

#[hooks]
impl Printer {
    #[hook]
    fn on_train_epoch_ned(&mut self, epoch: usize, metrics: &Metrics) {
        println!("{epoch} {metrics:?}");
    }
}

fn main() {}
