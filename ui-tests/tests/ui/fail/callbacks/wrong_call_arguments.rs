use fabric::Fabric;
use fabric::hooks::OnTrainEpochEnd;

fn main() {
    let mut fabric = Fabric::builder().accelerator("cpu").build().unwrap();
    fabric.call::<OnTrainEpochEnd>((1,)).unwrap();
}
