//! Loading libtorch's CUDA backend and NCCL, which must work (or fail
//! clearly) on machines without a GPU. Each check that changes what the
//! process has loaded runs in a child: this test binary re-run with
//! `FABRIC_SCENARIO` naming the check (`common::Scenario`).

mod common;

use std::path::Path;
use std::process::Command;

use fabric::testing::{self, CudaBackend};

/// Runs `check` (an ignored test of this file) in a child with `env`;
/// returns its output, asserting it succeeded.
fn child(check: &str, env: &[(&str, &std::ffi::OsStr)]) -> String {
    let mut scenario = common::Scenario::direct(check).arg("--ignored");
    for (name, value) in env {
        scenario = scenario.env(name, value);
    }
    let run = scenario.run();
    let text = run.text;
    assert!(run.output.status.success(), "{check} failed:\n{text}");
    assert!(text.contains("1 passed"), "{check} did not run:\n{text}");
    text
}

fn in_child(check: &str) -> bool {
    common::in_scenario(check)
}

fn loaded(file_name: &str) -> bool {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    maps.lines().any(|l| l.ends_with(&format!("/{file_name}")))
}

#[test]
fn libtorchs_cuda_backend_is_loaded_from_libtorchs_directory() {
    child("load_the_cuda_backend", &[]);
}

#[test]
#[ignore = "run by libtorchs_cuda_backend_is_loaded_from_libtorchs_directory"]
fn load_the_cuda_backend() {
    assert!(in_child("load_the_cuda_backend"));
    // A Rust binary does not load it by itself (`--as-needed`).
    assert!(!loaded("libtorch_cuda.so"), "loaded before fabric asked");
    match testing::load_cuda_backend(true) {
        CudaBackend::Loaded(path) => {
            assert!(path.ends_with("libtorch_cuda.so"), "{path:?}");
            assert!(loaded("libtorch_cuda.so"));
            // Without a driver CUDA stays unavailable, without crashing.
            let available = tch::Cuda::is_available();
            let driver = Path::new("/dev/nvidiactl").exists();
            assert!(
                available || !driver,
                "a driver exists but CUDA is not available"
            );
            println!("loaded {}, CUDA available: {available}", path.display());
        }
        CudaBackend::NotInLibtorch => {
            println!("CPU-only libtorch: nothing to load");
        }
        other => panic!("unexpected {other:?}"),
    }
    // Once loaded, it is not loaded again.
    assert_eq!(
        testing::load_cuda_backend(true),
        if loaded("libtorch_cuda.so") {
            CudaBackend::AlreadyLoaded
        } else {
            CudaBackend::NotInLibtorch
        }
    );
}

#[test]
fn without_a_driver_nothing_is_loaded() {
    child("nothing_without_a_driver", &[]);
}

#[test]
#[ignore = "run by without_a_driver_nothing_is_loaded"]
fn nothing_without_a_driver() {
    assert!(in_child("nothing_without_a_driver"));
    // Linking fabric loads nothing by itself: a CPU run does not look.
    assert!(!testing::cuda_backend_checked());
    let cpu = fabric::Fabric::builder()
        .accelerator("cpu")
        .build()
        .unwrap();
    drop(cpu);
    assert!(!testing::cuda_backend_checked());
    assert!(!loaded("libtorch_cuda.so"));
    // A run that may use CUDA looks, before it asks libtorch about CUDA.
    let fabric = fabric::Fabric::builder().build().unwrap();
    assert!(testing::cuda_backend_checked());
    let driver = Command::new("sh")
        .args(["-c", "ldconfig -p | grep -q 'libcuda.so.1 '"])
        .status()
        .is_ok_and(|s| s.success());
    let backend = testing::load_cuda_backend(false);
    if driver {
        assert!(
            matches!(backend, CudaBackend::Loaded(_) | CudaBackend::NotInLibtorch),
            "{backend:?}"
        );
    } else {
        assert_eq!(backend, CudaBackend::NoDriver);
        assert!(!loaded("libtorch_cuda.so"));
    }
    println!("{backend:?}, device {:?}", fabric.device());
}

#[test]
fn load_cuda_backend_false_keeps_the_cuda_libraries_out() {
    child("not_loaded_when_asked", &[]);
}

#[test]
#[ignore = "run by load_cuda_backend_false_keeps_the_cuda_libraries_out"]
fn not_loaded_when_asked() {
    assert!(in_child("not_loaded_when_asked"));
    let fabric = fabric::Fabric::builder()
        .load_cuda_backend(false)
        .build()
        .unwrap();
    assert!(!testing::cuda_backend_checked());
    assert!(!loaded("libtorch_cuda.so"));
    assert_eq!(fabric.device(), tch::Device::Cpu);
}

