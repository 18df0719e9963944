//! Stage one: the attribute's arguments into a [`Config`] that keeps, for
//! every option, what the user wrote and where.
//!
//! This stage knows the syntax of the attribute (`key = value`, separated by
//! commas) and the literal forms an option can be written in, and turns each
//! literal into a [`Value`]. It reports unknown and repeated keys and values
//! written in a form that is not a literal. What a value *means* is left to
//! [`validate`](crate::validate), which asks `fabric-options`; each value is
//! handed to it as soon as it is read, so that the errors come in the order
//! of the attribute.

use fabric_options::{Key, Options, Strategy, Value, did_you_mean};
use proc_macro2::{Span, TokenStream, TokenTree};
use quote::ToTokens;
use syn::ext::IdentExt;
use syn::parse::discouraged::Speculative;
use syn::parse::{ParseStream, Parser};
use syn::{Expr, ExprLit, ExprUnary, Ident, Lit, LitInt, Token, UnOp};

use crate::ctxt::Ctxt;
use crate::validate;

/// An option given a value: `devices = [1, 4]`.
pub(crate) struct Setting {
    /// The value as written, for errors about the value.
    pub expr: Expr,
    /// The value as a [`Value`]; `None` when it is not written as a literal
    /// (an error has been reported, or the expression is passed through).
    pub value: Option<Value>,
    /// A `strategy` written as an expression building a strategy object
    /// (`DdpStrategy::new().bucket_cap_mb(50.0)`): handed to the builder
    /// as it is, checked by the type system.
    pub passthrough: bool,
}

/// An option taking expressions: `callbacks = [A::new(), B]` or
/// `loggers = MyLogger::new()`.
pub(crate) struct Exprs {
    /// The value as written.
    pub expr: Expr,
    /// The expressions, in order: the elements of a `[...]` list, or the one
    /// expression given.
    pub items: Vec<Expr>,
}

/// Everything the attribute says, with spans.
#[derive(Default)]
pub(crate) struct Config {
    pub accelerator: Option<Setting>,
    pub strategy: Option<Setting>,
    pub devices: Option<Setting>,
    pub num_nodes: Option<Setting>,
    pub precision: Option<Setting>,
    pub plugins: Option<Exprs>,
    pub callbacks: Option<Exprs>,
    pub loggers: Option<Exprs>,
    /// `crate = "path"`: where the runtime is, when it is re-exported.
    pub krate: Option<syn::Path>,
}

/// The options taking a literal value, in the order the builder is called.
pub(crate) const VALUE_KEYS: [Key; 5] = [
    Key::Accelerator,
    Key::Strategy,
    Key::Devices,
    Key::NumNodes,
    Key::Precision,
];

impl Config {
    /// The setting of an option that takes a literal, if it was given.
    pub(crate) fn setting(&self, key: Key) -> Option<&Setting> {
        match key {
            Key::Accelerator => self.accelerator.as_ref(),
            Key::Strategy => self.strategy.as_ref(),
            Key::Devices => self.devices.as_ref(),
            Key::NumNodes => self.num_nodes.as_ref(),
            Key::Precision => self.precision.as_ref(),
            Key::Plugins | Key::Callbacks | Key::Loggers => None,
        }
    }

    /// The expressions of `plugins`, `callbacks` or `loggers`, if given.
    pub(crate) fn exprs(&self, key: Key) -> Option<&Exprs> {
        match key {
            Key::Plugins => self.plugins.as_ref(),
            Key::Callbacks => self.callbacks.as_ref(),
            Key::Loggers => self.loggers.as_ref(),
            _ => None,
        }
    }

    /// Tokens to point at for an error about `key`: its value, or the whole
    /// attribute when the option was not given.
    pub(crate) fn error_tokens(&self, key: Option<Key>) -> TokenStream {
        let expr = match key {
            Some(key @ (Key::Plugins | Key::Callbacks | Key::Loggers)) => {
                self.exprs(key).map(|e| &e.expr)
            }
            Some(key) => self.setting(key).map(|s| &s.expr),
            None => None,
        };
        match expr {
            Some(expr) => expr.to_token_stream(),
            None => TokenTree::Ident(Ident::new("fabric", Span::call_site())).into(),
        }
    }

