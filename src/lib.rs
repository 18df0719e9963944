//! Helpers shared by fabric's examples and integration tests: the data sets
//! they train on. Everything else they use is fabric's public API.

pub mod digits;

/// The README's Rust examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
