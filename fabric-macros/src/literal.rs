//! The literal forms of an option's value: a string, an integer (possibly
//! negative), a list of integers or `None`, turned into a [`Value`]; and the
//! strategy objects `strategy` takes instead of a literal. Anything else
//! cannot be read at compile time, and is an error saying so.

use fabric_options::{Key, Options, Strategy, Value};
use quote::ToTokens;
use syn::{Expr, ExprLit, ExprUnary, Lit, LitInt, UnOp};

/// The literal as a [`Value`]: a string, an integer (possibly negative), a
/// list of integers, or `None`. Anything else cannot be checked at compile
/// time and is an error.
pub(crate) fn value(key: Key, expr: &Expr) -> syn::Result<Value> {
    match strip_groups(expr) {
        Expr::Lit(ExprLit {
            lit: Lit::Str(s), ..
        }) => Ok(Value::Str(s.value())),
        Expr::Array(array) => {
            let mut items = Vec::with_capacity(array.elems.len());
            for elem in &array.elems {
                match integer(elem) {
                    Some(item) => items.push(item?),
                    None if key == Key::Devices => {
                        return Err(syn::Error::new_spanned(
                            elem,
                            format!(
                                "expected a device index (an integer literal), found {}",
                                describe(elem)
                            ),
                        ));
                    }
                    None => return Err(wrong_form(key, expr)),
                }
            }
            Ok(Value::List(items))
        }
        Expr::Path(path) if is_none(path) => Ok(Value::None),
        _ => match integer(expr) {
            Some(int) => int.map(Value::Int),
            None => Err(wrong_form(key, expr)),
        },
    }
}

/// Whether `expr` builds a strategy object of fabric's (`DdpStrategy::new()`,
/// possibly with method calls): a call, a path or a method chain that is not
/// a literal and names no Lightning strategy class.
pub(crate) fn is_strategy_object(expr: &Expr) -> bool {
    let root = {
        let mut e = strip_groups(expr);
        while let Expr::MethodCall(call) = e {
            e = strip_groups(&call.receiver);
        }
        e
    };
    // A lone lower-case name (`strategy = ddp`) is a forgotten string, not
    // an object: the literal parser reports it with the fix.
    let lone_name = matches!(root, Expr::Path(path)
        if path.path.segments.len() == 1
            && path.path.segments[0].ident.to_string().starts_with(|c: char| c.is_lowercase()));
    matches!(root, Expr::Call(_) | Expr::Path(_) | Expr::Struct(_))
        && !lone_name
        && !matches!(root, Expr::Path(path) if is_none(path))
        && strategy_class(expr).is_none()
}

/// The Lightning strategy class that `expr` builds, as Lightning's docs
/// write `strategy=DeepSpeedStrategy(stage=2)`: a call, a struct literal, a
/// path or a method chain on one of them, naming a class such as
/// `DeepSpeedStrategy` (also as `DeepSpeedStrategy::new(..)`).
pub(crate) fn strategy_class(expr: &Expr) -> Option<(String, Strategy)> {
    let path = match strip_groups(expr) {
        Expr::Call(call) => match strip_groups(&call.func) {
            Expr::Path(path) => &path.path,
            _ => return None,
        },
        Expr::Struct(literal) => &literal.path,
        Expr::Path(path) => &path.path,
        Expr::MethodCall(call) => return strategy_class(&call.receiver),
        _ => return None,
    };
    path.segments.iter().rev().find_map(|segment| {
        let class = segment.ident.to_string();
        Strategy::from_class_name(&class).map(|strategy| (class, strategy))
    })
}

/// A Lightning strategy object (`DeepSpeedStrategy(stage=2)`), as the
/// strategy it builds when fabric rejects that strategy (DeepSpeed, FSDP,
/// model parallelism, XLA), so that the combination check says why,
/// pointing at the object. Otherwise the object is an error that names the
/// strategy to write instead.
pub(crate) fn strategy_object(
    expr: &Expr,
    class: &str,
    strategy: Strategy,
) -> syn::Result<Strategy> {
    let options = Options {
        strategy,
        ..Options::default()
    };
    if options
        .check()
        .iter()
        .any(|error| error.key() == Some(Key::Strategy))
    {
        return Ok(strategy);
    }
    Err(syn::Error::new_spanned(
        expr,
        format!(
            "`{class}` builds a Lightning strategy object, which the attribute does not take; write the strategy's name: `strategy = \"{strategy}\"`"
        ),
    ))
}

