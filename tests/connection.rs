//! The connection between a parent and a child, tried as a buggy or hostile child would:
//! whatever a child writes on its connection, the parent never panics, aborts or hangs; the
//! child is killed and reaped, its calls fail with a protocol error, its siblings carry on.
//! Also: size limits, the bounded send queue, both directions full at once, large messages
//! through a memfd, descriptors that grandchildren must not inherit, and calls from any thread
//! or runtime.

#![allow(clippy::disallowed_methods)] // tests and examples start helper programs of their own

#[path = "common/harness.rs"]
mod harness;

use ensemble::prelude::*;
use ensemble_runtime::transport::framing::header;
use ensemble_runtime::wire::{self, ToParent};
use futures::StreamExt;
use harness::within;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::Duration;

#[derive(Serialize, Deserialize, ProcessActor)]
#[actor(handles(Misbehave, Echo, Nap, Blob, Flood, Grandchild), event = Chunk)]
struct Peer;

/// A shape of garbage the child writes on its own connection before it replies.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
enum Shape {
    /// Three bytes: shorter than a frame header.
    Short,
    /// A header announcing 100 bytes, followed by 50.
    Truncated,
    /// A zero-length record.
    Empty,
    /// A header announcing a 1 TiB body in a memfd, with a descriptor attached.
    HugeWithFd,
    /// A well-formed event frame with a descriptor the header does not announce.
    UnexpectedFd,
    /// Another transport version.
    WrongVersion,
    /// A reply to call 1 whose string claims a terabyte.
    LyingReply,
    /// The child closes its connection and stays alive.
    Close,
}

/// Its reply is a string, so that a lying reply can claim a huge one.
#[derive(Serialize, Deserialize, RemoteMessage)]
#[rtype(result = "String")]
struct Misbehave(Shape);

#[derive(Serialize, Deserialize, RemoteMessage)]
#[rtype(result = "u64")]
struct Echo(u64);

/// Sleeps in the handler, so that the child reads nothing meanwhile.
#[derive(Serialize, Deserialize, RemoteMessage)]
struct Nap(u64);

