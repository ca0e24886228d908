//! The macros of ensemble: `#[derive(ProcessActor)]`, `#[derive(RemoteMessage)]`,
//! `#[ensemble::main]`, and the prelude's `Serialize`, `Deserialize`, `Pod` and `Zeroable` derives
//! (serde's and bytemuck's, reached through `ensemble`).
//!
//! Private machinery: users reach these through the `ensemble` crate. Every path the macros emit
//! is absolute (`::ensemble::...`), so a crate needs no dependency but `ensemble`, and every misuse
//! is a compile error with a span pointing at the offending tokens.

#![forbid(unsafe_code)]

mod actor;
mod main_attr;
mod message;
mod mirror;
mod pod;
mod serde_impls;

use proc_macro::TokenStream;

/// Makes a serializable struct a process actor. See `ensemble::ProcessActor`.
///
/// `#[actor(handles(A, async B), batches(T), event = E, hooks)]`:
/// - `handles(...)`: the messages handled; `async` before a message means it is handled by an
///   `AsyncProcessHandler`.
/// - `batches(...)`: the tasks a farm sends the worker, in batches.
/// - `event = E`: the events the actor pushes (default `ensemble::NoEvents`).
/// - `hooks` (optional): asserts that the type implements `ensemble::Hooks`; its hooks run with or
///   without it.
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

/// serde's `Serialize` derive, for a crate that depends on `ensemble` alone.
///
/// It runs serde's own derive (on a private copy of the type, pointed at `ensemble`'s serde), so
/// the encoding and every `#[serde(..)]` attribute are serde's, with two exceptions:
/// `#[serde(remote = ..)]` and `#[serde(crate = ..)]` are refused (use serde's derive for those).
/// A generic type's impl asks `T: Serialize` of each type parameter that a field not skipped
/// uses outside `PhantomData`, as serde does; `#[serde(bound = "..")]` replaces that.
#[proc_macro_derive(Serialize, attributes(serde))]
pub fn derive_serialize(input: TokenStream) -> TokenStream {
    let input = syn::parse_macro_input!(input as syn::DeriveInput);
    serde_impls::expand(&input, serde_impls::Trait::Serialize)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// serde's `Deserialize` derive, for a crate that depends on `ensemble` alone: as `Serialize`,
/// with `T: Deserialize<'de>` bounds (and `T: Default` for a type parameter in a field skipped
/// without `default = ".."`).
#[proc_macro_derive(Deserialize, attributes(serde))]
pub fn derive_deserialize(input: TokenStream) -> TokenStream {
    let input = syn::parse_macro_input!(input as syn::DeriveInput);
    serde_impls::expand(&input, serde_impls::Trait::Deserialize)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// bytemuck's `Pod` derive, for a crate that depends on `ensemble` alone: the element type of a
/// shared array of your own. bytemuck's checks hold (`#[repr(C)]` or `transparent`, no padding,
/// every field `Pod`, `Copy`).
#[proc_macro_derive(Pod, attributes(bytemuck))]
pub fn derive_pod(input: TokenStream) -> TokenStream {
    let input = syn::parse_macro_input!(input as syn::DeriveInput);
    pod::expand(&input, pod::Trait::Pod).unwrap_or_else(syn::Error::into_compile_error).into()
}

/// bytemuck's `Zeroable` derive, for a crate that depends on `ensemble` alone.
#[proc_macro_derive(Zeroable, attributes(bytemuck, zeroable))]
pub fn derive_zeroable(input: TokenStream) -> TokenStream {
    let input = syn::parse_macro_input!(input as syn::DeriveInput);
    pod::expand(&input, pod::Trait::Zeroable).unwrap_or_else(syn::Error::into_compile_error).into()
}
