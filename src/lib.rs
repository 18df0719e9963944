//! Helpers shared by fabric's examples and integration tests: the data sets
//! they train on. Everything else they use is fabric's public API.

pub mod digits;
