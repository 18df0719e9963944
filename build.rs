//! Embeds libtorch's library directory, published by `fabric`'s build script,
//! as an rpath in the examples and integration tests, so they start without
//! `LD_LIBRARY_PATH`.

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_FABRIC_LIBTORCH_LIB");
    if let Ok(lib) = std::env::var("DEP_FABRIC_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    }
}
