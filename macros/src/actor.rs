//! `#[derive(ProcessActor)]`.

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{DeriveInput, Token};

/// One entry of `handles(...)`.
struct Handled {
    is_async: bool,
    /// Listed in `batches(...)`: the row handles `Batch<message>` for worker farms.
    batched: bool,
    message: syn::Type,
}

impl Parse for Handled {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let is_async = input.parse::<Option<Token![async]>>()?.is_some();
        Ok(Handled { is_async, batched: false, message: input.parse()? })
    }
}

#[derive(Default)]
struct Options {
    handled: Vec<Handled>,
    event: Option<syn::Type>,
    /// Where `hooks` was written, if it was.
    hooks: Option<proc_macro2::Span>,
}

pub(crate) fn expand(input: &DeriveInput) -> syn::Result<TokenStream> {
    if !input.generics.params.is_empty() {
        return Err(syn::Error::new(
            input.generics.span(),
            "a process actor cannot be generic: the child finds its type by name, so use a concrete type \
             (wrap a generic one in a newtype per instantiation)",
        ));
    }
    let mut options = parse_options(input)?;
    // A duplicate is reported, and the rest still expands so that no cascade of errors follows.
    let duplicates = reject_duplicates(&mut options.handled).err().map(syn::Error::into_compile_error);
    let ident = &input.ident;
    let event = options.event.as_ref().map_or_else(|| quote!(::ensemble::NoEvents), |t| quote!(#t));
    let rows = options.handled.iter().map(|h| dispatch_row(ident, h));
    let handles = options.handled.iter().enumerate().map(|(tag, h)| handles_impl(ident, tag, h));
    let hooks = run_hooks(ident, options.hooks);
    let batches = options.handled.iter().filter(|h| h.batched).map(|h| batches_impl(ident, h));
    let registry = format_ident!("__ENSEMBLE_ACTOR_{}", ident.to_string().to_uppercase());
    Ok(quote! {
        #duplicates
        impl ::ensemble::ProcessActor for #ident {
            type Event = #event;
            type Context = ::ensemble::ProcessContext<Self>;
            const KEY: &'static str = ::core::concat!(::core::module_path!(), "::", ::core::stringify!(#ident));
            const HANDLERS: &'static [::ensemble::__private::Dispatch<Self>] = &[#(#rows),*];
        }
        #(#handles)*
        // A second impl keeps rustc from inferring the message type from a lone `Handles`
        // impl, so that sending an unhandled message names the message in the error.
        impl ::ensemble::Handles<::ensemble::__private::NotAMessage> for #ident {
            const TAG: u32 = u32::MAX;
        }
        #(#batches)*
        #hooks
        #[::ensemble::__private::linkme::distributed_slice(::ensemble::__private::ACTORS)]
        #[linkme(crate = ::ensemble::__private::linkme)]
        #[doc(hidden)]
        #[allow(non_upper_case_globals)]
        static #registry: ::ensemble::__private::ActorEntry = ::ensemble::__private::ActorEntry {
            key: <#ident as ::ensemble::ProcessActor>::KEY,
            run: ::ensemble::__private::run_child::<#ident>,
        };
    })
}

