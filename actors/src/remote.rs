//! The frontend: spawning a process actor and the handle that calls it.

use crate::actor::{Handles, ProcessActor};
use crate::error::{CallError, EventError, StopError};
use crate::message::RemoteMessage;
use crate::meter::{Meter, Series};
use ensemble_runtime::transport::{LaneConfig, LaneStats, Limits, ProtocolError};
use ensemble_runtime::{
    wire, Body, CallFailure, Connection, ExitInfo, PendingCall, ReadOn, SpawnConfig, SpawnError,
};
use futures::channel::{mpsc, oneshot};
use futures::Stream;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// How to start a process actor. Every field has a default; set the ones you need.
///
/// # Examples
/// ```
/// use ensemble::SpawnOptions;
/// use std::time::Duration;
/// let options = SpawnOptions::new().name("resizer-1").shutdown_timeout(Duration::from_secs(1));
/// assert_eq!(options.name.as_deref(), Some("resizer-1"));
/// ```
#[derive(Clone, Debug)]
pub struct SpawnOptions {
    /// The process name (`ps`, `top`, log lines). Default: the actor's type name.
    pub name: Option<String>,
    /// How long the child may take to start and connect. Default: 10 s.
    pub handshake_timeout: Duration,
    /// How long `pre_run` may take. Default: 60 s.
    pub start_timeout: Duration,
    /// How long a stopping actor may take (post_run included) before it is killed. Default: 5 s.
    pub shutdown_timeout: Duration,
    /// Pin the child to this CPU. Default: not pinned.
    pub cpu: Option<usize>,
    /// Extra environment variables for the child.
    pub env: Vec<(String, String)>,
    /// The largest message (encoded) either side accepts; larger ones are refused at send
    /// with [`CallError::TooLarge`]. Default: 256 MiB.
    pub max_message_size: usize,
    /// How many messages may wait for room in the connection's socket. When the queue is full,
    /// `do_send` fails with [`CallError::Full`] and `send` waits for room. Default: 1024.
    pub send_queue: usize,
    /// Calls, replies and events through shared memory while both sides are busy (see
    /// [`SpawnOptions::fast_lane`]). Default: off.
    pub fast_lane: Option<LaneConfig>,
}

impl Default for SpawnOptions {
    fn default() -> Self {
        let process = SpawnConfig::default();
        SpawnOptions {
            name: None,
            handshake_timeout: process.handshake_timeout,
            start_timeout: process.start_timeout,
            shutdown_timeout: Duration::from_secs(5),
            cpu: None,
            env: Vec::new(),
            max_message_size: process.limits.max_message,
            send_queue: process.send_queue,
            fast_lane: None,
        }
    }
}

impl SpawnOptions {
    /// The defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the process name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Sets the handshake timeout.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Sets the start (`pre_run`) timeout.
    pub fn start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = timeout;
        self
    }

    /// Sets the shutdown timeout.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// Pins the child to one CPU.
    pub fn cpu(mut self, cpu: usize) -> Self {
        self.cpu = Some(cpu);
        self
    }

    /// Adds an environment variable for the child.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Sets the largest message either side accepts, in bytes.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// Sets how many messages may wait for room in the connection.
    pub fn send_queue(mut self, messages: usize) -> Self {
        self.send_queue = messages;
        self
    }

    /// Opens a *fast lane* to the actor: calls, replies and events travel through a pair of
    /// rings in shared memory, so that while both sides are busy a call costs about a
    /// microsecond instead of two wake-ups through the kernel. Each side spins a little for the
    /// next frame only where that pays (never when both can only run on one CPU), then sleeps
    /// and is woken through the connection: an idle actor costs no CPU. Everything else is as
    /// without it: the same API, order kept between small frames (in the rings) and large ones
    /// or ones with segments (on the socket), a dead or misbehaving child fails its calls at
    /// once.
    ///
    /// Pays for many small calls in a row (a request/response loop, tiny tasks); costs two
    /// rings of [`LaneConfig::slots`] x [`LaneConfig::slot_size`] bytes of shared memory.
    ///
    /// # Examples
    /// ```
    /// use ensemble::SpawnOptions;
    /// let options = SpawnOptions::new().fast_lane();
    /// assert!(options.fast_lane.is_some());
    /// ```
    pub fn fast_lane(self) -> Self {
        self.fast_lane_with(LaneConfig::default())
    }

    /// As [`fast_lane`](Self::fast_lane), with rings of another shape.
    pub fn fast_lane_with(mut self, lane: LaneConfig) -> Self {
        self.fast_lane = Some(lane);
        self
    }

    fn config<A: ProcessActor>(&self) -> SpawnConfig {
        let default_name = A::KEY.rsplit("::").next().unwrap_or(A::KEY);
        SpawnConfig {
            name: self.name.clone().unwrap_or_else(|| default_name.to_owned()),
            handshake_timeout: self.handshake_timeout,
            start_timeout: self.start_timeout,
            cpu: self.cpu,
            env: self.env.clone(),
            limits: Limits { max_message: self.max_message_size },
            send_queue: self.send_queue,
            fast_lane: self.fast_lane,
        }
    }
}

