//! Binaries find libtorch without `LD_LIBRARY_PATH`: the build scripts embed
//! its directory as an rpath.

use std::process::Command;

const CHILD: &str = "FABRIC_STARTUP_CHILD";

#[test]
fn starts_without_ld_library_path() {
    if std::env::var_os(CHILD).is_some() {
        // In the child: libtorch must be loaded and working.
        let t = tch::Tensor::from_slice(&[1.0f32, 2.0, 3.0]).sum(tch::Kind::Float);
        println!("libtorch sum = {}", t.double_value(&[]));
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let output = Command::new(&exe)
        .args([
            "--exact",
            "starts_without_ld_library_path",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .env_remove("LD_LIBRARY_PATH")
        .env_remove("LIBTORCH")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "child failed: {}\n{stdout}\n{stderr}",
        output.status
    );
    assert!(stdout.contains("libtorch sum = 6"), "{stdout}");
}
