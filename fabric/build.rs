//! fabric's build script:
//! - compiles the C++ shim (`csrc/shim.cpp`) against libtorch's headers, for
//!   the ATen functions tch does not bind (autocast state, tensor-list
//!   kernels) and the autograd hooks `ddp` overlaps its reduction with
//!   (`csrc/hooks.cpp`), and the random generators' states checkpoints
//!   save (`csrc/rng.cpp`);
//! - records where libtorch's shared libraries are, so that binaries find
//!   them at run time without `LD_LIBRARY_PATH`.
//!
//! With the `doc-only` feature it does nothing (see `main`).
//!
//! torch-sys publishes its library directory to crates that depend on it
//! directly as `DEP_TCH_LIBTORCH_LIB`. This script embeds it as an rpath in
//! this crate's own test, example and benchmark binaries, and re-publishes
//! it to crates that depend on `fabric` as `DEP_FABRIC_LIBTORCH_LIB`, so
//! their build scripts can do the same (see the README, "Using fabric in
//! your own crate").

use std::path::PathBuf;

fn main() {
    // With `doc-only` (docs.rs) there is no libtorch: torch-sys links
    // nothing, and nothing here is compiled; documentation needs neither.
    if std::env::var_os("CARGO_FEATURE_DOC_ONLY").is_some() {
        return;
    }
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    println!("cargo:rerun-if-changed=csrc/shim.cpp");
    println!("cargo:rerun-if-changed=csrc/hooks.cpp");
    println!("cargo:rerun-if-changed=csrc/errors.h");
    println!("cargo:rerun-if-changed=csrc/rng.cpp");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        // torch-sys always publishes it on Linux and macOS.
        panic!(
            "torch-sys did not publish DEP_TCH_LIBTORCH_LIB: fabric needs libtorch's headers and libraries"
        );
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    println!("cargo:libtorch_lib={lib}");

    let root = PathBuf::from(&lib).join("..");
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".to_owned());
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .std("c++20")
        .include(root.join("include"))
        .include(root.join("include/torch/csrc/api/include"))
        .define("_GLIBCXX_USE_CXX11_ABI", abi.as_str())
        .flag_if_supported("-Wno-unused-parameter")
        .file("csrc/shim.cpp")
        .file("csrc/hooks.cpp")
        .file("csrc/rng.cpp")
        .compile("fabric_shim");
}
