//! Compile-time tests of the `#[fabric(...)]` attribute, run with
//! [trybuild](https://docs.rs/trybuild): `cargo test -p fabric-ui-tests`.
//!
//! This crate has no code of its own. `tests/ui.rs` compiles every case
//! under `tests/ui/` as a separate crate depending on `fabric`, as a user's
//! crate would:
//!
//! - `tests/ui/pass/*.rs` must compile without warnings (each starts with
//!   `#![deny(warnings)]`) and run successfully: they call the generated
//!   function, which builds a CPU `Fabric` and trains nothing;
//! - `tests/ui/fail/<option>/*.rs` must fail to compile with exactly the
//!   diagnostics in the `.stderr` file next to each case. They are grouped
//!   by what they get wrong: `accelerator/`, `strategy/`, `devices/`,
//!   `num_nodes/`, `precision/` (a value, or a combination that points at
//!   that option), `keys/` (unknown, repeated, malformed or non-literal
//!   arguments), `expressions/` (`callbacks`, `loggers` and `plugins`),
//!   `signature/` (the item under the attribute), and `several_errors.rs`.
//!
//! Each `.stderr` is part of the test: it shows where an error points and
//! how it reads, and has been read by a person. After changing a message,
//! regenerate them with `TRYBUILD=overwrite cargo test -p fabric-ui-tests`
//! and read the diff.
//!
//! The cases' binaries link libtorch but, unlike the workspace's own
//! binaries, have no build script to give them an rpath; `build.rs` hands
//! libtorch's directory to `tests/ui.rs`, which puts it on
//! `LD_LIBRARY_PATH` before running trybuild.
