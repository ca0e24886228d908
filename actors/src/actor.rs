//! The traits that make a type a process actor: its identity, its hooks and its handlers.

use crate::context::ProcessContext;
use crate::dispatch::Dispatch;
use crate::message::RemoteMessage;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::cell::RefCell;
use std::error::Error;
use std::future::Future;

/// An actor that runs in its own process. Its value is the actor's initial state, sent to the
/// child when it is spawned.
///
/// Implemented by `#[derive(ProcessActor)]`, which reads `#[actor(...)]`:
/// - `handles(A, B, async C)`: the messages it handles; `async` marks an
///   [`AsyncProcessHandler`]. Sending any other message does not compile.
/// - `batches(T)`: the tasks a [`Farm`](crate::Farm) sends it (in batches; each task runs
///   through `ProcessHandler<T>`).
/// - `event = E`: the type of the events it pushes to the frontend (default [`NoEvents`](crate::NoEvents)).
/// - `hooks` (optional): asserts that the type implements [`Hooks`]. The child runs the type's
///   `impl Hooks` whether or not it is given; without an impl, the hooks are empty.
///
/// # Examples
/// ```
/// use ensemble::prelude::*;
///
/// #[derive(Serialize, Deserialize, ProcessActor)]
/// #[actor(handles(Add))]
/// struct Counter { total: u64 }
///
/// #[derive(Serialize, Deserialize, RemoteMessage)]
/// #[rtype(result = "u64")]
/// struct Add(u64);
///
/// impl ProcessHandler<Add> for Counter {
///     fn handle(&mut self, Add(n): Add, _: &mut ProcessContext<Self>) -> u64 {
///         self.total += n;
///         self.total
///     }
/// }
///
/// # #[actix_rt::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let counter = ensemble::spawn(Counter { total: 0 }).await?;
/// assert_eq!(counter.send(Add(2)).await?, 2);
/// assert_eq!(counter.send(Add(3)).await?, 5);
/// counter.stop().await?;
/// # Ok(()) }
/// ```
pub trait ProcessActor: RunHooks + Serialize + DeserializeOwned + Send + Sized + 'static {
    /// What the backend pushes to the frontend with [`ProcessContext::send_out`].
    type Event: Serialize + DeserializeOwned + Send + 'static;

    /// The context handlers get: always [`ProcessContext<Self>`], so that a handler may write
    /// `ctx: &mut Self::Context` as in actix.
    type Context;

    /// The key under which the child finds this type: module path and type name.
    const KEY: &'static str;

    /// The handlers, indexed by [`Handles::TAG`]. Generated; do not write by hand.
    #[doc(hidden)]
    const HANDLERS: &'static [Dispatch<Self>];
}

/// The error a [`Hooks::pre_run`] may return.
pub type HookError = Box<dyn Error + Send + Sync>;

/// Code that runs in the child around the messages: valkka's `preRun__` and `postRun__`.
///
/// Implement it for a process actor and the child runs it; an actor that does not implement it
/// has empty hooks. (`hooks` in `#[actor(..)]` is optional: it makes a missing impl an error.)
///
/// # When `post_run` runs
/// When the actor stops while its process lives: [`Remote::stop`](crate::Remote::stop),
/// [`ProcessContext::stop`], a supervisor's shutdown or group restart, or the parent's
/// connection closing (the last `Remote` dropped, or the parent exited). It does not run when
/// the process is killed or aborts, and so not when the parent exits before the child is done:
/// a child dies with its parent (`SIGKILL`). Dropping the last handle asks the child to stop and
/// returns at once; `#[ensemble::main]` waits at the end of `main` (up to 30 s) for the children
/// still stopping, but a `main` without it (`#[tokio::main]`, `#[actix_rt::main]`) that returns
/// right after dropping its last handle may kill the child before its `post_run` is done (the
/// first such drop logs a warning that says so). Await [`Remote::stop`](crate::Remote::stop) (or
/// a supervisor's shutdown), or call `ensemble::runtime::wait_for_children` before exiting, where
/// `post_run` matters.
///
/// # Examples
/// ```
/// use ensemble::prelude::*;
///
/// #[derive(Serialize, Deserialize, ProcessActor)]
/// struct Camera { device: String }
///
/// impl Hooks for Camera {
///     fn pre_run(&mut self, _: &mut ProcessContext<Self>) -> Result<(), ensemble::HookError> {
///         Err(format!("cannot open {}", self.device).into())
///     }
/// }
///
/// # #[actix_rt::main] async fn main() {
/// let spawned = ensemble::spawn(Camera { device: "/dev/video9".into() }).await;
/// assert!(spawned.unwrap_err().to_string().contains("cannot open /dev/video9"));
/// # }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` does not implement `Hooks`",
    label = "`hooks` in `#[actor(..)]` asks for `impl Hooks for {Self}`",
    note = "implement `ensemble::Hooks` for `{Self}` (its `pre_run` and `post_run`), or remove `hooks`: an actor without an impl has empty hooks"
)]
pub trait Hooks: Sized {
    /// Runs in the child before the first message: the place to open heavy resources. An error
    /// or a panic here fails the spawn with [`SpawnError::Start`](ensemble_runtime::SpawnError::Start).
    ///
    /// # Errors
    /// Whatever the actor cannot start without.
    fn pre_run(&mut self, ctx: &mut ProcessContext<Self>) -> Result<(), HookError>
    where
        Self: ProcessActor,
    {
        let _ = ctx;
        Ok(())
    }

    /// Runs in the child after the last message, when the actor is stopped (not when the
    /// process is killed).
    fn post_run(&mut self, ctx: &mut ProcessContext<Self>)
    where
        Self: ProcessActor,
    {
        let _ = ctx;
    }
}

