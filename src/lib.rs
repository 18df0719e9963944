//! Helpers shared by fabric's examples and integration tests: the data sets
//! they train on, and reading their settings from the environment.
//! Everything else they use is fabric's public API.

pub mod digits;
pub mod gpt;

/// The environment variable `name` parsed, or `default` when it is unset.
pub fn env_or<T>(name: &str, default: T) -> anyhow::Result<T>
where
    T: std::str::FromStr,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    match std::env::var(name) {
        Ok(value) => value
            .parse()
            .map_err(|e| anyhow::anyhow!("{name}={value:?}: {e}")),
        Err(_) => Ok(default),
    }
}

/// The README's Rust examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
