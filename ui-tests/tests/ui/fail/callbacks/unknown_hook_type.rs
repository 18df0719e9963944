use fabric::{Callback, hooks};

#[derive(Callback)]
struct Watcher;

#[hooks]
impl Watcher {
    #[hook(OnBestModel)]
    fn best(&mut self, score: f64) {
        println!("{score}");
    }
}

fn main() {}
