//! The generated code. Nothing here parses or reports errors: it turns a
//! [`Config`] and the user's function into the wrapper
//!
//! ```text
//! fn train() -> R {
//!     fn __fabric_train(fabric: &mut Fabric) -> R { /* the user's body */ }
//!     ::fabric::__private::launch(
//!         ::fabric::Fabric::builder().accelerator(..).devices(..).callback(..),
//!         __fabric_train,
//!     )
//! }
//! ```
//!
//! The user's body, parameter and return type keep their spans, so the
//! compiler's errors about them point at the user's code.

use fabric_options::Value;
use proc_macro2::{Literal, Span, TokenStream};
use quote::{ToTokens, format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Ident, ItemFn, ReturnType};

use crate::parse::{Config, VALUE_KEYS};

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

    let builder = builder(config, &krate, with_options);
    // The compiler's errors about the function's type (an error type
    // without `From<fabric::Error>`, a return type that is no `Result`) are
    // reported at the argument `__fabric_train`: point them at the return
    // type.
    let mut argument = inner.clone();
    if let ReturnType::Type(_, ty) = output {
        argument.set_span(Span::call_site().located_at(ty.span()));
    }
    quote! {
        #(#attrs)*
        #vis #outer_sig {
            fn #inner(#param) #output #block
            #krate::__private::launch(#builder, #argument)
        }
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

/// `Fabric::builder()` and one call per option and per expression, in the
/// order written within each key.
fn builder(config: &Config, krate: &TokenStream, with_options: bool) -> TokenStream {
    let mut calls = TokenStream::new();
    if with_options {
        for key in VALUE_KEYS {
            let Some(value) = config.setting(key).and_then(|s| s.value.as_ref()) else {
                continue;
            };
            let method = format_ident!("{}", key.name());
            let value = value_tokens(value, krate);
            calls.extend(quote!(.#method(#value)));
        }
    }
    let expression_keys = [
        (&config.plugins, "plugin"),
        (&config.callbacks, "callback"),
        (&config.loggers, "logger"),
    ];
    for (exprs, method) in expression_keys {
        for expr in exprs.iter().flat_map(|e| &e.items) {
            // Spanned on the expression: "`X` is not a fabric callback"
            // points at the user's `X`.
            let method = format_ident!("{method}", span = expr.span());
            calls.extend(quote_spanned!(expr.span()=> .#method(#expr)));
        }
    }
    quote!(#krate::Fabric::builder() #calls)
}

/// The value as the expression that builds it: the runtime parses it again
/// (with the `LT_*` overrides), exactly as written.
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