/// Starts `actor` in a new process with default options; resolves once its `pre_run` is done.
///
/// # Errors
/// A [`SpawnError`] saying why the child did not start (it exited, timed out, is another build,
/// its `pre_run` failed, ...). No process is left behind.
///
/// # Examples
/// See [`ProcessActor`].
pub async fn spawn<A: ProcessActor>(actor: A) -> Result<Remote<A>, SpawnError> {
    spawn_with(actor, SpawnOptions::default()).await
}

/// Starts `actor` in a new process with `options`.
///
/// # Errors
/// As [`spawn`].
pub async fn spawn_with<A: ProcessActor>(actor: A, options: SpawnOptions) -> Result<Remote<A>, SpawnError> {
    let (state, holds) = wire::encode_body(&actor).map_err(SpawnError::Encode)?;
    let config = options.config::<A>();
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("ensemble-spawn".into())
        .spawn(move || {
            let fds =
                holds.iter().map(|hold| hold.fd().try_clone_to_owned()).collect::<std::io::Result<Vec<_>>>();
            let spawned = fds
                .map_err(SpawnError::Launch)
                .and_then(|fds| ensemble_runtime::spawn(A::KEY, &state, fds, &config));
            // Segments in the initial state are held until the child is ready: it maps them
            // before `pre_run`, so by then it holds them itself.
            drop(holds);
            let _ = tx.send(spawned);
        })
        .map_err(SpawnError::Launch)?;
    let spawned =
        rx.await.map_err(|_| SpawnError::Launch(std::io::Error::other("the spawning thread died")))??;
    let connection = Connection::new(spawned, options.shutdown_timeout, reader_placement());
    tracing::debug!(pid = connection.process().pid(), name = connection.process().name(), "spawned");
    let series = Series::new(connection.process().name(), A::KEY);
    Ok(Remote {
        connection: Arc::new(connection),
        shutdown_timeout: options.shutdown_timeout,
        series,
        _actor: PhantomData,
    })
}

/// Where the connection of an actor spawned here is read: on this actix arbiter, which polls its
/// tasks for as long as it lives (one wake-up per reply), else on the runtime's I/O thread (a
/// plain thread, a tokio runtime that may be blocked or dropped).
fn reader_placement() -> ReadOn {
    if actix_rt::Arbiter::try_current().is_some() && tokio::runtime::Handle::try_current().is_ok() {
        ReadOn::Current
    } else {
        ReadOn::IoThread
    }
}

/// The frontend of a process actor: calls become messages handled in the child.
///
/// `Clone + Send + Sync`; use it from actix actors, tokio tasks or threads alike. When the last
/// clone is dropped, the child is asked to stop (its `post_run` runs) and is killed if it has not
/// exited within its shutdown timeout.
pub struct Remote<A: ProcessActor> {
    connection: Arc<Connection>,
    shutdown_timeout: Duration,
    series: Arc<Series>,
    _actor: PhantomData<fn() -> A>,
}

