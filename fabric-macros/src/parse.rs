//! Stage one: the attribute's arguments into a [`Config`]: what the user
//! wrote and where, and the typed [`Options`] it means.
//!
//! This stage knows the syntax of the attribute (`key = value`, separated by
//! commas). Each value is read as soon as it is parsed, so that the errors
//! come in the order of the attribute: a literal ([`literal`]) is turned
//! into a [`Value`] and parsed into its field of [`Options`] by
//! `tch-fabric-options` (the parser the runtime uses too, with the same
//! messages), pointing at the value when it is wrong. Unknown and repeated
//! keys are reported here; the combinations are checked by the next stage
//! (`validate.rs`).

use fabric_options::{Key, Options, did_you_mean};
use proc_macro2::{Span, TokenStream, TokenTree};
use quote::ToTokens;
use syn::ext::IdentExt;
use syn::parse::discouraged::Speculative;
use syn::parse::{ParseStream, Parser};
use syn::{Expr, ExprLit, Ident, Lit, Token};

use crate::ctxt::Ctxt;
use crate::literal;

/// An option as written: `devices = [1, 4]`, `callbacks = [A::new(), B]`.
pub(crate) struct Given {
    pub key: Key,
    /// The value as written, for errors about it.
    pub expr: Expr,
    /// How the value reaches the builder.
    pub form: Form,
}

/// How a [`Given`] value reaches the builder.
pub(crate) enum Form {
    /// A literal, parsed into [`Config::options`] (or reported).
    Literal,
    /// A `strategy` written as an expression building a strategy object
    /// (`DdpStrategy::new().bucket_cap_mb(50.0)`): handed to the builder as
    /// it is, checked by the type system.
    Passthrough,
    /// The expressions of `plugins`, `callbacks` or `loggers`, in order: the
    /// elements of a `[...]` list, or the one expression given.
    Exprs(Vec<Expr>),
}

/// Everything the attribute says, with spans, and what it means.
#[derive(Default)]
pub(crate) struct Config {
    /// The options given, in the order written.
    pub given: Vec<Given>,
    /// The literals given, parsed; an option not given, or whose value is
    /// invalid (and reported), has its default, as in the runtime's builder.
    pub options: Options,
    /// `crate = "path"`: where the runtime is, when it is re-exported.
    pub krate: Option<syn::Path>,
}

impl Config {
    /// The option `key`, if it was given.
    pub(crate) fn get(&self, key: Key) -> Option<&Given> {
        self.given.iter().find(|given| given.key == key)
    }

    /// The expressions of `plugins`, `callbacks` or `loggers` (none when
    /// the option was not given).
    pub(crate) fn exprs(&self, key: Key) -> &[Expr] {
        match self.get(key).map(|given| &given.form) {
            Some(Form::Exprs(items)) => items,
            _ => &[],
        }
    }

    /// Tokens to point at for an error about `key`: its value, or the whole
    /// attribute when the option was not given.
    pub(crate) fn error_tokens(&self, key: Option<Key>) -> TokenStream {
        match key.and_then(|key| self.get(key)) {
            Some(given) => given.expr.to_token_stream(),
            None => TokenTree::Ident(Ident::new("fabric", Span::call_site())).into(),
        }
    }

    /// Records one argument, reporting what is wrong with it right away so
    /// that the errors come in the order of the attribute.
    fn apply(&mut self, Arg { key: ident, value }: Arg, cx: &Ctxt) {
        let name = ident.unraw().to_string();
        if name == "crate" {
            self.set_crate(&ident, &value, cx);
            return;
        }
        let Some(key) = Key::from_name(&name) else {
            cx.error_at(ident.span(), unknown_key(&name));
            return;
        };
        if self.get(key).is_some() {
            let message = if key.takes_value() {
                format!("`{key}` set multiple times")
            } else {
                format!("`{key}` set multiple times; give every one in a list: `{key} = [a, b]`")
            };
            cx.error_at(ident.span(), message);
            return;
        }
        let form = if key.takes_value() {
            self.read_literal(key, &value, cx)
        } else {
            Form::Exprs(match literal::strip_groups(&value) {
                Expr::Array(array) => array.elems.iter().cloned().collect(),
                _ => vec![value.clone()],
            })
        };
        self.given.push(Given {
            key,
            expr: value,
            form,
        });
    }

    /// Reads the value of an option taking a literal into [`Self::options`].
    fn read_literal(&mut self, key: Key, expr: &Expr, cx: &Ctxt) -> Form {
        if key == Key::Strategy {
            if literal::is_strategy_object(expr) {
                return Form::Passthrough;
            }
            if let Some((class, strategy)) = literal::strategy_class(expr) {
                match literal::strategy_object(expr, &class, strategy) {
                    Ok(strategy) => self.options.strategy = strategy,
                    Err(error) => cx.syn_error(error),
                }
                return Form::Literal;
            }
        }
        match literal::value(key, expr) {
            Ok(value) => {
                if let Err(error) = self.options.set(key, &value) {
                    cx.error_spanned_by(expr, error.message());
                }
            }
            Err(error) => cx.syn_error(error),
        }
        Form::Literal
    }

    fn set_crate(&mut self, ident: &Ident, expr: &Expr, cx: &Ctxt) {
        if self.krate.is_some() {
            cx.error_at(ident.span(), "`crate` set multiple times");
            return;
        }
        let expected = "`crate` takes the path of the fabric crate as a string, such as `crate = \"my_crate::fabric\"`";
        match literal::strip_groups(expr) {
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

/// "unknown option": the message of `tch-fabric-options`, which knows the
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
