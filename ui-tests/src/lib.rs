//! Compile-time tests of the `#[fabric(...)]` attribute, run with
//! [trybuild](https://docs.rs/trybuild): `cargo test -p fabric-ui-tests`.
//!
//! This crate has no code of its own. `tests/ui.rs` compiles every case
//! under `tests/ui/` as a separate crate depending on `fabric`, as a user's
//! crate would:
//!
//! - `tests/ui/pass/*.rs` must compile without warnings (each starts with
//!   `#![deny(warnings)]`) and run successfully: they call the generated
//!   function, which builds a `Fabric` and trains nothing. The `seed_*.rs`
//!   cases write every example line of Lightning's argument docs as an
//!   attribute (a line that cannot work in libtorch is a `fail/` case
//!   instead); a line that needs GPUs checks, on a machine without them,
//!   that the runtime says so ("not available on this machine"), and a line
//!   that needs several processes or nodes is only compiled. Their helpers
//!   are in `tests/ui/pass/common/`, which is not a case;
//! - `tests/ui/fail/<option>/*.rs` must fail to compile with exactly the
//!   diagnostics in the `.stderr` file next to each case. They are grouped
//!   by what they get wrong: `accelerator/`, `strategy/`, `devices/`,
//!   `num_nodes/`, `precision/` (a value, or a combination that points at
//!   that option), `keys/` (unknown, repeated, malformed or non-literal
//!   arguments), `expressions/` (`callbacks` and `loggers`), `plugins/`
//!   (what is not a plugin, and the plugin combinations the type system
//!   rejects), `signature/` (the item under the attribute), and
//!   `several_errors.rs` and `body_errors_are_still_reported.rs`.
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