impl<A: ProcessActor> Remote<A> {
    /// Sends `msg` and returns a future of the reply. The message leaves at once, whether or
    /// not the future is awaited; calls from many tasks are in flight together. When the send
    /// queue is full (the child is not reading), the message waits and leaves when the future
    /// is polled and the queue has room: this is the backpressure of `send`.
    ///
    /// # Errors
    /// The future resolves to a [`CallError`]: the handler panicked, the process exited or
    /// broke the protocol (at once, never a hang), the deadline passed, something did not
    /// decode, or the message is over the size limit.
    pub fn send<M>(&self, msg: M) -> Call<M>
    where
        A: Handles<M>,
        M: RemoteMessage,
    {
        // Not delivered: the process is exiting; the call fails with how it ended.
        self.send_or_return(msg).unwrap_or_else(|_| Call {
            state: CallState::Undelivered(Box::pin(self.connection.exited()), Arc::clone(&self.connection)),
            deadline: Deadline::default(),
            meter: Some(self.meter()),
        })
    }

    /// As [`Remote::send`], but gives the message back when it was certainly not delivered
    /// (the process is exiting), so that it can go to the next incarnation.
    pub(crate) fn send_or_return<M>(&self, msg: M) -> Result<Call<M>, M>
    where
        A: Handles<M>,
        M: RemoteMessage,
    {
        let meter = self.meter();
        let tag = <A as Handles<M>>::TAG;
        let state = match self.connection.call(tag, &msg) {
            Ok(pending) => CallState::Pending(pending),
            Err(CallFailure::Full) => {
                CallState::Waiting { msg: Some(msg), tag, connection: Arc::clone(&self.connection) }
            }
            Err(CallFailure::NotDelivered) => return Err(msg),
            Err(failure) => CallState::Failed(Some(failure.into())),
        };
        Ok(Call { state, deadline: Deadline::default(), meter: Some(meter) })
    }

    /// Sends `msg` without waiting for the handler (fire-and-forget). A failure of the handler
    /// is logged by the child. Never blocks.
    ///
    /// # Errors
    /// [`CallError::Exited`], [`CallError::Protocol`] or [`CallError::Stopping`] when the actor
    /// is gone or stopping, [`CallError::Full`] when the send queue is full (nothing is sent),
    /// [`CallError::Encode`] or [`CallError::TooLarge`] when the message does not encode.
    pub fn do_send<M>(&self, msg: M) -> Result<(), CallError>
    where
        A: Handles<M>,
        M: RemoteMessage,
    {
        Ok(self.connection.cast(<A as Handles<M>>::TAG, &msg)?)
    }

    /// Sends `msg` without a reply, like [`Remote::do_send`], but waits for room when the send
    /// queue is full instead of failing: fire-and-forget with backpressure, for streams of
    /// messages.
    ///
    /// # Errors
    /// As [`Remote::do_send`], except [`CallError::Full`].
    ///
    /// # Cancel safety
    /// Dropping the future before it resolves sends nothing more; a message is sent whole or
    /// not at all.
    pub async fn cast<M>(&self, msg: M) -> Result<(), CallError>
    where
        A: Handles<M>,
        M: RemoteMessage,
    {
        loop {
            match self.connection.cast(<A as Handles<M>>::TAG, &msg) {
                Err(CallFailure::Full) => std::future::poll_fn(|cx| self.connection.poll_room(cx)).await,
                sent => return Ok(sent?),
            }
        }
    }

    /// The events the backend pushes with [`ProcessContext::send_out`](crate::ProcessContext::send_out),
    /// in order, from the start of the process. The stream ends when the process has exited.
    /// There is one stream per actor: the first call gets it, later calls get `None`.
    ///
    /// Events wait in this process until they are read (whether or not the stream was taken).
    /// A child whose unread events pass 1,048,576 events, 1 GiB or 4096 attached descriptors is
    /// flooding its parent: it is killed, and calls fail with [`CallError::Protocol`]
    /// (`EventsUnread`). Read the events of a child that sends many, or drop them as they come.
    pub fn events(&self) -> Option<Events<A::Event>> {
        let rx = self.connection.take_events()?;
        Some(Events { rx, _event: PhantomData })
    }