#[test]
fn nccl_is_loaded_or_explained_never_a_panic() {
    match fabric::collectives::nccl_version() {
        Ok((major, minor, _)) => {
            assert_eq!(major, 2, "NCCL {major}.{minor}");
        }
        Err(error) => {
            let message = error.to_string();
            assert!(message.contains("NCCL"), "{message}");
            // Installed under its soname only (as by PyTorch's wheel):
            // the message says where and what to do.
            if message.contains("libnccl.so.2") {
                assert!(message.contains("LD_LIBRARY_PATH"), "{message}");
                assert!(message.contains("ln -sf"), "{message}");
            } else {
                assert!(message.contains("not installed"), "{message}");
            }
        }
    }
}

#[test]
fn the_launchers_link_makes_the_wheels_nccl_loadable() {
    let Some(dir) = testing::nccl_library_link_dir() else {
        // Either cudarc finds NCCL by itself (no link needed) or NCCL is
        // not installed; both are covered by the test above.
        return;
    };
    let link = dir.join("libnccl.so");
    let target = std::fs::read_link(&link).unwrap();
    assert!(target.ends_with("libnccl.so.2"), "{target:?}");
    // Made again, it is the same link (made beside and renamed over).
    assert_eq!(testing::nccl_library_link_dir(), Some(dir.clone()));
    let out = child(
        "nccl_through_the_link",
        &[("LD_LIBRARY_PATH", dir.as_os_str())],
    );
    assert!(out.contains("NCCL 2."), "{out}");
    // The user's directory above it must be the user's alone: opened to
    // others, it is not used.
    use std::os::unix::fs::PermissionsExt;
    let private = dir.parent().unwrap();
    std::fs::set_permissions(private, std::fs::Permissions::from_mode(0o777)).unwrap();
    let refused = testing::nccl_library_link_dir();
    std::fs::set_permissions(private, std::fs::Permissions::from_mode(0o700)).unwrap();
    assert_eq!(refused, None);
    assert_eq!(testing::nccl_library_link_dir(), Some(dir));
}

#[test]
#[ignore = "run by the_launchers_link_makes_the_wheels_nccl_loadable"]
fn nccl_through_the_link() {
    assert!(in_child("nccl_through_the_link"));
    let (major, minor, patch) = fabric::collectives::nccl_version().unwrap();
    println!("NCCL {major}.{minor}.{patch}");
}

#[test]
fn nccl_without_a_gpu_is_an_error_not_a_crash() {
    if tch::Cuda::device_count() > 0 {
        return; // tests/gpu.rs checks NCCL where there are GPUs
    }
    let mut env: Vec<(&str, std::ffi::OsString)> = Vec::new();
    if let Some(dir) = testing::nccl_library_link_dir() {
        env.push(("LD_LIBRARY_PATH", dir.into_os_string()));
    }
    let env: Vec<(&str, &std::ffi::OsStr)> = env.iter().map(|(n, v)| (*n, v.as_os_str())).collect();
    let out = child("join_nccl_without_a_gpu", &env);
    assert!(out.contains("error: "), "{out}");
}

#[test]
#[ignore = "run by nccl_without_a_gpu_is_an_error_not_a_crash"]
fn join_nccl_without_a_gpu() {
    assert!(in_child("join_nccl_without_a_gpu"));
    // With and without libtorch's CUDA backend loaded.
    for force in [false, true] {
        if force {
            testing::load_cuda_backend(true);
        }
        let error = testing::nccl_single_rank_check(0).unwrap_err();
        let message = error.to_string();
        println!("error: {message}");
        assert!(
            message.to_lowercase().contains("cuda") || message.contains("NCCL"),
            "{message}"
        );
    }
}

#[test]
fn fabric_load_cuda_0_turns_the_loading_off() {
    child(
        "loading_turned_off",
        &[("FABRIC_LOAD_CUDA", std::ffi::OsStr::new("0"))],
    );
}

#[test]
#[ignore = "run by fabric_load_cuda_0_turns_the_loading_off"]
fn loading_turned_off() {
    assert!(in_child("loading_turned_off"));
    assert_eq!(testing::load_cuda_backend(false), CudaBackend::Disabled);
    assert!(!loaded("libtorch_cuda.so"));
}
