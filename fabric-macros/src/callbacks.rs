//! `#[derive(Callback)]`, `#[hooks]` and `#[hook]`: typed hook dispatch.
//!
//! `#[hooks]` on an `impl` block turns each `#[hook]` method into an
//! implementation of `fabric::Handles<TheHook>` and lists the hooks for
//! registration; `#[derive(Callback)]` implements `fabric::Callback`, picking
//! that list up when there is one. Parsing and checks come first, with every
//! error collected; the user's items are emitted in any case.

use fabric_options::{STANDARD_HOOKS, did_you_mean, hook_type};
use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{DeriveInput, FnArg, ImplItem, ImplItemFn, ItemImpl, Path, ReturnType, Type};

use crate::ctxt::Ctxt;

/// `#[derive(Callback)]`.
pub(crate) fn derive_callback(input: TokenStream) -> TokenStream {
    let input = match syn::parse2::<DeriveInput>(input) {
        Ok(input) => input,
        Err(error) => return error.into_compile_error(),
    };
    let name = &input.ident;
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    quote! {
        impl #impl_generics ::fabric::Callback for #name #ty_generics #where_clause {
            fn register_hooks(table: &mut ::fabric::HookTable<Self>) {
                #[allow(unused_imports)]
                use ::fabric::__private::{NoHooks as _, ViaHooks as _};
                (&&::fabric::__private::Probe::<Self>::new()).register_hooks(table);
            }
        }
    }
}

/// One `#[hook]` method, understood.
struct HookMethod {
    method: syn::Ident,
    hook: TokenStream,
    params: Vec<(syn::Ident, Span)>,
    params_span: Span,
    output_span: Span,
}

