//! `#[derive(Serialize)]` and `#[derive(Deserialize)]` of the prelude: serde's own derives, run on a
//! mirror of the type (see `mirror.rs`) with `#[serde(crate = "::ensemble::__private::serde",
//! remote = "Type")]`; the type's impl calls the functions serde generates on the mirror. The
//! `#[serde(..)]` attributes mean what they mean to serde, and a crate needs no `serde` dependency.
//!
//! serde computes the bounds of a generic type's impl; the forwarding impl states the same ones:
//! `T: Serialize` (or `Deserialize<'de>`) for each type parameter used by a field that is not
//! skipped, outside `PhantomData`, or what `#[serde(bound = "..")]` says instead.

use crate::mirror;
use proc_macro2::{Span, TokenStream, TokenTree};
use quote::{quote, ToTokens};
use syn::meta::ParseNestedMeta;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{parse_quote, DeriveInput, Token, WherePredicate};

/// Which of serde's traits is derived.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trait {
    Serialize,
    Deserialize,
}

pub(crate) fn expand(input: &DeriveInput, which: Trait) -> syn::Result<TokenStream> {
    let container = Options::parse(&input.attrs, which);
    if let Some(span) = container.remote {
        return Err(syn::Error::new(
            span,
            "`#[serde(remote = ..)]` needs serde's own derive: add `serde = { version = \"1\", \
             features = [\"derive\"] }` to Cargo.toml and write `#[derive(serde::Serialize, serde::Deserialize)]`",
        ));
    }
    if let Some(span) = container.krate {
        return Err(syn::Error::new(
            span,
            "ensemble's derive sets serde's `crate` itself: remove `crate = ..`, or use serde's own derive",
        ));
    }
    let mut mirror = mirror::mirror(input, &["serde"])?;
    default_by_path(&mut mirror.attrs, &mirror::original_type(input));
    let remote = input.ident.to_string();
    mirror.attrs.push(parse_quote!(#[serde(crate = "::ensemble::__private::serde", remote = #remote)]));
    let derive = match which {
        Trait::Serialize => quote!(::ensemble::__private::serde::Serialize),
        Trait::Deserialize => quote!(::ensemble::__private::serde::Deserialize),
    };
    let forward = match which {
        Trait::Serialize => serialize_impl(input, &container),
        Trait::Deserialize => deserialize_impl(input, &container),
    };
    Ok(quote! {
        #[doc(hidden)]
        const _: () = {
            #[derive(#derive)]
            #[allow(dead_code, non_camel_case_types)]
            #mirror
            #forward
        };
    })
}

fn serialize_impl(input: &DeriveInput, container: &Options) -> TokenStream {
    let ident = &input.ident;
    let (impl_generics, ty_generics, _) = input.generics.split_for_impl();
    let bound = quote!(::ensemble::__private::serde::Serialize);
    let where_clause = where_clause(input, container, Trait::Serialize, &bound);
    let mirror = mirror::name();
    quote! {
        #[automatically_derived]
        impl #impl_generics ::ensemble::__private::serde::Serialize for #ident #ty_generics #where_clause {
            fn serialize<__S>(&self, serializer: __S) -> ::core::result::Result<__S::Ok, __S::Error>
            where
                __S: ::ensemble::__private::serde::Serializer,
            {
                <#mirror #ty_generics>::serialize(self, serializer)
            }
        }
    }
}

fn deserialize_impl(input: &DeriveInput, container: &Options) -> TokenStream {
    let ident = &input.ident;
    let mut generics = input.generics.clone();
    let lifetimes: Vec<_> = generics.lifetimes().map(|l| l.lifetime.clone()).collect();
    generics.params.insert(0, parse_quote!('de));
    let (impl_generics, _, _) = generics.split_for_impl();
    let (_, ty_generics, _) = input.generics.split_for_impl();
    let bound = quote!(::ensemble::__private::serde::Deserialize<'de>);
    let mut where_clause = where_clause(input, container, Trait::Deserialize, &bound);
    // serde borrows from the input for `&'a str` fields and `#[serde(borrow)]`; `'de: 'a` allows
    // that for every lifetime, and asks nothing of a type without one.
    where_clause.predicates.extend(lifetimes.iter().map(|l| -> WherePredicate { parse_quote!('de: #l) }));
    let mirror = mirror::name();
    quote! {
        #[automatically_derived]
        impl #impl_generics ::ensemble::__private::serde::Deserialize<'de> for #ident #ty_generics #where_clause {
            fn deserialize<__D>(deserializer: __D) -> ::core::result::Result<Self, __D::Error>
            where
                __D: ::ensemble::__private::serde::Deserializer<'de>,
            {
                <#mirror #ty_generics>::deserialize(deserializer)
            }
        }
    }
}

/// Container-level `#[serde(default)]` makes serde ask for `Default` of the type it derives for,
/// which is the mirror; `default = "<Type as Default>::default"` means the same without that.
fn default_by_path(attrs: &mut [syn::Attribute], original: &TokenStream) {
    let path = format!("<{original} as ::core::default::Default>::default");
    for attr in attrs.iter_mut().filter(|a| a.path().is_ident("serde")) {
        let Ok(metas) = attr.parse_args_with(Punctuated::<syn::Meta, Token![,]>::parse_terminated) else {
            continue;
        };
        if !metas.iter().any(|m| matches!(m, syn::Meta::Path(p) if p.is_ident("default"))) {
            continue;
        }
        let metas = metas.into_iter().map(|meta| match meta {
            syn::Meta::Path(p) if p.is_ident("default") => quote!(#p = #path),
            other => other.into_token_stream(),
        });
        *attr = parse_quote!(#[serde(#(#metas),*)]);
    }
}

/// The type's own where clause, plus serde's bounds: those of `#[serde(bound = ..)]` where given,
/// else `T: bound` for each type parameter a serialized field uses.
fn where_clause(
    input: &DeriveInput,
    container: &Options,
    which: Trait,
    bound: &TokenStream,
) -> syn::WhereClause {
    let mut clause = input.generics.where_clause.clone().unwrap_or_else(|| parse_quote!(where));
    if input.generics.type_params().next().is_none() {
        return clause;
    }
    if let Some(predicates) = &container.bound {
        clause.predicates.extend(predicates.iter().cloned());
        return clause;
    }
    let params: Vec<syn::Ident> = input.generics.type_params().map(|p| p.ident.clone()).collect();
    let mut used = Vec::new();
    for field in all_fields(input) {
        let options = Options::parse(&field.attrs, which);
        if let Some(predicates) = options.bound {
            clause.predicates.extend(predicates);
        } else if !options.skipped {
            bounds_of_field(&field.ty, &params, &mut used, &mut clause, bound);
        }
        if options.needs_default {
            let mut defaulted = Vec::new();
            collect_params(field.ty.to_token_stream(), &params, &mut defaulted);
            clause.predicates.extend(
                defaulted.iter().map(|p| -> WherePredicate { parse_quote!(#p: ::core::default::Default) }),
            );
        }
    }
    clause.predicates.extend(used.iter().map(|p| -> WherePredicate { parse_quote!(#p: #bound) }));
    clause
}

/// A field of type `T::Assoc` is bounded itself (as serde does); other fields bound the type
/// parameters they use.
fn bounds_of_field(
    ty: &syn::Type,
    params: &[syn::Ident],
    used: &mut Vec<syn::Ident>,
    clause: &mut syn::WhereClause,
    bound: &TokenStream,
) {
    if let syn::Type::Path(path) = ty {
        let first = path.path.segments.first().map(|s| &s.ident);
        if path.qself.is_none() && path.path.segments.len() > 1 && first.is_some_and(|f| params.contains(f)) {
            clause.predicates.push(parse_quote!(#ty: #bound));
            return;
        }
    }
    collect_params(ty.to_token_stream(), params, used);
}

/// The type parameters named in `tokens`, outside `PhantomData<..>` and not as the first segment
/// of a path (`T::Assoc`).
fn collect_params(tokens: TokenStream, params: &[syn::Ident], used: &mut Vec<syn::Ident>) {
    let tokens: Vec<TokenTree> = tokens.into_iter().collect();
    let mut i = 0;
    while i < tokens.len() {
        match &tokens[i] {
            TokenTree::Ident(ident) if ident == "PhantomData" => i = skip_angle_brackets(&tokens, i + 1),
            TokenTree::Ident(ident) => {
                let is_path_prefix =
                    matches!(tokens.get(i + 1), Some(TokenTree::Punct(p)) if p.as_char() == ':');
                if !is_path_prefix && params.contains(ident) && !used.contains(ident) {
                    used.push(ident.clone());
                }
                i += 1;
            }
            TokenTree::Group(group) => {
                collect_params(group.stream(), params, used);
                i += 1;
            }
            TokenTree::Punct(_) | TokenTree::Literal(_) => i += 1,
        }
    }
}

/// The index after the `<..>` that starts at `at`, or `at` when none does.
fn skip_angle_brackets(tokens: &[TokenTree], at: usize) -> usize {
    let mut depth = 0usize;
    for (i, token) in tokens.iter().enumerate().skip(at) {
        match token {
            TokenTree::Punct(p) if p.as_char() == '<' => depth += 1,
            TokenTree::Punct(p) if p.as_char() == '>' && depth > 0 => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ if depth == 0 => return at,
            _ => {}
        }
    }
    tokens.len()
}

fn all_fields(input: &DeriveInput) -> Vec<&syn::Field> {
    match &input.data {
        syn::Data::Struct(data) => data.fields.iter().collect(),
        syn::Data::Enum(data) => data.variants.iter().flat_map(|v| v.fields.iter()).collect(),
        syn::Data::Union(data) => data.fields.named.iter().collect(),
    }
}

/// What ensemble reads of `#[serde(..)]` on a type or a field. Attributes that do not parse are
/// left to serde's derive, which reports them with their spans.
#[derive(Default)]
struct Options {
    /// `bound = ".."` for this trait.
    bound: Option<Vec<WherePredicate>>,
    /// `skip`, `skip_serializing` or `skip_deserializing`, for this trait.
    skipped: bool,
    /// Skipped when deserializing without `default = ".."`: the field is `Default::default()`.
    needs_default: bool,
    remote: Option<Span>,
    krate: Option<Span>,
}

impl Options {
    fn parse(attrs: &[syn::Attribute], which: Trait) -> Options {
        let mut options = Options::default();
        let mut skip_deserializing = false;
        let mut default_path = false;
        for attr in attrs.iter().filter(|a| a.path().is_ident("serde")) {
            let _ = attr.parse_nested_meta(|meta| {
                let is = |name: &str| meta.path.is_ident(name);
                if is("bound") {
                    options.bound = parse_bound(&meta, which)?.or(options.bound.take());
                    return Ok(());
                }
                if is("skip") || is("skip_deserializing") {
                    skip_deserializing = true;
                }
                options.skipped |= is("skip")
                    || (is("skip_serializing") && which == Trait::Serialize)
                    || (is("skip_deserializing") && which == Trait::Deserialize);
                default_path |= is("default") && meta.input.peek(Token![=]);
                if is("remote") {
                    options.remote = Some(meta.path.span());
                }
                if is("crate") {
                    options.krate = Some(meta.path.span());
                }
                skip_value(&meta)
            });
        }
        options.needs_default = which == Trait::Deserialize && skip_deserializing && !default_path;
        options
    }
}

/// `bound = ".."` or `bound(serialize = "..", deserialize = "..")`, for `which`.
fn parse_bound(meta: &ParseNestedMeta, which: Trait) -> syn::Result<Option<Vec<WherePredicate>>> {
    let predicates = |lit: syn::LitStr| -> syn::Result<Vec<WherePredicate>> {
        let parsed = lit.parse_with(Punctuated::<WherePredicate, Token![,]>::parse_terminated)?;
        Ok(parsed.into_iter().collect())
    };
    if meta.input.peek(Token![=]) {
        return predicates(meta.value()?.parse()?).map(Some);
    }
    let mut found = None;
    meta.parse_nested_meta(|inner| {
        let lit: syn::LitStr = inner.value()?.parse()?;
        let mine = match which {
            Trait::Serialize => inner.path.is_ident("serialize"),
            Trait::Deserialize => inner.path.is_ident("deserialize"),
        };
        if mine {
            found = Some(predicates(lit)?);
        }
        Ok(())
    })?;
    Ok(found)
}

/// Consumes the value of a meta ensemble does not read: `= expr`, `(..)` or nothing.
fn skip_value(meta: &ParseNestedMeta) -> syn::Result<()> {
    if meta.input.peek(Token![=]) {
        meta.value()?.parse::<syn::Expr>()?;
    } else if meta.input.peek(syn::token::Paren) {
        let content;
        syn::parenthesized!(content in meta.input);
        content.parse::<TokenStream>()?;
    }
    Ok(())
}
