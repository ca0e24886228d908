//! A private copy of a user's type, for the derives of other crates that the prelude re-exports.
//!
//! serde's and bytemuck's derives name their crate by an absolute path (`extern crate serde`,
//! `::bytemuck::Pod`) that a crate depending on `ensemble` alone does not have. Both accept another
//! path (`#[serde(crate = "..")]`, `#[bytemuck(crate = "..")]`), but a derive cannot add an
//! attribute to the type it is given. So ensemble's derive of the same name declares a copy of the
//! type (the *mirror*: same generics, fields, `repr` and the foreign crate's attributes) inside a
//! `const _: () = { .. };` block, runs the foreign derive on the mirror with the path pointed into
//! `::ensemble::__private`, and forwards the original type's impl to the mirror's.

use proc_macro2::{Group, TokenStream, TokenTree};
use quote::{quote, ToTokens};
use syn::{Attribute, DeriveInput, Fields, Ident};

/// The mirror's name. It lives in a block of its own, so it cannot collide with the user's items.
pub(crate) fn name() -> Ident {
    Ident::new("__EnsembleMirror", proc_macro2::Span::call_site())
}

/// `input` under [`name`], private, with only the attributes whose path is one of `keep` (on the
/// type, its variants and its fields). `Self` in a field's type names the original type, as it
/// does in the original.
pub(crate) fn mirror(input: &DeriveInput, keep: &[&str]) -> syn::Result<DeriveInput> {
    let mut mirror = input.clone();
    mirror.ident = name();
    mirror.vis = syn::Visibility::Inherited;
    retain(&mut mirror.attrs, keep);
    let original = original_type(input);
    match &mut mirror.data {
        syn::Data::Struct(data) => fields(&mut data.fields, keep, &original)?,
        syn::Data::Enum(data) => {
            for variant in &mut data.variants {
                retain(&mut variant.attrs, keep);
                fields(&mut variant.fields, keep, &original)?;
            }
        }
        syn::Data::Union(data) => {
            for field in &mut data.fields.named {
                retain(&mut field.attrs, keep);
                field.ty = without_self(&field.ty, &original)?;
            }
        }
    }
    Ok(mirror)
}

/// The original type with its generic arguments: `Name<'a, T>`.
pub(crate) fn original_type(input: &DeriveInput) -> TokenStream {
    let ident = &input.ident;
    let (_, ty_generics, _) = input.generics.split_for_impl();
    quote!(#ident #ty_generics)
}

fn retain(attrs: &mut Vec<Attribute>, keep: &[&str]) {
    attrs.retain(|a| keep.iter().any(|k| a.path().is_ident(k)));
}

fn fields(fields: &mut Fields, keep: &[&str], original: &TokenStream) -> syn::Result<()> {
    for field in fields.iter_mut() {
        retain(&mut field.attrs, keep);
        field.ty = without_self(&field.ty, original)?;
    }
    Ok(())
}

fn without_self(ty: &syn::Type, original: &TokenStream) -> syn::Result<syn::Type> {
    syn::parse2(replace_self(ty.to_token_stream(), original))
}

fn replace_self(tokens: TokenStream, original: &TokenStream) -> TokenStream {
    tokens
        .into_iter()
        .flat_map(|token| match token {
            TokenTree::Ident(ident) if ident == "Self" => original.clone(),
            TokenTree::Group(group) => {
                let mut inner = Group::new(group.delimiter(), replace_self(group.stream(), original));
                inner.set_span(group.span());
                TokenTree::Group(inner).into()
            }
            other => other.into(),
        })
        .collect()
}
