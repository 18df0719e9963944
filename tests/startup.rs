//! Binaries find libtorch without `LD_LIBRARY_PATH`: the build scripts embed
//! its directory as an rpath.

mod common;

#[test]
fn starts_without_ld_library_path() {
    let test = "starts_without_ld_library_path";
    if common::in_scenario(test) {
        // In the child: libtorch must be loaded and working.
        let t = tch::Tensor::from_slice(&[1.0f32, 2.0, 3.0]).sum(tch::Kind::Float);
        println!("libtorch sum = {}", t.double_value(&[]));
        return;
    }
    let output = common::Scenario::direct(test)
        .env_remove("LD_LIBRARY_PATH")
        .env_remove("LIBTORCH")
        .run()
        .output;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "child failed: {}\n{stdout}\n{stderr}",
        output.status
    );
    assert!(stdout.contains("libtorch sum = 6"), "{stdout}");
}