    fn set_value(&mut self, key: Key, ident: &Ident, expr: Expr, cx: &Ctxt) {
        let slot = match key {
            Key::Accelerator => &mut self.accelerator,
            Key::Strategy => &mut self.strategy,
            Key::Devices => &mut self.devices,
            Key::NumNodes => &mut self.num_nodes,
            Key::Precision => &mut self.precision,
            Key::Plugins | Key::Callbacks | Key::Loggers => {
                unreachable!("`{key}` takes expressions")
            }
        };
        if slot.is_some() {
            cx.error_at(ident.span(), format!("`{key}` set multiple times"));
            return;
        }
        if key == Key::Strategy && is_strategy_object(&expr) {
            *slot = Some(Setting {
                expr,
                value: None,
                passthrough: true,
            });
            return;
        }
        let value = literal_value(key, &expr).map_err(|e| cx.syn_error(e)).ok();
        if let Some(value) = &value {
            validate::check_value(key, &expr, value, cx);
        }
        *slot = Some(Setting {
            expr,
            value,
            passthrough: false,
        });
    }

    fn set_exprs(&mut self, key: Key, ident: &Ident, expr: Expr, cx: &Ctxt) {
        let slot = match key {
            Key::Plugins => &mut self.plugins,
            Key::Callbacks => &mut self.callbacks,
            Key::Loggers => &mut self.loggers,
            _ => unreachable!("`{key}` takes a literal"),
        };
        if slot.is_some() {
            cx.error_at(
                ident.span(),
                format!("`{key}` set multiple times; give every one in a list: `{key} = [a, b]`"),
            );
            return;
        }
        let items = match strip_groups(&expr) {
            Expr::Array(array) => array.elems.iter().cloned().collect(),
            _ => vec![expr.clone()],
        };
        *slot = Some(Exprs { expr, items });
    }

    fn set_crate(&mut self, ident: &Ident, expr: &Expr, cx: &Ctxt) {
        if self.krate.is_some() {
            cx.error_at(ident.span(), "`crate` set multiple times");
            return;
        }
        let expected = "`crate` takes the path of the fabric crate as a string, such as `crate = \"my_crate::fabric\"`";
        match strip_groups(expr) {
            Expr::Lit(ExprLit {
                lit: Lit::Str(path),
                ..
            }) => match path.parse::<syn::Path>() {
                Ok(path) => self.krate = Some(path),
                Err(_) => cx.error_spanned_by(
                    path,
                    format!("{:?} is not a path; {expected}", path.value()),
                ),
            },
            _ => cx.error_spanned_by(expr, expected),
        }
    }
}

/// One `key = value` argument, before the key is looked up.
struct Arg {
    key: Ident,
    value: Expr,
}

/// Parses the attribute's arguments. Every problem is reported to `cx`; what
/// could be understood is returned, so that later stages report their own
/// errors too.
pub(crate) fn parse_config(args: TokenStream, cx: &Ctxt) -> Config {
    let mut config = Config::default();
    let parser = |input: ParseStream| parse_args(input, cx, |arg| config.apply(arg, cx));
    if let Err(error) = parser.parse2(args) {
        cx.syn_error(error);
    }
    config
}

impl Config {
    /// Records one argument, reporting what is wrong with it right away so
    /// that the errors come in the order of the attribute.
    fn apply(&mut self, Arg { key, value }: Arg, cx: &Ctxt) {
        let name = key.unraw().to_string();
        if name == "crate" {
            self.set_crate(&key, &value, cx);
            return;
        }
        match Key::from_name(&name) {
            Some(k @ (Key::Plugins | Key::Callbacks | Key::Loggers)) => {
                self.set_exprs(k, &key, value, cx);
            }
            Some(k) => self.set_value(k, &key, value, cx),
            None => cx.error_at(key.span(), unknown_key(&name)),
        }
    }
}

/// "unknown option": the message of `fabric-options`, which knows the
/// runtime's options, or a suggestion of `crate`, which only the attribute
/// has.
fn unknown_key(name: &str) -> String {
    let error = Key::unknown(name);
    if !error.message().contains("did you mean") && !did_you_mean(name, ["crate"]).is_empty() {
        return format!(
            "unknown option `{name}`: did you mean `crate`? It names the fabric crate when it is re-exported: `crate = \"my_crate::fabric\"`"
        );
    }
    error.message().to_owned()
}

/// `key = value, ...`, recovering after a malformed argument at the next
/// comma so that the arguments after it are still checked.
fn parse_args(input: ParseStream, cx: &Ctxt, mut on_arg: impl FnMut(Arg)) -> syn::Result<()> {
    while !input.is_empty() {
        let fork = input.fork();
        match parse_arg(&fork) {
            Ok(arg) => {
                input.advance_to(&fork);
                on_arg(arg);
            }
            Err(error) => {
                cx.syn_error(error);
                while !input.is_empty() && !input.peek(Token![,]) {
                    input.parse::<TokenTree>()?;
                }
            }
        }
        if !input.is_empty() {
            input.parse::<Token![,]>()?;
        }
    }
    Ok(())
}

