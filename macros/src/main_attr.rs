//! `#[ensemble::main]`.

use proc_macro2::TokenStream;
use quote::quote;
use syn::spanned::Spanned;

pub(crate) fn expand(args: TokenStream, item: syn::ItemFn) -> syn::Result<TokenStream> {
    if !args.is_empty() {
        return Err(syn::Error::new(args.span(), "`#[ensemble::main]` takes no arguments"));
    }
    if item.sig.ident != "main" || !item.sig.inputs.is_empty() {
        return Err(syn::Error::new(
            item.sig.span(),
            "`#[ensemble::main]` goes on `fn main()` without arguments",
        ));
    }
    let syn::ItemFn { attrs, vis, sig, block } = item;
    let output = &sig.output;
    let body = if sig.asyncness.is_some() {
        quote!(::ensemble::__private::block_on_main(async move #block))
    } else {
        quote!(::ensemble::__private::finish_main(move || #block))
    };
    Ok(quote! {
        #(#attrs)*
        #vis fn main() #output {
            ::ensemble::init();
            #body
        }
    })
}
