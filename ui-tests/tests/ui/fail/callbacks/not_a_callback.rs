use fabric::Fabric;

struct Plain;

fn main() {
    let _ = Fabric::builder().accelerator("cpu").callback(Plain).build();
}