fn parse_arg(input: ParseStream) -> syn::Result<Arg> {
    if !input.peek(Ident::peek_any) {
        return Err(input.error("expected an option, such as `accelerator = \"cpu\"`"));
    }
    let key = input.call(Ident::parse_any)?;
    if !input.peek(Token![=]) {
        let message = format!("expected `=` and a value after `{key}`");
        return Err(if input.is_empty() || input.peek(Token![,]) {
            syn::Error::new(key.span(), message)
        } else {
            input.error(message)
        });
    }
    input.parse::<Token![=]>()?;
    if input.is_empty() || input.peek(Token![,]) {
        return Err(input.error(format!("expected a value for `{key}`")));
    }
    let value: Expr = input.parse()?;
    if !input.is_empty() && !input.peek(Token![,]) {
        return Err(input.error("expected `,` between options"));
    }
    Ok(Arg { key, value })
}

/// The literal forms a key accepts, for a value written in another form.
fn expected_form(key: Key) -> &'static str {
    match key {
        Key::Accelerator => "a string literal such as \"cpu\" or \"cuda\"",
        Key::Strategy => "a string literal such as \"ddp\"",
        Key::Devices => {
            "an integer literal such as 2 or -1, a list of device indices such as [1, 4], a string literal such as \"1, 4\", or None"
        }
        Key::NumNodes => "a positive integer literal such as 1",
        Key::Precision => {
            "a string literal such as \"bf16-mixed\" or an integer literal such as 32"
        }
        Key::Plugins | Key::Callbacks | Key::Loggers => "an expression",
    }
}

/// The literal as a [`Value`]: a string, an integer (possibly negative), a
/// list of integers, or `None`. Anything else cannot be checked at compile
/// time and is an error.
fn literal_value(key: Key, expr: &Expr) -> syn::Result<Value> {
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
            None if key == Key::Strategy => match strategy_class(expr) {
                Some((class, strategy)) => strategy_object(expr, &class, strategy),
                None => Err(wrong_form(key, expr)),
            },
            None => Err(wrong_form(key, expr)),
        },
    }
}

/// Whether `expr` builds a strategy object of fabric's (`DdpStrategy::new()`,
/// possibly with method calls): a call, a path or a method chain that is not
/// a literal and names no Lightning strategy class.
fn is_strategy_object(expr: &Expr) -> bool {
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
fn strategy_class(expr: &Expr) -> Option<(String, Strategy)> {
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

/// A Lightning strategy object. Its strategy is one that fabric rejects
/// (DeepSpeed, FSDP, XLA): the value is that strategy's name, so that the
/// combination check says why, pointing at the object. Otherwise the object
/// is an error that names the strategy to write instead.
fn strategy_object(expr: &Expr, class: &str, strategy: Strategy) -> syn::Result<Value> {
    let options = Options {
        strategy,
        ..Options::default()
    };
    if options
        .check()
        .iter()
        .any(|error| error.key() == Some(Key::Strategy))
    {
        return Ok(Value::Str(strategy.name().to_owned()));
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
fn strip_groups(mut expr: &Expr) -> &Expr {
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
        Expr::Lit(_) | Expr::Array(_) => format!("expected {}, found {found}", expected_form(key)),
        Expr::Path(path)
            if path
                .path
                .get_ident()
                .is_some_and(|ident| validate::accepts(key, &Value::Str(ident.to_string()))) =>
        {
            let ident = path
                .path
                .get_ident()
                .map(ToString::to_string)
                .unwrap_or_default();
            format!(
                "expected {}, found {found}; write `{key} = \"{ident}\"`",
                expected_form(key)
            )
        }
        _ => format!(
            "expected a literal, found {found}: the attribute is checked at compile time, so it cannot read constants or variables; write the value, such as `{key} = {}`, or give a value known only at run time to `Fabric::builder().{key}(...)`",
            example(key)
        ),
    };
    syn::Error::new_spanned(expr, message)
}

/// A valid value of `key`, for messages.
fn example(key: Key) -> &'static str {
    match key {
        Key::Accelerator => "\"cpu\"",
        Key::Strategy => "\"ddp\"",
        Key::Devices => "2",
        Key::NumNodes => "1",
        Key::Precision => "\"bf16-mixed\"",
        Key::Plugins | Key::Callbacks | Key::Loggers => "[...]",
    }
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
