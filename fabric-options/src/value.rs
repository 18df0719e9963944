//! [`Value`]: the forms an option can be written in.

use std::fmt;

/// An option's value as the user wrote it, before it is interpreted.
///
/// Lightning accepts strings, integers, lists of integers and `None`; so does
/// fabric, in the attribute, in the builder and in `LT_*` variables. Values
/// convert from the Rust types a user would naturally write:
///
/// ```
/// use fabric_options::Value;
///
/// assert_eq!(Value::from("cpu"), Value::Str("cpu".into()));
/// assert_eq!(Value::from(2), Value::Int(2));
/// assert_eq!(Value::from([1, 4]), Value::List(vec![1, 4]));
/// assert_eq!(Value::from(None::<i64>), Value::None);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// A string, such as `"bf16-mixed"` or `"1, 4"`.
    Str(String),
    /// An integer, such as `2` or `-1`.
    Int(i64),
    /// A list of integers, such as `[1, 4]`.
    List(Vec<i64>),
    /// Nothing (`None`).
    None,
}

impl Value {
    /// A short description of the value's form, used in error messages
    /// ("expected a string, found an integer").
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Str(_) => "a string",
            Value::Int(_) => "an integer",
            Value::List(_) => "a list",
            Value::None => "`None`",
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Str(s) => write!(f, "\"{s}\""),
            Value::Int(i) => write!(f, "{i}"),
            Value::List(items) => {
                f.write_str("[")?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{item}")?;
                }
                f.write_str("]")
            }
            Value::None => f.write_str("None"),
        }
    }
}

/// Integer types that convert into a [`Value`] (sealed).
pub trait Integer: Copy + sealed::Sealed {
    /// The integer as an `i64`, saturating at `i64::MAX` (far beyond any
    /// meaningful count, so the parser rejects it with a clear message).
    fn to_i64(self) -> i64;
}

mod sealed {
    pub trait Sealed {}
}

macro_rules! integers {
    ($($t:ty),*) => {$(
        impl sealed::Sealed for $t {}
        impl Integer for $t {
            fn to_i64(self) -> i64 {
                i64::try_from(self).unwrap_or(i64::MAX)
            }
        }
    )*};
}
integers!(i8, i16, i32, i64, isize, u8, u16, u32, u64, usize);

impl<T: Integer> From<T> for Value {
    fn from(value: T) -> Self {
        Value::Int(value.to_i64())
    }
}

impl<T: Integer, const N: usize> From<[T; N]> for Value {
    fn from(values: [T; N]) -> Self {
        Value::List(values.iter().map(|v| v.to_i64()).collect())
    }
}

impl<T: Integer> From<&[T]> for Value {
    fn from(values: &[T]) -> Self {
        Value::List(values.iter().map(|v| v.to_i64()).collect())
    }
}

impl<T: Integer> From<Vec<T>> for Value {
    fn from(values: Vec<T>) -> Self {
        Value::from(values.as_slice())
    }
}

impl From<&str> for Value {
    fn from(value: &str) -> Self {
        Value::Str(value.to_owned())
    }
}

impl From<String> for Value {
    fn from(value: String) -> Self {
        Value::Str(value)
    }
}

impl From<&String> for Value {
    fn from(value: &String) -> Self {
        Value::Str(value.clone())
    }
}

impl<V: Into<Value>> From<Option<V>> for Value {
    fn from(value: Option<V>) -> Self {
        value.map_or(Value::None, Into::into)
    }
}
