//! The generated code. Nothing here parses or reports errors: it turns a
//! [`Config`] (its typed options, and the expressions given) and the user's
//! function into the wrapper
//!
//! ```text
//! fn train() -> R {
//!     fn __fabric_train(fabric: &mut Fabric) -> R { /* the user's body */ }
//!     let __fabric_plugins = (MyCluster,); // and the checks of the plugins
//!     ::fabric::__private::launch(
//!         ::fabric::Fabric::builder()
//!             .accelerator(..)
//!             .devices(..)
//!             .plugin(__fabric_plugins.0)
//!             .callback(..),
//!         __fabric_train,
//!     )
//! }
//! ```
//!
//! The user's body, parameter and return type keep their spans, so the
//! compiler's errors about them point at the user's code.

use fabric_options::{Key, Strategy, Value};
use proc_macro2::{Delimiter, Group, Literal, Punct, Spacing, Span, TokenStream, TokenTree};
use quote::{ToTokens, format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Expr, GenericArgument, Ident, ItemFn, PathArguments, ReturnType, Type};

use crate::parse::{Config, Form};

/// The wrapper around a function whose signature passed the checks. When
/// the attribute had errors, the options are left out (the builder gets
/// only the expressions of `plugins`, `callbacks` and `loggers`, which may
/// have type errors of their own to report), as tokio does with its default
/// configuration on error: the user sees the attribute's errors and the
/// body's, and nothing caused by the expansion.
pub(crate) fn wrapper(function: ItemFn, config: &Config, with_options: bool) -> TokenStream {
    let ItemFn {
        attrs,
        vis,
        sig,
        block,
        ..
    } = function;
    let krate = runtime_path(config);
    let inner = inner_name(&sig.ident);
    let param = &sig.inputs;
    let output = &sig.output;

    let mut outer_sig = sig.clone();
    outer_sig.inputs.clear();

    let plugins = Plugins::new(config);
    let checks = plugins.checks(config, &krate);
    let builder = builder(config, &plugins, &krate, with_options);
    // The compiler's error about the function's type (a return type that
    // is no `Result`, an error type without `From<fabric::Error>`) is
    // reported at the argument `__fabric_train`: point it at the return
    // type (`launch` too, so that the error has one place to point at).
    let mut argument = inner.clone();
    // `ddp_spawn` hands rank 0's result back to the launching process, so
    // its launcher needs the result serialisable.
    let spawn = with_options && config.options.strategy == Strategy::DdpSpawn;
    let launch_fn = if spawn {
        quote!(launch_spawn)
    } else {
        quote!(launch)
    };
    let mut launch = quote!(#krate::__private::#launch_fn);
    if let ReturnType::Type(_, ty) = output {
        let span = return_type_span(ty);
        argument.set_span(Span::call_site().located_at(span));
        launch = private_path(config, &krate, span);
        launch.extend(located(launch_fn, span));
    }
    quote! {
        #(#attrs)*
        #vis #outer_sig {
            fn #inner(#param) #output #block
            #checks
            #launch(#builder, #argument)
        }
    }
}

/// Where an error about the return type points: at `E` in `Result<T, E>`
/// (the error type, which is what can lack `From<fabric::Error>`), or at the
/// type.
fn return_type_span(ty: &Type) -> Span {
    let arguments = match ty {
        Type::Path(path) => path.path.segments.last().map(|last| &last.arguments),
        _ => None,
    };
    match arguments {
        Some(PathArguments::AngleBracketed(arguments)) if arguments.args.len() == 2 => {
            match arguments.args.last() {
                Some(GenericArgument::Type(error)) => error.span(),
                _ => ty.span(),
            }
        }
        _ => ty.span(),
    }
}

/// The function as the user wrote it, under the signature the wrapper would
/// have, for a signature the wrapper cannot drive: the body is still
/// type-checked (its errors are real), callers of `train()` see the function
/// they expect, and the only other errors are the attribute's. A method
/// (`self`) is returned unchanged, as it cannot be nested.
pub(crate) fn fallback(function: ItemFn) -> TokenStream {
    if function.sig.receiver().is_some() {
        return function.into_token_stream();
    }
    let ItemFn {
        attrs,
        vis,
        sig,
        block,
        ..
    } = function;
    let mut inner_sig = sig.clone();
    inner_sig.ident = inner_name(&sig.ident);
    let mut outer_sig = sig;
    outer_sig.inputs.clear();
    outer_sig.variadic = None;
    quote! {
        #(#attrs)*
        #vis #outer_sig {
            #[allow(dead_code)]
            #inner_sig #block
            ::core::unreachable!()
        }
    }
}