    /// Stops the actor: messages sent before are handled, `post_run` runs, the process exits
    /// with status 0 and is reaped. Past the shutdown timeout the process is killed.
    ///
    /// # Errors
    /// [`StopError::Killed`] when it had to be killed, [`StopError::Exited`] when it had ended
    /// already or exited with a non-zero status.
    pub async fn stop(&self) -> Result<(), StopError> {
        let exited = self.connection.exited();
        if !self.connection.request_stop() {
            return Err(StopError::Exited(exited.await));
        }
        let deadline = tokio::time::sleep(self.shutdown_timeout);
        tokio::pin!(exited);
        let exit = tokio::select! {
            exit = &mut exited => exit,
            () = deadline => {
                self.connection.process().kill();
                let exit = exited.await;
                return Err(StopError::Killed { timeout: self.shutdown_timeout, exit });
            }
        };
        if exit.success() {
            Ok(())
        } else {
            Err(StopError::Exited(exit))
        }
    }

    /// Stops the actor as [`Remote::stop`] does, but resolves once the child has run
    /// `post_run` and closed its connection, without waiting for its exit: the connection's
    /// driver reaps it. Past the shutdown timeout the process is killed (and this waits for
    /// its exit then).
    pub(crate) async fn stop_until_closed(&self) {
        let closed = self.connection.closed();
        // A stop that cannot be sent finds the child exited or exiting (its close is near), or
        // the connection broken: the timeout below kills it then.
        let _ = self.connection.request_stop();
        if tokio::time::timeout(self.shutdown_timeout, closed).await.is_err() {
            self.connection.process().kill();
            self.connection.exited().await;
        }
    }

    /// Resolves once the process has exited, however it ended.
    pub async fn exited(&self) -> ExitInfo {
        self.connection.exited().await
    }

    /// How the process ended, if it has.
    pub fn exit_info(&self) -> Option<ExitInfo> {
        self.connection.exit_info()
    }

    /// Kills the process with `SIGKILL` (no `post_run`). Returns false when it had exited.
    pub fn kill(&self) -> bool {
        self.connection.process().kill()
    }
    /// What the fast lane to the child has done (frames each way, the parent's sleeps, lost
    /// wake-ups), or `None` when it was spawned without one ([`SpawnOptions::fast_lane`]).
    pub fn fast_lane_stats(&self) -> Option<LaneStats> {
        self.connection.lane_stats()
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.connection.process().pid()
    }

    /// The child's process name.
    pub fn name(&self) -> &str {
        self.connection.process().name()
    }

    /// Starts timing a call, for the metrics and `ensemble ps`.
    fn meter(&self) -> Meter {
        Meter::start(self.connection.process().record(), &self.series)
    }

    /// Declares that the child broke the protocol (seen by a layer above the connection): it is
    /// killed and every call fails with [`CallError::Protocol`].
    pub(crate) fn protocol_violation(&self, error: ProtocolError) {
        self.connection.protocol_violation(error);
    }
}

impl<A: ProcessActor> Clone for Remote<A> {
    fn clone(&self) -> Self {
        Remote {
            connection: Arc::clone(&self.connection),
            shutdown_timeout: self.shutdown_timeout,
            series: Arc::clone(&self.series),
            _actor: PhantomData,
        }
    }
}

impl<A: ProcessActor> fmt::Debug for Remote<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Remote").field("actor", &A::KEY).field("pid", &self.pid()).finish()
    }
}

/// A call in flight: resolves to the reply of message `M`.
///
/// # Cancel safety
/// Dropping it forgets the reply; the handler still runs in the child.
#[must_use = "the message is sent already; await the Call to get its reply"]
pub struct Call<M: RemoteMessage> {
    state: CallState<M>,
    deadline: Deadline,
    /// Counts the call when it resolves (a dropped call is not counted).
    meter: Option<Meter>,
}

impl<M: RemoteMessage> std::fmt::Debug for Call<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Call").field("message", &std::any::type_name::<M>()).finish_non_exhaustive()
    }
}

/// An optional per-call deadline, started at the first poll.
#[derive(Default)]
pub(crate) struct Deadline {
    after: Option<Duration>,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Deadline {
    pub(crate) fn set(&mut self, after: Duration) {
        self.after = Some(after);
    }

    /// `Some(deadline)` once it has passed.
    pub(crate) fn poll_passed(&mut self, cx: &mut Context<'_>) -> Option<Duration> {
        let after = self.after?;
        let sleep = self.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep(after)));
        sleep.as_mut().poll(cx).is_ready().then_some(after)
    }
}

