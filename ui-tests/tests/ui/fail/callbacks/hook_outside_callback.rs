use fabric::hook;

struct NotACallback;

impl NotACallback {
    #[hook]
    fn on_train_start(&mut self) {}
}

fn main() {
    NotACallback.on_train_start();
}
