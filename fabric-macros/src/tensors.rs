//! `#[derive(Tensors)]`: a struct or enum of tensors and plain values as a
//! forward pass's arguments or outputs.
//!
//! Each field goes through its own `fabric::Tensors` implementation, in
//! declaration order; a field marked `#[tensors(skip)]` is cloned as it is.
//! The derived `Owned` is the type itself, so every field that is not
//! skipped must own its tensors (`Tensor`, not `&Tensor`): the generated
//! `where` clause asks for `Field: Tensors<Owned = Field>`.

use proc_macro2::TokenStream;
use quote::{format_ident, quote};
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Fields, Type};

use crate::ctxt::Ctxt;

/// Whether a field is marked `#[tensors(skip)]`; any other `tensors`
/// attribute is an error.
fn skipped(field: &syn::Field, cx: &Ctxt) -> bool {
    let mut skip = false;
    for attr in field.attrs.iter().filter(|a| a.path().is_ident("tensors")) {
        let parsed = attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("skip") {
                skip = true;
                Ok(())
            } else {
                Err(meta.error(
                    "unknown `tensors` attribute: the one there is is `#[tensors(skip)]` (the field is cloned, not traversed)",
                ))
            }
        });
        if let Err(error) = parsed {
            cx.syn_error(error);
        }
    }
    skip
}

/// The code of one set of fields: the pattern binding them, the
/// expression rebuilding them from `f`, and the visit of their tensors.
struct FieldsCode {
    pattern: TokenStream,
    map: TokenStream,
    visit: TokenStream,
}

fn fields_code(fields: &Fields, bounds: &mut Vec<Type>, cx: &Ctxt) -> FieldsCode {
    let mut names = Vec::new();
    let mut maps = Vec::new();
    let mut visits = Vec::new();
    for (i, field) in fields.iter().enumerate() {
        let binding = format_ident!("__field{}", i);
        let skip = skipped(field, cx);
        if skip {
            maps.push(quote!(::core::clone::Clone::clone(#binding)));
        } else {
            bounds.push(field.ty.clone());
            maps.push(quote!(::fabric::Tensors::map_tensors(#binding, __f)?));
            visits.push(quote!(::fabric::Tensors::for_each_tensor(#binding, __f);));
        }
        names.push((field.ident.clone(), binding));
    }
    let (pattern, map) = match fields {
        Fields::Named(_) => {
            let idents: Vec<_> = names
                .iter()
                .map(|(n, _)| n.clone().expect("named"))
                .collect();
            let bindings: Vec<_> = names.iter().map(|(_, b)| b).collect();
            (
                quote!({ #(#idents: #bindings),* }),
                quote!({ #(#idents: #maps),* }),
            )
        }
        Fields::Unnamed(_) => {
            let bindings: Vec<_> = names.iter().map(|(_, b)| b).collect();
            (quote!(( #(#bindings),* )), quote!(( #(#maps),* )))
        }
        Fields::Unit => (quote!(), quote!()),
    };
    FieldsCode {
        pattern,
        map,
        visit: quote!(#(#visits)*),
    }
}

/// `#[derive(Tensors)]`.
pub(crate) fn derive_tensors(input: TokenStream) -> TokenStream {
    let input = match syn::parse2::<DeriveInput>(input) {
        Ok(input) => input,
        Err(error) => return error.into_compile_error(),
    };
    let cx = Ctxt::new();
    let mut bounds = Vec::new();
    let (map_body, visit_body) = match &input.data {
        Data::Struct(data) => {
            let code = fields_code(&data.fields, &mut bounds, &cx);
            let (pattern, map, visit) = (code.pattern, code.map, code.visit);
            (
                quote! {
                    let Self #pattern = self;
                    ::core::result::Result::Ok(Self #map)
                },
                quote! {
                    let Self #pattern = self;
                    #visit
                },
            )
        }
        Data::Enum(data) => {
            let mut map_arms = Vec::new();
            let mut visit_arms = Vec::new();
            for variant in &data.variants {
                let name = &variant.ident;
                let code = fields_code(&variant.fields, &mut bounds, &cx);
                let (pattern, map, visit) = (code.pattern, code.map, code.visit);
                map_arms.push(
                    quote!(Self::#name #pattern => ::core::result::Result::Ok(Self::#name #map),),
                );
                visit_arms.push(quote!(Self::#name #pattern => { #visit }));
            }
            (
                quote!(match self { #(#map_arms)* }),
                quote!(match self { #(#visit_arms)* }),
            )
        }
        Data::Union(data) => {
            cx.error_at(
                data.union_token.span(),
                "`Tensors` cannot be derived for a union: fabric could not tell which field holds the tensors",
            );
            (quote!(), quote!())
        }
    };
    if let Err(errors) = cx.check() {
        return errors.into_compile_error();
    }
    let name = &input.ident;
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    let mut predicates: Vec<TokenStream> = where_clause
        .map(|w| w.predicates.iter().map(|p| quote!(#p)).collect())
        .unwrap_or_default();
    predicates.extend(
        bounds
            .iter()
            .map(|ty| quote!(#ty: ::fabric::Tensors<Owned = #ty>)),
    );
    quote! {
        impl #impl_generics ::fabric::Tensors for #name #ty_generics
        where #(#predicates,)*
        {
            type Owned = Self;

            #[allow(unused_variables)]
            fn map_tensors(
                &self,
                __f: &mut dyn ::core::ops::FnMut(&::fabric::__private::Tensor) -> ::fabric::Result<::fabric::__private::Tensor>,
            ) -> ::fabric::Result<Self> {
                #map_body
            }

            #[allow(unused_variables)]
            fn for_each_tensor(&self, __f: &mut dyn ::core::ops::FnMut(&::fabric::__private::Tensor)) {
                #visit_body
            }
        }
    }
}