fn dispatch_row(actor: &syn::Ident, handled: &Handled) -> TokenStream {
    let message = &handled.message;
    let span = message.span();
    // The actor's name with the message's span: an unimplemented handler is reported on the
    // message in `handles(...)`, not on the struct.
    let actor = syn::Ident::new(&actor.to_string(), span);
    if handled.batched {
        quote_spanned!(span=> ::ensemble::__private::Dispatch::Sync(::ensemble::__private::batch_entry::<#actor, #message>))
    } else if handled.is_async {
        quote_spanned!(span=> ::ensemble::__private::Dispatch::Async(::ensemble::__private::async_entry::<#actor, #message>))
    } else {
        quote_spanned!(span=> ::ensemble::__private::Dispatch::Sync(::ensemble::__private::sync_entry::<#actor, #message>))
    }
}

fn handles_impl(actor: &syn::Ident, tag: usize, handled: &Handled) -> TokenStream {
    let message = &handled.message;
    let tag = tag as u32;
    let handled_type =
        if handled.batched { quote!(::ensemble::farm::Batch<#message>) } else { quote!(#message) };
    quote_spanned! {message.span()=>
        impl ::ensemble::Handles<#handled_type> for #actor {
            const TAG: u32 = #tag;
        }
    }
}

/// The backend's way to the actor's hooks: its `impl Hooks` if it has one, empty hooks if not
/// (see `ensemble_actors::actor::HookProbe`). With `hooks` in `#[actor(..)]`, a missing impl is
/// an error at that word.
fn run_hooks(actor: &syn::Ident, hooks: Option<proc_macro2::Span>) -> TokenStream {
    let assert = hooks.map(|span| {
        let actor = syn::Ident::new(&actor.to_string(), span);
        quote_spanned!(span=> const _: fn() = ::ensemble::__private::assert_hooks::<#actor>;)
    });
    quote! {
        #assert
        impl ::ensemble::__private::RunHooks for #actor {
            fn pre_run(
                &mut self,
                ctx: &mut ::ensemble::ProcessContext<Self>,
            ) -> ::core::result::Result<(), ::ensemble::HookError> {
                #[allow(unused_imports)]
                use ::ensemble::__private::{NoHooks as _, UserHooks as _};
                (&::ensemble::__private::HookProbe::new(self)).pre_run_hook(ctx)
            }

            fn post_run(&mut self, ctx: &mut ::ensemble::ProcessContext<Self>) {
                #[allow(unused_imports)]
                use ::ensemble::__private::{NoHooks as _, UserHooks as _};
                (&::ensemble::__private::HookProbe::new(self)).post_run_hook(ctx)
            }
        }
    }
}

/// `batches(M)`: the worker runs `M` sent by a farm, so `Farm::map` accepts it.
fn batches_impl(actor: &syn::Ident, handled: &Handled) -> TokenStream {
    let message = &handled.message;
    quote_spanned! {message.span()=>
        impl ::ensemble::farm::Batches<#message> for #actor {}
    }
}

fn parse_options(input: &DeriveInput) -> syn::Result<Options> {
    let mut options = Options::default();
    let mut seen_handles = false;
    let mut batched = Vec::new();
    for attr in input.attrs.iter().filter(|a| a.path().is_ident("actor")) {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("handles") {
                if seen_handles {
                    return Err(meta.error("`handles(...)` is given twice; list every message in one"));
                }
                seen_handles = true;
                let content;
                syn::parenthesized!(content in meta.input);
                let list = Punctuated::<Handled, Token![,]>::parse_terminated(&content)?;
                options.handled.extend(list);
                Ok(())
            } else if meta.path.is_ident("batches") {
                let content;
                syn::parenthesized!(content in meta.input);
                let list = Punctuated::<syn::Type, Token![,]>::parse_terminated(&content)?;
                batched.extend(list.into_iter().map(|message| Handled { is_async: false, batched: true, message }));
                Ok(())
            } else if meta.path.is_ident("event") {
                options.event = Some(meta.value()?.parse()?);
                Ok(())
            } else if meta.path.is_ident("hooks") {
                options.hooks = Some(meta.path.span());
                Ok(())
            } else {
                Err(meta.error(
                    "unknown `actor` option; expected `handles(...)`, `batches(...)`, `event = Type` or `hooks`",
                ))
            }
        })?;
    }
    options.handled.extend(batched);
    Ok(options)
}

/// Removes repeated messages from `handled`, and reports each repetition.
fn reject_duplicates(handled: &mut Vec<Handled>) -> syn::Result<()> {
    let mut seen: Vec<String> = Vec::new();
    let mut errors: Option<syn::Error> = None;
    handled.retain(|h| {
        let key =
            format!("{}{}", if h.batched { "batches:" } else { "" }, h.message.to_token_stream_string());
        if !seen.contains(&key) {
            seen.push(key);
            return true;
        }
        let list = if h.batched { "batches" } else { "handles" };
        let message = h.message.to_token_stream_string();
        let error =
            syn::Error::new(h.message.span(), format!("`{message}` is listed twice in `{list}(...)`"));
        match &mut errors {
            Some(all) => all.combine(error),
            None => errors = Some(error),
        }
        false
    });
    errors.map_or(Ok(()), Err)
}

trait TypeString {
    fn to_token_stream_string(&self) -> String;
}

impl TypeString for syn::Type {
    fn to_token_stream_string(&self) -> String {
        quote!(#self).to_string().replace(' ', "")
    }
}