enum CallState<M> {
    /// Sent; waiting for the reply.
    Pending(PendingCall),
    /// The send queue was full: the message waits for room.
    Waiting {
        msg: Option<M>,
        tag: u32,
        connection: Arc<Connection>,
    },
    /// The process was exiting: the call fails with how it ended, once that is known.
    Undelivered(Pin<Box<ensemble_runtime::Exited>>, Arc<Connection>),
    Failed(Option<CallError>),
}

impl<M> Unpin for CallState<M> {}

impl<M: RemoteMessage> Call<M> {
    /// Fails the call with [`CallError::Timeout`] if no reply came within `deadline`, counted
    /// from the first poll. Needs a tokio runtime with its timer (actix-rt has one).
    pub fn timeout(mut self, deadline: Duration) -> Self {
        self.deadline.set(deadline);
        self
    }
}

impl<M: RemoteMessage> Future for Call<M> {
    type Output = Result<M::Result, CallError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let poll = self.poll_call(cx);
        if let Poll::Ready(result) = &poll {
            if let Some(meter) = self.meter.take() {
                meter.finish(result);
            }
        }
        poll
    }
}

impl<M: RemoteMessage> Call<M> {
    fn poll_call(&mut self, cx: &mut Context<'_>) -> Poll<Result<M::Result, CallError>> {
        let this = self;
        if let CallState::Waiting { msg, tag, connection } = &mut this.state {
            while connection.poll_room(cx).is_ready() {
                let message = msg.as_ref().expect("a waiting call holds its message");
                this.state = match connection.call(*tag, message) {
                    Ok(pending) => CallState::Pending(pending),
                    Err(CallFailure::Full) => continue,
                    Err(failure) => CallState::Failed(Some(failure.into())),
                };
                break;
            }
        }
        let ready = match &mut this.state {
            CallState::Pending(pending) => match Pin::new(pending).poll(cx) {
                Poll::Ready(result) => {
                    Some(result.map_err(CallError::from).and_then(|body| decode_reply::<M>(&body)))
                }
                Poll::Pending => None,
            },
            CallState::Waiting { .. } => None,
            CallState::Undelivered(exited, connection) => match exited.as_mut().poll(cx) {
                Poll::Ready(exit) => {
                    Some(Err(connection.failure().map_or(CallError::Exited(exit), CallError::from)))
                }
                Poll::Pending => None,
            },
            CallState::Failed(error) => Some(Err(error.take().unwrap_or(CallError::Stopping))),
        };
        if let Some(result) = ready {
            return Poll::Ready(result);
        }
        if let Some(deadline) = this.deadline.poll_passed(cx) {
            this.state = CallState::Failed(None);
            return Poll::Ready(Err(CallError::Timeout(deadline)));
        }
        Poll::Pending
    }
}

fn decode_reply<M: RemoteMessage>(body: &Body) -> Result<M::Result, CallError> {
    body.decode::<M::Result>().map_err(|e| {
        if e.is_malformed() {
            CallError::Protocol(ProtocolError::Undecodable(format!(
                "the reply to {}: {e}",
                std::any::type_name::<M>()
            )))
        } else {
            CallError::Decode {
                what: format!("the reply to {}", std::any::type_name::<M>()),
                detail: e.to_string(),
            }
        }
    })
}

/// The events of one process actor, as a [`Stream`]. Ends when the process has exited.
pub struct Events<E> {
    rx: mpsc::UnboundedReceiver<Body>,
    _event: PhantomData<fn() -> E>,
}

impl<E: serde::de::DeserializeOwned> Stream for Events<E> {
    type Item = Result<E, EventError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.rx).poll_next(cx).map(|body| {
            body.map(|body| {
                body.decode::<E>()
                    .map_err(|e| EventError { what: std::any::type_name::<E>(), detail: e.to_string() })
            })
        })
    }
}

impl<E> fmt::Debug for Events<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Events").finish_non_exhaustive()
    }
}
