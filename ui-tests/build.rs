//! Passes libtorch's library directory to `tests/ui.rs` as the compile-time
//! variable `FABRIC_LIBTORCH_LIB`.
//!
//! `fabric`'s build script publishes the directory as
//! `DEP_FABRIC_LIBTORCH_LIB` to the build scripts of crates that depend on
//! it directly, as this one does. The crates trybuild generates for the
//! cases have no build script, so their binaries get no rpath: the test
//! puts the directory on `LD_LIBRARY_PATH` instead.

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_FABRIC_LIBTORCH_LIB");
    if let Ok(lib) = std::env::var("DEP_FABRIC_LIBTORCH_LIB") {
        println!("cargo:rustc-env=FABRIC_LIBTORCH_LIB={lib}");
    }
}
