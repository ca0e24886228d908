//! `#[derive(Pod)]` and `#[derive(Zeroable)]` of the prelude: bytemuck's own derives, run on a
//! mirror of the type (see `mirror.rs`) with `#[bytemuck(crate = "::ensemble::__private::bytemuck")]`,
//! so that the element types of shared arrays need no `bytemuck` dependency.
//!
//! bytemuck's derive checks the mirror (a `repr` that fixes the layout, no padding, every field
//! `Pod`); the mirror has the type's fields, of the same types in the same order, under the same
//! `repr`, so the type has the mirror's layout, and the derive implements the trait for it when
//! the mirror has it. These two `unsafe impl`s are the only unsafe code the macros emit.

use crate::mirror;
use proc_macro2::TokenStream;
use quote::quote;
use syn::{parse_quote, DeriveInput};

/// Which of bytemuck's traits is derived.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trait {
    Pod,
    Zeroable,
}

pub(crate) fn expand(input: &DeriveInput, which: Trait) -> syn::Result<TokenStream> {
    let mut mirror = mirror::mirror(input, &["repr", "bytemuck", "zeroable"])?;
    // bytemuck reads the last `crate` it is given.
    mirror.attrs.push(parse_quote!(#[bytemuck(crate = "::ensemble::__private::bytemuck")]));
    let (derives, bytemuck_trait) = match which {
        Trait::Pod => (
            quote!(
                ::core::clone::Clone,
                ::core::marker::Copy,
                ::ensemble::__private::bytemuck::Zeroable,
                ::ensemble::__private::bytemuck::Pod
            ),
            quote!(::ensemble::__private::bytemuck::Pod),
        ),
        Trait::Zeroable => (
            quote!(::ensemble::__private::bytemuck::Zeroable),
            quote!(::ensemble::__private::bytemuck::Zeroable),
        ),
    };
    let ident = &input.ident;
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    let mut where_clause = where_clause.cloned().unwrap_or_else(|| parse_quote!(where));
    let name = mirror::name();
    if !input.generics.params.is_empty() {
        where_clause.predicates.push(parse_quote!(#name #ty_generics: #bytemuck_trait));
    }
    Ok(quote! {
        #[doc(hidden)]
        const _: () = {
            #[derive(#derives)]
            #[allow(dead_code, non_camel_case_types)]
            #mirror
            // SAFETY: `__EnsembleMirror` has the fields of this type, of the same types in the
            // same order, under the same `repr`, so the two have one layout (and one set of
            // valid bit patterns); bytemuck's derive checked that the mirror is `Pod` (or
            // `Zeroable`), and for a generic type the impl holds only where the mirror's does.
            #[automatically_derived]
            #[allow(private_bounds)]
            unsafe impl #impl_generics #bytemuck_trait for #ident #ty_generics #where_clause {}
        };
    })
}
