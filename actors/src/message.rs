//! Messages: the types a frontend sends to a process actor, each with its reply type.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// A message that can cross into a process actor, and the type of its reply.
///
/// Derive it with `#[derive(RemoteMessage)]` and name the reply with `#[rtype(result = "T")]`,
/// the attribute actix's `Message` derive reads, so one type can derive both. Without `rtype`
/// the reply is `()`.
///
/// # Examples
/// ```
/// use ensemble::prelude::*;
///
/// #[derive(Serialize, Deserialize, RemoteMessage)]
/// #[rtype(result = "u64")]
/// struct Add(u64);
///
/// fn reply_of<M: RemoteMessage>() -> &'static str { std::any::type_name::<M::Result>() }
/// assert_eq!(reply_of::<Add>(), "u64");
/// ```
pub trait RemoteMessage: Serialize + DeserializeOwned + Send + 'static {
    /// What the handler returns to the caller.
    type Result: Serialize + DeserializeOwned + Send + 'static;
}

/// The event type of an actor that sends no events: it has no values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NoEvents {}

/// A message no value of which exists. The derive implements `Handles<NotAMessage>` for every
/// actor so that rustc never infers a message type from a lone `Handles` impl; it can never be
/// sent.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub enum NotAMessage {}

impl RemoteMessage for NotAMessage {
    type Result = ();
}