/// `expr` as an integer, if it is an integer literal or a negated one.
fn integer(expr: &Expr) -> Option<syn::Result<i64>> {
    match strip_groups(expr) {
        Expr::Lit(ExprLit {
            lit: Lit::Int(int), ..
        }) => Some(int_value(int, false)),
        Expr::Unary(ExprUnary {
            op: UnOp::Neg(_),
            expr: inner,
            ..
        }) => match strip_groups(inner) {
            Expr::Lit(ExprLit {
                lit: Lit::Int(int), ..
            }) => Some(int_value(int, true)),
            _ => None,
        },
        _ => None,
    }
}

fn int_value(int: &LitInt, negative: bool) -> syn::Result<i64> {
    let out_of_range = || {
        syn::Error::new(
            int.span(),
            format!(
                "`{}{}` does not fit in an i64",
                if negative { "-" } else { "" },
                int.base10_digits()
            ),
        )
    };
    let magnitude = int.base10_parse::<i128>().map_err(|_| out_of_range())?;
    let value = if negative { -magnitude } else { magnitude };
    i64::try_from(value).map_err(|_| out_of_range())
}

fn is_none(path: &syn::ExprPath) -> bool {
    path.qself.is_none() && path.path.is_ident("None")
}

/// Looks through the invisible groups a `macro_rules!` caller may add.
pub(crate) fn strip_groups(mut expr: &Expr) -> &Expr {
    while let Expr::Group(group) = expr {
        expr = &group.expr;
    }
    expr
}

/// "expected a string literal such as ..., found ...", with a hint for a
/// constant or an expression, which the attribute cannot evaluate.
fn wrong_form(key: Key, expr: &Expr) -> syn::Error {
    let found = describe(expr);
    let message = match strip_groups(expr) {
        Expr::Lit(_) | Expr::Array(_) => format!("expected {}, found {found}", key.written()),
        Expr::Path(path)
            if path
                .path
                .get_ident()
                .is_some_and(|ident| key.canonical(&Value::Str(ident.to_string())).is_ok()) =>
        {
            let ident = path
                .path
                .get_ident()
                .map(ToString::to_string)
                .unwrap_or_default();
            format!(
                "expected {}, found {found}; write `{key} = \"{ident}\"`",
                key.written()
            )
        }
        _ => format!(
            "expected a literal, found {found}: the attribute is checked at compile time, so it cannot read constants or variables; write the value, such as `{key} = {}`, or give a value known only at run time to `Fabric::builder().{key}(...)`",
            key.example()
        ),
    };
    syn::Error::new_spanned(expr, message)
}

/// A short description of a value's form, for "found ...".
fn describe(expr: &Expr) -> String {
    let tokens = expr.to_token_stream().to_string();
    match strip_groups(expr) {
        Expr::Lit(ExprLit { lit, .. }) => match lit {
            Lit::Str(_) => format!("the string literal {tokens}"),
            Lit::Int(_) => format!("the integer literal `{tokens}`"),
            Lit::Float(_) => format!("the float literal `{tokens}`"),
            Lit::Bool(_) => format!("the boolean `{tokens}`"),
            Lit::Char(_) => format!("the character literal {tokens}"),
            Lit::ByteStr(_) | Lit::Byte(_) | Lit::CStr(_) => {
                format!("the byte literal {tokens}")
            }
            _ => format!("`{tokens}`"),
        },
        Expr::Array(_) => format!("the list `{tokens}`"),
        Expr::Path(path) if path.path.get_ident().is_some() => {
            format!("the identifier `{tokens}`")
        }
        Expr::Path(_) => format!("the path `{tokens}`"),
        _ => "an expression".to_owned(),
    }
}