#[derive(Serialize, Deserialize, RemoteMessage)]
#[rtype(result = "(u64, u64)")]
struct Blob(#[serde(with = "serde_bytes")] Vec<u8>);

/// Sends this many 16 KiB events.
#[derive(Serialize, Deserialize, RemoteMessage)]
#[rtype(result = "u32")]
struct Flood(u32);

#[derive(Serialize, Deserialize)]
struct Chunk(#[serde(with = "serde_bytes")] Vec<u8>);

/// Starts `sleep 30` and returns its pid.
#[derive(Serialize, Deserialize, RemoteMessage)]
#[rtype(result = "u32")]
struct Grandchild;

impl ProcessHandler<Misbehave> for Peer {
    fn handle(&mut self, Misbehave(shape): Misbehave, _: &mut ProcessContext<Self>) -> String {
        let connection = own_connection();
        let send = |bytes: &[u8], fds: &[BorrowedFd<'_>]| send_raw(connection.as_fd(), bytes, fds);
        let huge = 1u64 << 40;
        match shape {
            Shape::Short => send(&[0xE5, 1, 0], &[]),
            Shape::Truncated => send(&[&header(100, false, 0)[..], &[0u8; 50]].concat(), &[]),
            Shape::Empty => send(&[], &[]),
            Shape::HugeWithFd => send(&header(huge, true, 0), &[connection.as_fd()]),
            Shape::UnexpectedFd => {
                send(&framed(encoded(&ToParent::Event, &Chunk(vec![1]))), &[connection.as_fd()])
            }
            Shape::WrongVersion => send(&[&[0xE5, 9][..], &header(1, false, 0)[2..], &[0]].concat(), &[]),
            Shape::LyingReply => {
                let frame = encoded(&ToParent::Reply { id: 1, ok: true }, &());
                send(&framed([frame, huge.to_le_bytes().to_vec()].concat()), &[]);
            }
            Shape::Close => {
                drop(connection);
                // Closing our copy is not enough: the process holds the original; close it too.
                for fd in seqpacket_fds() {
                    drop(fd);
                }
                std::thread::sleep(Duration::from_secs(60));
            }
        }
        String::new()
    }
}

impl ProcessHandler<Echo> for Peer {
    fn handle(&mut self, Echo(n): Echo, _: &mut ProcessContext<Self>) -> u64 {
        n
    }
}

impl ProcessHandler<Nap> for Peer {
    fn handle(&mut self, Nap(ms): Nap, _: &mut ProcessContext<Self>) {
        std::thread::sleep(Duration::from_millis(ms));
    }
}

impl ProcessHandler<Blob> for Peer {
    fn handle(&mut self, Blob(bytes): Blob, _: &mut ProcessContext<Self>) -> (u64, u64) {
        let sampled = bytes.iter().step_by(4096).map(|b| u64::from(*b)).sum();
        (bytes.len() as u64, sampled)
    }
}

impl ProcessHandler<Flood> for Peer {
    fn handle(&mut self, Flood(n): Flood, ctx: &mut ProcessContext<Self>) -> u32 {
        (0..n).filter(|_| ctx.send_out(Chunk(vec![7; 16 << 10])).is_ok()).count() as u32
    }
}

impl ProcessHandler<Grandchild> for Peer {
    fn handle(&mut self, _: Grandchild, _: &mut ProcessContext<Self>) -> u32 {
        let child = std::process::Command::new("/bin/sleep").arg("30").spawn().expect("sleep starts");
        let pid = child.id();
        std::mem::forget(child);
        pid
    }
}

/// Every seqpacket socket this process holds: in a child, its connection to the parent.
fn seqpacket_fds() -> Vec<OwnedFd> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let Ok(fd) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        // SAFETY: the number was just listed as open in this process, and nothing closes it
        // while this borrow lives (the handler runs on the only thread that could).
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        if rustix::net::sockopt::socket_type(borrowed).is_ok_and(|t| t == rustix::net::SocketType::SEQPACKET)
        {
            // SAFETY: ownership of the child's own connection is taken on purpose, to close it or
            // to write garbage on it as a buggy C library would; the test's callers forget or
            // drop it knowingly.
            found.push(unsafe { OwnedFd::from_raw_fd(fd) });
        }
    }
    found
}

/// A duplicate of this child's connection.
fn own_connection() -> OwnedFd {
    let fds = seqpacket_fds();
    let dup = fds[0].try_clone().unwrap();
    fds.into_iter().for_each(std::mem::forget);
    dup
}

fn send_raw(socket: BorrowedFd<'_>, bytes: &[u8], fds: &[BorrowedFd<'_>]) {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() {
        assert!(control.push(SendAncillaryMessage::ScmRights(fds)));
    }
    rustix::net::sendmsg(socket, &[std::io::IoSlice::new(bytes)], &mut control, SendFlags::empty()).unwrap();
}

/// A frame as the child would encode it.
fn encoded<B: Serialize>(header: &ToParent, body: &B) -> Vec<u8> {
    wire::encode(header, body).unwrap().frame.inline().unwrap().to_vec()
}

/// A datagram: the transport header and `frame`.
fn framed(frame: Vec<u8>) -> Vec<u8> {
    [&header(frame.len() as u64, false, 0)[..], &frame].concat()
}

async fn peer() -> Remote<Peer> {
    within(10, ensemble::spawn(Peer)).await.unwrap()
}

fn protocol_error<T: std::fmt::Debug>(result: Result<T, CallError>) -> String {
    match result {
        Err(CallError::Protocol(error)) => error.to_string(),
        other => panic!("expected a protocol error, got {other:?}"),
    }
}