/// How the backend runs an actor's hooks: the actor's [`Hooks`] when it implements them, empty
/// ones otherwise. Implemented by `#[derive(ProcessActor)]` (with [`HookProbe`]); do not
/// implement it by hand.
#[doc(hidden)]
pub trait RunHooks: Sized {
    /// [`Hooks::pre_run`], or nothing.
    ///
    /// # Errors
    /// Those of [`Hooks::pre_run`].
    fn pre_run(&mut self, ctx: &mut ProcessContext<Self>) -> Result<(), HookError>
    where
        Self: ProcessActor;

    /// [`Hooks::post_run`], or nothing.
    fn post_run(&mut self, ctx: &mut ProcessContext<Self>)
    where
        Self: ProcessActor;
}

/// Picks an actor's hooks by autoref: for a concrete type, `(&HookProbe::new(actor)).pre_run_hook(ctx)`
/// resolves to [`UserHooks`] when the type implements [`Hooks`] (the method is found on
/// `HookProbe` itself) and to [`NoHooks`] otherwise (found only after one more autoref). This
/// is why an `impl Hooks` needs no option in `#[actor(..)]`.
#[doc(hidden)]
pub struct HookProbe<'a, A>(RefCell<&'a mut A>);

impl<A> std::fmt::Debug for HookProbe<'_, A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HookProbe")
    }
}

impl<'a, A> HookProbe<'a, A> {
    /// A probe of `actor`.
    pub fn new(actor: &'a mut A) -> Self {
        HookProbe(RefCell::new(actor))
    }
}

/// The actor's own hooks: see [`HookProbe`].
#[doc(hidden)]
pub trait UserHooks<A: ProcessActor> {
    /// Runs [`Hooks::pre_run`].
    ///
    /// # Errors
    /// Those of [`Hooks::pre_run`].
    fn pre_run_hook(&self, ctx: &mut ProcessContext<A>) -> Result<(), HookError>;
    /// Runs [`Hooks::post_run`].
    fn post_run_hook(&self, ctx: &mut ProcessContext<A>);
}

impl<A: ProcessActor + Hooks> UserHooks<A> for HookProbe<'_, A> {
    fn pre_run_hook(&self, ctx: &mut ProcessContext<A>) -> Result<(), HookError> {
        Hooks::pre_run(&mut **self.0.borrow_mut(), ctx)
    }

    fn post_run_hook(&self, ctx: &mut ProcessContext<A>) {
        Hooks::post_run(&mut **self.0.borrow_mut(), ctx);
    }
}

/// Empty hooks, for an actor without an `impl Hooks`: see [`HookProbe`].
#[doc(hidden)]
pub trait NoHooks<A: ProcessActor> {
    /// Does nothing.
    ///
    /// # Errors
    /// None.
    fn pre_run_hook(&self, ctx: &mut ProcessContext<A>) -> Result<(), HookError>;
    /// Does nothing.
    fn post_run_hook(&self, ctx: &mut ProcessContext<A>);
}

impl<A: ProcessActor> NoHooks<A> for &HookProbe<'_, A> {
    fn pre_run_hook(&self, _: &mut ProcessContext<A>) -> Result<(), HookError> {
        Ok(())
    }

    fn post_run_hook(&self, _: &mut ProcessContext<A>) {}
}

/// Checks, where `hooks` is in `#[actor(..)]`, that the actor implements [`Hooks`].
#[doc(hidden)]
pub fn assert_hooks<A: Hooks>() {}

/// Marks that actor `Self` handles message `M`, and under which tag. Generated by
/// `#[derive(ProcessActor)]` for each message in `handles(...)`; do not implement it by hand.
#[diagnostic::on_unimplemented(
    message = "process actor `{Self}` does not handle `{M}`",
    label = "`{M}` is not in `{Self}`'s handles(...)",
    note = "add `{M}` to `#[actor(handles(...))]` on `{Self}` and implement `ProcessHandler<{M}>` for it"
)]
pub trait Handles<M: RemoteMessage>: ProcessActor {
    /// The index of `M`'s handler in [`ProcessActor::HANDLERS`].
    const TAG: u32;
}

/// Handles message `M` in the child: valkka's `c__` method.
///
/// Runs on the actor's actix arbiter, one message at a time, in the order they were sent.
#[diagnostic::on_unimplemented(
    message = "`{Self}` lists `{M}` in handles(...) but does not implement `ProcessHandler<{M}>`",
    note = "implement `ProcessHandler<{M}>` for `{Self}`, or mark it `async {M}` and implement `AsyncProcessHandler<{M}>`"
)]
pub trait ProcessHandler<M: RemoteMessage>: ProcessActor {
    /// Handles one message and returns the reply.
    fn handle(&mut self, msg: M, ctx: &mut ProcessContext<Self>) -> M::Result;
}

/// Handles message `M` in the child with an async function (valkka's AsyncBackMessageProcess).
///
/// The actor handles no other message until the returned future completes; other futures on
/// the arbiter (timers, spawned tasks) keep running meanwhile.
#[diagnostic::on_unimplemented(
    message = "`{Self}` lists `async {M}` in handles(...) but does not implement `AsyncProcessHandler<{M}>`",
    note = "implement `AsyncProcessHandler<{M}>` for `{Self}`, or drop `async` and implement `ProcessHandler<{M}>`"
)]
pub trait AsyncProcessHandler<M: RemoteMessage>: ProcessActor {
    /// Handles one message and resolves to the reply.
    fn handle(&mut self, msg: M, ctx: &mut ProcessContext<Self>) -> impl Future<Output = M::Result>;
}
