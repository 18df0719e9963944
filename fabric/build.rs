//! Records where libtorch's shared libraries are, so that binaries find them
//! at run time without `LD_LIBRARY_PATH`.
//!
//! torch-sys publishes its library directory to crates that depend on it
//! directly as `DEP_TCH_LIBTORCH_LIB`. This script
//! - embeds that directory as an rpath in this crate's own test, example and
//!   benchmark binaries, and
//! - re-publishes it to crates that depend on `fabric` as
//!   `DEP_FABRIC_LIBTORCH_LIB`, so their build scripts can do the same
//!   (see the README, "Using fabric in your own crate").

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
        println!("cargo:libtorch_lib={lib}");
    }
}