/// Which hook a `#[hook]` attribute names: its argument, or the standard
/// hook with the method's name.
fn hook_of(attr: &syn::Attribute, method: &ImplItemFn, cx: &Ctxt) -> Option<TokenStream> {
    if let syn::Meta::List(list) = &attr.meta {
        return match syn::parse2::<Path>(list.tokens.clone()) {
            Ok(path) => Some(quote!(#path)),
            Err(_) => {
                cx.error_spanned_by(
                    &list.tokens,
                    "expected the hook's type, as in `#[hook(OnBestModel)]`",
                );
                None
            }
        };
    }
    let name = method.sig.ident.to_string();
    match hook_type(&name) {
        Some(ty) => {
            let ty = format_ident!("{}", ty, span = method.sig.ident.span());
            Some(quote!(::fabric::hooks::#ty))
        }
        None => {
            let suggestion = did_you_mean(&name, STANDARD_HOOKS.iter().map(|(n, _)| *n));
            let message = match suggestion {
                Some(s) => format!(
                    "`{name}` is not a standard hook: did you mean `{s}`? For a hook of your own, name its type: `#[hook(MyHook)]`"
                ),
                None => format!(
                    "`{name}` is not a standard hook (`on_train_epoch_end`, `on_validation_epoch_end`, ...); for a hook of your own, name its type: `#[hook(MyHook)]`"
                ),
            };
            cx.error_spanned_by(&method.sig.ident, message);
            None
        }
    }
}

fn understand(method: &ImplItemFn, attr: &syn::Attribute, cx: &Ctxt) -> Option<HookMethod> {
    let hook = hook_of(attr, method, cx);
    let mut inputs = method.sig.inputs.iter();
    match inputs.next() {
        Some(FnArg::Receiver(receiver))
            if matches!(receiver.kind, syn::ReceiverKind::Reference(..)) => {}
        Some(FnArg::Receiver(receiver)) => {
            cx.error_spanned_by(
                receiver,
                "a hook takes `&mut self` (or `&self`), not `self`",
            );
        }
        _ => cx.error_spanned_by(
            &method.sig.ident,
            "a hook is a method: its first parameter is `&mut self` (or `&self`)",
        ),
    }
    if method.sig.asyncness.is_some() || !method.sig.generics.params.is_empty() {
        cx.error_spanned_by(&method.sig, "a hook cannot be `async` or generic");
    }
    let params: Vec<(syn::Ident, Span)> = inputs
        .enumerate()
        .map(|(i, arg)| (format_ident!("__arg{}", i), arg.span()))
        .collect();
    let params_span = method.sig.paren_token.span.join();
    let output_span = match &method.sig.output {
        ReturnType::Default => method.sig.ident.span(),
        ReturnType::Type(_, ty) => ty.span(),
    };
    Some(HookMethod {
        method: method.sig.ident.clone(),
        hook: hook?,
        params,
        params_span,
        output_span,
    })
}

/// `#[hooks]` on an `impl` block.
pub(crate) fn hooks_impl(args: TokenStream, item: TokenStream) -> TokenStream {
    let cx = Ctxt::new();
    if !args.is_empty() {
        cx.error_spanned_by(&args, "`#[hooks]` takes no arguments");
    }
    let mut block = match syn::parse2::<ItemImpl>(item.clone()) {
        Ok(block) => block,
        Err(_) => {
            cx.error_spanned_by(&item, "`#[hooks]` goes on an `impl` block of a callback: `#[hooks] impl MyCallback { #[hook] fn on_train_epoch_end(..) {..} }`");
            let errors = cx.check().err().map(syn::Error::into_compile_error);
            return quote!(#item #errors);
        }
    };
    if let Some((path, _)) = &block.trait_ {
        cx.error_spanned_by(
            path,
            "`#[hooks]` goes on an inherent `impl` block, not on a trait implementation",
        );
    }
    let mut methods = Vec::new();
    for item in &mut block.items {
        let ImplItem::Fn(method) = item else { continue };
        let Some(position) = method.attrs.iter().position(|a| a.path().is_ident("hook")) else {
            continue;
        };
        let attr = method.attrs.remove(position);
        if let Some(found) = understand(method, &attr, &cx) {
            methods.push(found);
        }
    }
    let self_ty = &block.self_ty;
    let (impl_generics, _, where_clause) = block.generics.split_for_impl();
    let handlers = methods
        .iter()
        .map(|m| handler(m, self_ty, &impl_generics, where_clause));
    let hooks = methods.iter().map(|m| &m.hook);
    let generated = quote! {
        #(#handlers)*
        impl #impl_generics ::fabric::__private::CallbackHooks for #self_ty #where_clause {
            fn register(table: &mut ::fabric::HookTable<Self>) {
                #(table.add::<#hooks>();)*
            }
        }
    };
    match cx.check() {
        Ok(()) => quote!(#block #generated),
        Err(errors) => {
            let errors = errors.into_compile_error();
            quote!(#block #errors)
        }
    }
}

fn handler(
    m: &HookMethod,
    self_ty: &Type,
    impl_generics: &syn::ImplGenerics,
    where_clause: Option<&syn::WhereClause>,
) -> TokenStream {
    let HookMethod {
        method,
        hook,
        params,
        params_span,
        output_span,
    } = m;
    let names: Vec<_> = params
        .iter()
        .map(|(name, span)| {
            let mut name = name.clone();
            name.set_span(*span);
            name
        })
        .collect();
    // The tuple pattern and the call carry the method's spans, so that a
    // wrong parameter count or type is reported on the method.
    let pattern = quote_spanned!(*params_span=> (#(#names,)*));
    let call = quote_spanned!(method.span()=> Self::#method(self, #(#names),*));
    // The returned value is named at the return type, so that a type that is
    // not an outcome is reported there.
    let returned = syn::Ident::new("__returned", *output_span);
    let convert = quote_spanned!(*output_span=> {
        #[allow(clippy::let_unit_value)]
        let #returned = #call;
        ::fabric::IntoOutcome::into_outcome(#returned)
    });
    quote! {
        impl #impl_generics ::fabric::Handles<#hook> for #self_ty #where_clause {
            fn handle(
                &mut self,
                #pattern: <#hook as ::fabric::hooks::Hook>::Args<'_>,
            ) -> ::std::result::Result<::fabric::Outcome, ::fabric::LoggerError> {
                #convert
            }
        }
    }
}

/// `#[hook]` anywhere `#[hooks]` did not remove it.
pub(crate) fn hook_outside(item: TokenStream) -> TokenStream {
    let error = syn::Error::new_spanned(
        &item,
        "`#[hook]` marks a method of a callback's `impl` block, which needs `#[fabric::hooks]`: `#[hooks] impl MyCallback { #[hook] fn on_train_epoch_end(..) {..} }`",
    )
    .into_compile_error();
    quote!(#item #error)
}