/// The child writes `shape`; the call in which it did, a call queued behind it and every later
/// call fail with the protocol error; the child is killed and reaped; a sibling carries on.
///
/// A lying reply body is found when its caller decodes it, so a well-formed reply the child
/// sent in between (to the queued call) may still be delivered.
async fn misbehaves(shape: Shape, expected: &str) {
    let (bad, sibling) = (peer().await, peer().await);
    let first = bad.send(Misbehave(shape));
    let queued = bad.send(Echo(1));
    let error = protocol_error(within(10, first).await);
    assert!(error.contains(expected), "{shape:?}: {error}");
    let queued = within(10, queued).await;
    if !matches!(shape, Shape::LyingReply) {
        protocol_error(queued);
    }
    protocol_error(within(1, bad.send(Echo(2))).await);
    let exit = within(10, bad.exited()).await;
    assert_eq!(exit.signal(), Some(libc::SIGKILL), "{shape:?}: {exit}");
    assert_eq!(within(10, sibling.send(Echo(3))).await.unwrap(), 3);
}

#[tokio::test]
async fn a_packet_shorter_than_a_header_kills_only_its_child() {
    misbehaves(Shape::Short, "shorter than the frame header").await;
}

#[tokio::test]
async fn a_truncated_frame_kills_only_its_child() {
    misbehaves(Shape::Truncated, "announces 100 bytes, the datagram holds 50").await;
}

#[tokio::test]
async fn a_zero_length_record_kills_only_its_child() {
    misbehaves(Shape::Empty, "empty record").await;
}

#[tokio::test]
async fn a_header_announcing_a_terabyte_is_refused_before_allocating() {
    misbehaves(Shape::HugeWithFd, "over this connection's limit").await;
}

#[tokio::test]
async fn a_descriptor_the_header_does_not_announce_kills_only_its_child() {
    misbehaves(Shape::UnexpectedFd, "announces 0 descriptors, 1 arrived").await;
}

#[tokio::test]
async fn another_transport_version_kills_only_its_child() {
    misbehaves(Shape::WrongVersion, "transport version 9").await;
}

#[tokio::test]
async fn a_reply_whose_string_claims_a_terabyte_is_an_error_not_an_abort() {
    misbehaves(Shape::LyingReply, "does not decode").await;
}

#[tokio::test]
async fn a_child_that_closes_its_connection_but_lives_is_killed() {
    misbehaves(Shape::Close, "closed its connection without exiting").await;
}

