//! Runs the trybuild cases under `tests/ui/` (see the crate's documentation).

#[test]
fn ui() {
    // The cases are compiled by trybuild into crates without a build
    // script, so the pass cases' binaries carry no rpath to libtorch: they
    // find it through `LD_LIBRARY_PATH`, which the `cargo` trybuild starts
    // and the binaries it runs inherit from this process.
    if let Some(lib) = option_env!("FABRIC_LIBTORCH_LIB") {
        let path = match std::env::var("LD_LIBRARY_PATH") {
            Ok(old) if !old.is_empty() => format!("{lib}:{old}"),
            _ => lib.to_owned(),
        };
        // SAFETY: this is the only test of this binary and it sets the
        // variable before starting anything; no other thread reads or
        // writes the environment at the same time.
        unsafe { std::env::set_var("LD_LIBRARY_PATH", path) };
    }

    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/**/*.rs");
}