/// `__fabric_train` for `train`, located at the user's name (so that a
/// warning about it points there) and resolved where the macro is called.
fn inner_name(name: &Ident) -> Ident {
    format_ident!(
        "__fabric_{}",
        name,
        span = Span::call_site().located_at(name.span())
    )
}

/// `crate = "..."`, or `::fabric`.
fn runtime_path(config: &Config) -> TokenStream {
    match &config.krate {
        Some(path) => path.to_token_stream(),
        None => quote!(::fabric),
    }
}

/// The expressions of `plugins`, evaluated once, in order, into the tuple
/// `__fabric_plugins`, so that the checks can look at their types before
/// the builder takes them.
struct Plugins<'a> {
    config: &'a Config,
    exprs: Vec<&'a Expr>,
}

impl<'a> Plugins<'a> {
    fn new(config: &'a Config) -> Self {
        let exprs = config.exprs(Key::Plugins).iter().collect();
        Plugins { config, exprs }
    }

    /// The tuple, then the checks of what the plugins are:
    ///
    /// ```text
    /// let __fabric_plugins = (MyCluster, MixedPrecision::bf16(),);
    /// let __fabric_kinds = (
    ///     ::fabric::__private::plugin_kind!(__fabric_plugins.0),
    ///     ::fabric::__private::plugin_kind!(__fabric_plugins.1),
    /// );
    /// ::fabric::__private::check_runnable(__fabric_kinds.0);
    /// ::fabric::__private::check_runnable(__fabric_kinds.1);
    /// ::fabric::__private::check_beside_precision_option(__fabric_kinds.1); // with `precision`
    /// ::fabric::__private::check_second_plugin(__fabric_kinds.0, __fabric_kinds.1);
    /// ```
    ///
    /// Each check is located at the (later) plugin's expression, so that an
    /// error points at it.
    fn checks(&self, config: &Config, krate: &TokenStream) -> TokenStream {
        if self.exprs.is_empty() {
            return TokenStream::new();
        }
        // Only a valid `precision`: an invalid one is reported on its own.
        let with_precision = config.options.precision.is_some();
        let exprs = &self.exprs;
        let plugins = (0..exprs.len()).map(|i| self.field(PLUGINS, i, i));
        let mut tokens = quote! {
            let __fabric_plugins = (#(#exprs,)*);
            let __fabric_kinds = (#(#krate::__private::plugin_kind!(#plugins),)*);
        };
        for later in 0..exprs.len() {
            let kind = self.field(KINDS, later, later);
            tokens.extend(self.check(krate, "check_runnable", &[&kind], later));
            if with_precision {
                tokens.extend(self.check(krate, "check_beside_precision_option", &[&kind], later));
            }
            for earlier in 0..later {
                // Both arguments located at the later plugin: the error
                // points at one of them.
                let earlier = self.field(KINDS, earlier, later);
                tokens.extend(self.check(krate, "check_second_plugin", &[&earlier, &kind], later));
            }
        }
        tokens
    }

    /// `__fabric_plugins.0` (or `__fabric_kinds.0`): field `index` of the
    /// tuple, located from the first to the last token of plugin `at`, so
    /// that an error about the value underlines the user's expression.
    fn field(&self, tuple: &str, index: usize, at: usize) -> TokenStream {
        let (first, last) = token_range(self.exprs[at]);
        let tuple = Ident::new(tuple, Span::call_site().located_at(first));
        let mut dot = Punct::new('.', Spacing::Alone);
        dot.set_span(Span::call_site().located_at(last));
        let mut index = Literal::usize_unsuffixed(index);
        index.set_span(Span::call_site().located_at(last));
        quote!(#tuple #dot #index)
    }

    /// `::fabric::__private::function(args);`, located at plugin `at`.
    fn check(
        &self,
        krate: &TokenStream,
        function: &str,
        args: &[&TokenStream],
        at: usize,
    ) -> TokenStream {
        // The function's path and the call cover the same tokens as the
        // arguments, so that the compiler has one place to point at.
        let (first, last) = token_range(self.exprs[at]);
        let function = Ident::new(function, Span::call_site().located_at(last));
        let mut args = Group::new(Delimiter::Parenthesis, quote!(#(#args),*));
        args.set_span(Span::call_site().located_at(last));
        let mut semi = Punct::new(';', Spacing::Alone);
        semi.set_span(Span::call_site().located_at(last));
        let path = private_path(self.config, krate, first);
        quote!(#path #function #args #semi)
    }

    /// The argument of `.plugin(...)` for plugin `index`.
    fn argument(&self, index: usize) -> TokenStream {
        self.field(PLUGINS, index, index)
    }
}

const PLUGINS: &str = "__fabric_plugins";
const KINDS: &str = "__fabric_kinds";

/// `::fabric::__private::`, located at `at`. A path given with
/// `crate = "..."` stays at the string, so that an error about it (a path
/// that does not resolve) is reported there, once.
fn private_path(config: &Config, krate: &TokenStream, at: Span) -> TokenStream {
    let mut path = match config.krate {
        Some(_) => krate.clone(),
        None => located(krate.clone(), at),
    };
    path.extend(located(quote!(::__private::), at));
    path
}

/// The spans of the first and the last token of `expr` (`syn`'s `span()`
/// joins them only on nightly).
fn token_range(expr: &Expr) -> (Span, Span) {
    let mut tokens = expr.to_token_stream().into_iter();
    let first = tokens.next().map_or_else(Span::call_site, |t| t.span());
    let last = tokens.last().map_or(first, |t| t.span());
    (first, last)
}

/// `tokens` moved to `at`, each keeping its hygiene. A group's delimiters
/// move, not its content (the arguments of a check are already located).
fn located(tokens: TokenStream, at: Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|mut token| {
            if let TokenTree::Group(group) = &token {
                let mut moved = Group::new(group.delimiter(), group.stream());
                moved.set_span(group.span().located_at(at));
                token = TokenTree::Group(moved);
            } else {
                token.set_span(token.span().located_at(at));
            }
            token
        })
        .collect()
}

/// `Fabric::builder()` and one call per option and per expression, in the
/// order written within each key. An option given as a literal is passed
/// as the typed options hold it, in canonical form (`precision = 16` as
/// `"16-mixed"`): the runtime parses it again, with the `LT_*` overrides.
fn builder(
    config: &Config,
    plugins: &Plugins,
    krate: &TokenStream,
    with_options: bool,
) -> TokenStream {
    let mut calls = TokenStream::new();
    if with_options {
        for key in Key::ALL.into_iter().filter(|key| key.takes_value()) {
            let Some(given) = config.get(key) else {
                continue;
            };
            if let Form::Passthrough = given.form {
                let expr = &given.expr;
                let method = format_ident!("{}", key.name(), span = expr.span());
                calls.extend(quote_spanned!(expr.span()=> .#method(#expr)));
            } else if let Some(value) = config.options.get(key) {
                let method = format_ident!("{}", key.name());
                let value = value_tokens(&value, krate);
                calls.extend(quote!(.#method(#value)));
            }
        }
    }
    // Located at the expressions: "`X` is not a fabric plugin" points at
    // the user's `X`.
    for (index, expr) in plugins.exprs.iter().enumerate() {
        let argument = plugins.argument(index);
        let (first, _) = token_range(expr);
        let mut call = Group::new(Delimiter::Parenthesis, argument);
        call.set_span(Span::call_site().located_at(first));
        calls.extend(located(quote!(.plugin), first));
        calls.extend([TokenTree::Group(call)]);
    }
    for (key, method) in [(Key::Callbacks, "callback"), (Key::Loggers, "logger")] {
        for expr in config.exprs(key) {
            let method = format_ident!("{method}", span = expr.span());
            calls.extend(quote_spanned!(expr.span()=> .#method(#expr)));
        }
    }
    quote!(#krate::Fabric::builder() #calls)
}

/// The value as the expression that builds it.
fn value_tokens(value: &Value, krate: &TokenStream) -> TokenStream {
    let ty = quote!(#krate::options::Value);
    match value {
        Value::Str(s) => quote!(#ty::Str(::std::string::String::from(#s))),
        Value::Int(i) => {
            let i = Literal::i64_suffixed(*i);
            quote!(#ty::Int(#i))
        }
        Value::List(items) => {
            let items = items.iter().map(|i| Literal::i64_suffixed(*i));
            quote!(#ty::List(::std::vec![#(#items),*]))
        }
        Value::None => quote!(#ty::None),
    }
}