#[tokio::test]
async fn a_message_over_the_limit_is_refused_at_send_naming_the_limit() {
    let options = SpawnOptions::new().max_message_size(1 << 20);
    let actor = within(10, ensemble::spawn_with(Peer, options)).await.unwrap();
    match within(10, actor.send(Blob(vec![1; 2 << 20]))).await {
        Err(error @ CallError::TooLarge { limit, .. }) => {
            assert_eq!(limit, 1 << 20);
            assert!(error.to_string().contains("max_message_size"), "{error}");
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert!(matches!(actor.do_send(Blob(vec![1; 2 << 20])), Err(CallError::TooLarge { .. })));
    assert_eq!(within(10, actor.send(Blob(vec![1; 1000]))).await.unwrap().0, 1000, "still usable");
    within(10, actor.stop()).await.unwrap();
}

#[tokio::test]
async fn a_gigabyte_message_reaches_the_child_through_a_memfd() {
    let options = SpawnOptions::new().max_message_size(1 << 31);
    let actor = within(10, ensemble::spawn_with(Peer, options)).await.unwrap();
    let bytes: Vec<u8> = (0..1usize << 30).map(|i| (i / 4096) as u8).collect();
    let expected = bytes.iter().step_by(4096).map(|b| u64::from(*b)).sum::<u64>();
    let (len, sampled) = within(120, actor.send(Blob(bytes))).await.unwrap();
    assert_eq!((len, sampled), (1 << 30, expected));
    within(10, actor.stop()).await.unwrap();
}

#[tokio::test]
async fn do_send_to_a_full_queue_is_an_error_and_send_waits_for_room() {
    let options = SpawnOptions::new().send_queue(4);
    let actor = within(10, ensemble::spawn_with(Peer, options)).await.unwrap();
    actor.do_send(Nap(1500)).unwrap();
    let mut refused = None;
    for sent in 0..200 {
        match actor.do_send(Blob(vec![0; 64 << 10])) {
            Ok(()) => {}
            Err(CallError::Full) => {
                refused = Some(sent);
                break;
            }
            Err(other) => panic!("expected Full, got {other:?}"),
        }
    }
    let sent = refused.expect("a 4-frame queue over a ~200 KiB socket fills within 200 sends");
    assert!(sent >= 4, "the queue took {sent}");
    // `send` waits for room instead, and everything sent arrives.
    assert_eq!(within(30, actor.send(Echo(9))).await.unwrap(), 9);
    within(10, actor.stop()).await.unwrap();
}

#[tokio::test]
async fn both_directions_full_at_once_do_not_deadlock() {
    let actor = peer().await;
    let mut events = actor.events().unwrap();
    let flood = actor.send(Flood(300));
    let calls: Vec<_> = (0..300).map(|_| actor.send(Blob(vec![3; 16 << 10]))).collect();
    let (sent, replies) = within(60, async { (flood.await, futures::future::join_all(calls).await) }).await;
    assert_eq!(sent.unwrap(), 300, "no event was refused");
    assert!(replies.iter().all(|r| r.as_ref().is_ok_and(|(len, _)| *len == 16 << 10)));
    for _ in 0..300 {
        let Chunk(bytes) = within(10, events.next()).await.unwrap().unwrap();
        assert_eq!(bytes.len(), 16 << 10);
    }
    within(10, actor.stop()).await.unwrap();
}

#[tokio::test]
async fn a_grandchild_does_not_inherit_the_connection() {
    let actor = peer().await;
    let grandchild = within(10, actor.send(Grandchild)).await.unwrap();
    let links: Vec<String> = std::fs::read_dir(format!("/proc/{grandchild}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let _ = rustix::process::kill_process(
        rustix::process::Pid::from_raw(grandchild as i32).unwrap(),
        rustix::process::Signal::KILL,
    );
    assert!(!links.iter().any(|l| l.starts_with("socket:")), "the grandchild holds {links:?}");
    assert_eq!(links.first().map(String::as_str), Some("/dev/null"), "stdin is /dev/null: {links:?}");
    within(10, actor.stop()).await.unwrap();
}

#[test]
fn calls_work_from_the_spawning_arbiter_a_plain_thread_and_another_runtime() {
    let system = actix_rt::System::new();
    let actor = system.block_on(async {
        let actor = peer().await;
        assert_eq!(within(10, actor.send(Echo(1))).await.unwrap(), 1, "from the arbiter");
        actor
    });
    let from_thread = {
        let actor = actor.clone();
        std::thread::spawn(move || futures::executor::block_on(actor.send(Echo(2)))).join().unwrap()
    };
    assert_eq!(from_thread.unwrap(), 2, "from a plain thread while the arbiter is idle");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    assert_eq!(runtime.block_on(within(10, actor.send(Echo(3)))).unwrap(), 3, "from another runtime");
    // The arbiter goes away while the child lives: its connection moves to the I/O thread.
    drop(system);
    let after = std::thread::spawn(move || {
        let reply = futures::executor::block_on(actor.send(Echo(4)));
        let stopped = futures::executor::block_on(async {
            let exited = actor.exited();
            actor.kill();
            exited.await
        });
        (reply, stopped)
    });
    let (reply, exit) = after.join().unwrap();
    assert_eq!(reply.unwrap(), 4, "after the spawning arbiter stopped");
    assert_eq!(exit.signal(), Some(libc::SIGKILL));
}

#[test]
fn a_call_that_blocks_the_arbiter_reading_its_connection_still_gets_its_reply() {
    let system = actix_rt::System::new();
    let reply = system.block_on(async {
        let actor = peer().await;
        // Blocking the very thread whose reactor reads the connection: the watchdog moves the
        // connection to the I/O thread after a few tens of milliseconds.
        let reply = futures::executor::block_on(actor.send(Echo(5)));
        actor.kill();
        reply
    });
    assert_eq!(reply.unwrap(), 5);
}
