//! The item under the attribute: it must be a function that the generated
//! wrapper can call with a `&mut Fabric`.
//!
//! The wrapper is `fn train() -> R`, so the function must take exactly one
//! parameter, the `Fabric`, and have nothing the wrapper cannot reproduce
//! (generics, `async`, `const`, `unsafe`, an ABI). Its return type must be
//! written: the runtime returns a configuration error through it, so it must
//! be a `Result` whose error converts from `fabric::Error` — a bound that the
//! compiler checks on the generated call.

use proc_macro2::TokenStream;
use quote::{ToTokens, quote};
use syn::{FnArg, Item, ItemFn, ReturnType, Safety, Signature, Type};

use crate::ctxt::Ctxt;

/// Reports every part of the function's signature that the generated
/// wrapper cannot drive.
pub(crate) fn check(function: &ItemFn, cx: &Ctxt) {
    if let Err(error) = function.modifiers.require_empty() {
        cx.syn_error(error);
    }
    let sig = &function.sig;
    let name = &sig.ident;
    let wrapper = format!("the generated `{name}()`");

    if let Some(token) = &sig.constness {
        cx.error_spanned_by(
            token,
            format!(
                "a #[fabric] function cannot be `const`: {wrapper} builds a `Fabric` at run time"
            ),
        );
    }
    if let Some(token) = &sig.asyncness {
        cx.error_spanned_by(
            token,
            "a #[fabric] function cannot be `async`: fabric drives training synchronously; remove `async`",
        );
    }
    if let Safety::Unsafe(token) = &sig.safety {
        cx.error_spanned_by(
            token,
            format!("a #[fabric] function cannot be `unsafe`: {wrapper} calls it safely; put the unsafe code in an `unsafe` block"),
        );
    }
    if let Some(abi) = &sig.abi {
        cx.error_spanned_by(
            abi,
            "a #[fabric] function cannot have an ABI: it is called from Rust by the generated wrapper",
        );
    }
    if !sig.generics.params.is_empty() {
        cx.error_spanned_by(
            &sig.generics,
            "a #[fabric] function cannot be generic: the generated wrapper calls it through a plain `fn(&mut Fabric) -> Result<..>` pointer",
        );
    }
    if let Some(where_clause) = &sig.generics.where_clause {
        cx.error_spanned_by(
            where_clause,
            "a #[fabric] function cannot have a `where` clause",
        );
    }
    if let Some(variadic) = &sig.variadic {
        cx.error_spanned_by(variadic, "a #[fabric] function cannot be variadic");
    }

    check_parameters(sig, cx);

    check_return_type(sig, cx);
}

/// The return type: present, and not a type that is certainly no `Result`
/// (the compiler checks the rest on the generated call, pointing at it).
fn check_return_type(sig: &Signature, cx: &Ctxt) {
    let name = &sig.ident;
    let why = format!(
        "a #[fabric] function returns a `Result` whose error type converts from `fabric::Error`, so that the generated `{name}()` can report a configuration this machine cannot run"
    );
    match &sig.output {
        ReturnType::Default => cx.error_spanned_by(
            head(sig),
            format!(
                "missing return type: {why}; add `-> Result<(), fabric::Error>` (or `-> anyhow::Result<()>`)"
            ),
        ),
        ReturnType::Type(_, ty) if certainly_not_a_result(ty) => {
            let found = pretty(ty);
            cx.error_spanned_by(
                ty,
                format!(
                    "expected a `Result`, found `{found}`: {why}; write `-> Result<{found}, fabric::Error>`"
                ),
            );
        }
        ReturnType::Type(..) => {}
    }
}

/// Whether `ty` cannot be a `Result` whatever the user's aliases: a tuple,
/// a reference, a primitive, `String`, `Vec`, ...
fn certainly_not_a_result(ty: &Type) -> bool {
    const NOT_RESULTS: [&str; 21] = [
        "bool", "char", "str", "f32", "f64", "i8", "i16", "i32", "i64", "i128", "isize", "u8",
        "u16", "u32", "u64", "u128", "usize", "String", "Vec", "Option", "Box",
    ];
    match strip(ty) {
        Type::Path(path) => {
            path.qself.is_none()
                && path
                    .path
                    .segments
                    .last()
                    .is_some_and(|last| NOT_RESULTS.iter().any(|name| last.ident == name))
        }
        Type::Tuple(_)
        | Type::Reference(_)
        | Type::Array(_)
        | Type::Slice(_)
        | Type::Never(_)
        | Type::Ptr(_)
        | Type::FnPtr(_)
        | Type::TraitObject(_)
        | Type::ImplTrait(_) => true,
        _ => false,
    }
}

