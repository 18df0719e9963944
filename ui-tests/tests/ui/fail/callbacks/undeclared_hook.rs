use fabric::Fabric;

fabric::declare_hook! {
    /// Fired with the best model's score.
    pub OnBestModel(score: f64)
}

fn main() {
    let mut fabric = Fabric::builder().accelerator("cpu").build().unwrap();
    fabric.call::<OnBestModl>((0.9,)).unwrap();
}
