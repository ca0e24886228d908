//! The macros of ensemble: `#[derive(ProcessActor)]`, `#[derive(RemoteMessage)]` and
//! `#[ensemble::main]`.
//!
//! Private machinery: users reach these through the `ensemble` crate. Every path the macros emit
//! is absolute (`::ensemble::...`), and every misuse is a compile error with a span pointing at
//! the offending tokens.

#![forbid(unsafe_code)]

mod actor;
mod main_attr;
mod message;

use proc_macro::TokenStream;

/// Makes a serializable struct a process actor. See `ensemble::ProcessActor`.
///
/// `#[actor(handles(A, async B), event = E, hooks)]`:
/// - `handles(...)`: the messages handled; `async` before a message means it is handled by an
///   `AsyncProcessHandler`.
/// - `event = E`: the events the actor pushes (default `ensemble::NoEvents`).
/// - `hooks`: the type implements `ensemble::Hooks` itself.
#[proc_macro_derive(ProcessActor, attributes(actor))]
pub fn derive_process_actor(input: TokenStream) -> TokenStream {
    let input = syn::parse_macro_input!(input as syn::DeriveInput);
    actor::expand(&input).unwrap_or_else(syn::Error::into_compile_error).into()
}

/// Makes a type a message for process actors. `#[rtype(result = "T")]` names the reply type
/// (default `()`), as actix's `Message` derive does.
#[proc_macro_derive(RemoteMessage, attributes(rtype))]
pub fn derive_remote_message(input: TokenStream) -> TokenStream {
    let input = syn::parse_macro_input!(input as syn::DeriveInput);
    message::expand(&input).unwrap_or_else(syn::Error::into_compile_error).into()
}

/// Turns `fn main` (sync or async) into an ensemble program: becomes the child when this
/// process was started as one, runs an async body on an actix system, and lets children that
/// are still stopping finish before the process exits.
#[proc_macro_attribute]
pub fn main(args: TokenStream, item: TokenStream) -> TokenStream {
    let item = syn::parse_macro_input!(item as syn::ItemFn);
    main_attr::expand(args.into(), item).unwrap_or_else(syn::Error::into_compile_error).into()
}
