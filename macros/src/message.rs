//! `#[derive(RemoteMessage)]`.

use proc_macro2::TokenStream;
use quote::quote;
use syn::DeriveInput;

pub(crate) fn expand(input: &DeriveInput) -> syn::Result<TokenStream> {
    let result = parse_result(input)?;
    let ident = &input.ident;
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    Ok(quote! {
        impl #impl_generics ::ensemble::RemoteMessage for #ident #ty_generics #where_clause {
            type Result = #result;
        }
    })
}

fn parse_result(input: &DeriveInput) -> syn::Result<TokenStream> {
    let mut result = None;
    for attr in input.attrs.iter().filter(|a| a.path().is_ident("rtype")) {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("result") {
                let value: syn::LitStr = meta.value()?.parse().map_err(|e| {
                    syn::Error::new(
                        e.span(),
                        "write the reply type as a string: `#[rtype(result = \"u64\")]`",
                    )
                })?;
                let ty: syn::Type = value.parse()?;
                result = Some(quote!(#ty));
                Ok(())
            } else {
                Err(meta.error("unknown `rtype` option; expected `result = \"Type\"`"))
            }
        })?;
    }
    Ok(result.unwrap_or_else(|| quote!(())))
}
