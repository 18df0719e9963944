//! The options of fabric's training configuration and their parser.
//!
//! This crate is shared by the `#[fabric(...)]` attribute, which runs it at
//! compile time and points at the offending token, and by the runtime, which
//! runs it on builder values and on the `LT_*` environment variables. Both
//! therefore accept exactly the same values and print exactly the same
//! messages.
//!
//! Each option has a type with a `parse` function taking a [`Value`]: the
//! forms a user can write (a string, an integer, a list of integers, or
//! nothing). The options are described once, in a schema keyed by [`Key`]:
//! each key's name, its `LT_*` variable ([`Key::env_var`]) and the field of
//! [`Options`] its value is parsed into ([`Options::set`], [`Options::get`]).
//! [`RawOptions`] holds the values as given and parses them all;
//! [`Options::check`] then validates the combinations that can never work,
//! whatever the machine.
//!
//! ```
//! use fabric_options::{Accelerator, Devices, Precision, Value};
//!
//! assert_eq!(Accelerator::parse(&Value::from("cuda")).unwrap(), Accelerator::Cuda);
//! assert_eq!(Devices::parse(&Value::from("1, 4")).unwrap(), Devices::Indices(vec![1, 4]));
//! assert_eq!(Precision::parse(&Value::from(16)).unwrap(), Precision::Mixed16);
//!
//! let err = Precision::parse(&Value::from("bf16-mixd")).unwrap_err();
//! assert!(err.to_string().contains("did you mean `bf16-mixed`"));
//! ```

mod accelerator;
mod check;
mod devices;
mod error;
mod hooks;
mod key;
mod num_nodes;
mod precision;
mod raw;
mod schema;
mod strategy;
mod suggest;
mod value;

pub use accelerator::Accelerator;
pub use check::Options;
pub use devices::Devices;
pub use error::OptionError;
pub use hooks::{STANDARD_HOOKS, hook_type};
pub use key::Key;
pub use num_nodes::NumNodes;
pub use precision::Precision;
pub use raw::RawOptions;
pub use strategy::{Offload, Strategy, StrategyName, StrategyParams};
pub use suggest::{Suggestions, did_you_mean};
pub use value::{Integer, Value};