/// Tokens as a person writes them: `&mut Fabric`, not `& mut Fabric`.
fn pretty(tokens: impl ToTokens) -> String {
    let mut text = tokens.to_token_stream().to_string();
    for (from, to) in [
        ("& ", "&"),
        (" :: ", "::"),
        (":: ", "::"),
        (" <", "<"),
        ("< ", "<"),
        (" >", ">"),
        (" ,", ","),
        ("( ", "("),
        (" )", ")"),
    ] {
        text = text.replace(from, to);
    }
    text
}

/// Exactly one parameter, of type `&mut Fabric`.
fn check_parameters(sig: &Signature, cx: &Ctxt) {
    let name = &sig.ident;
    let expected = format!("`fn {name}(fabric: &mut Fabric)`");
    let mut inputs = sig.inputs.iter();
    match inputs.next() {
        None => cx.error_at(
            sig.paren_token.span.join(),
            format!("a #[fabric] function takes the `Fabric` it trains with: {expected}"),
        ),
        Some(FnArg::Receiver(receiver)) => cx.error_spanned_by(
            receiver,
            format!(
                "a #[fabric] function cannot be a method: it takes the `Fabric` it trains with, {expected}"
            ),
        ),
        Some(FnArg::Typed(param)) => check_fabric_type(&param.ty, &expected, cx),
    }
    let extra: Vec<&FnArg> = inputs.collect();
    if !extra.is_empty() {
        let (noun, these) = if extra.len() == 1 {
            ("parameter", "this one")
        } else {
            ("parameters", "these")
        };
        cx.error_spanned_by(
            quote!(#(#extra),*),
            format!(
                "unexpected {noun}: a #[fabric] function takes only the `Fabric` it trains with, {expected}; the generated `{name}()` takes no arguments, so it has no value for {these}"
            ),
        );
    }
}

/// `&mut Fabric`, `&mut fabric::Fabric`, or any path ending in `Fabric`.
fn check_fabric_type(ty: &Type, expected: &str, cx: &Ctxt) {
    let found = pretty(ty);
    match strip(ty) {
        Type::Reference(reference) if names_fabric(&reference.elem) => {
            if reference.mutability.is_none() {
                cx.error_spanned_by(
                    ty,
                    format!("the `Fabric` is borrowed mutably: expected `&mut Fabric`, found `{found}`"),
                );
            }
        }
        ty if names_fabric(ty) => cx.error_spanned_by(
            ty,
            format!("expected `&mut Fabric`, found `{found}`: the function borrows the `Fabric` that the generated wrapper owns, {expected}"),
        ),
        _ => cx.error_spanned_by(
            ty,
            format!("expected `&mut Fabric`, found `{found}`: a #[fabric] function takes the `Fabric` it trains with, {expected}"),
        ),
    }
}

fn names_fabric(ty: &Type) -> bool {
    match strip(ty) {
        Type::Path(path) => {
            path.qself.is_none()
                && path
                    .path
                    .segments
                    .last()
                    .is_some_and(|last| last.ident == "Fabric" && last.arguments.is_none())
        }
        _ => false,
    }
}

fn strip(mut ty: &Type) -> &Type {
    loop {
        match ty {
            Type::Group(group) => ty = &group.elem,
            Type::Paren(paren) => ty = &paren.elem,
            _ => return ty,
        }
    }
}

/// `fn train(...)`: where an error about the signature as a whole points.
fn head(sig: &Signature) -> TokenStream {
    let mut tokens = TokenStream::new();
    sig.fn_token.to_tokens(&mut tokens);
    sig.ident.to_tokens(&mut tokens);
    sig.paren_token
        .surround(&mut tokens, |tokens| sig.inputs.to_tokens(tokens));
    tokens
}

/// What the attribute is on, when it is not a function: the tokens to point
/// at (the keyword and the name, such as `struct Config`) and what to call it.
pub(crate) fn not_a_function(item: &Item) -> (TokenStream, &'static str) {
    fn pair(keyword: impl ToTokens, name: impl ToTokens) -> TokenStream {
        let mut tokens = keyword.into_token_stream();
        name.to_tokens(&mut tokens);
        tokens
    }
    match item {
        Item::Struct(item) => (pair(item.struct_token, &item.ident), "a struct"),
        Item::Enum(item) => (pair(item.enum_token, &item.ident), "an enum"),
        Item::Union(item) => (pair(item.union_token, &item.ident), "a union"),
        Item::Trait(item) => (pair(item.trait_token, &item.ident), "a trait"),
        Item::Impl(item) => (pair(item.impl_token, &item.self_ty), "an impl block"),
        Item::Mod(item) => (pair(item.mod_token, &item.ident), "a module"),
        Item::Const(item) => (pair(item.const_token, &item.ident), "a constant"),
        Item::Static(item) => (pair(item.static_token, &item.ident), "a static"),
        Item::Type(item) => (pair(item.type_token, &item.ident), "a type alias"),
        Item::Use(item) => (pair(item.use_token, &item.tree), "an import"),
        _ => (item.to_token_stream(), "this item"),
    }
}
