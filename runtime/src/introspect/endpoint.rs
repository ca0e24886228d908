//! The endpoint: an abstract `AF_UNIX` stream socket named `ensemble-<pid>`, served on the I/O
//! thread, one request line and one JSON answer per connection (see the contract in
//! [`crate::introspect`]).

use super::{registry, Answer, Role, CLIENT_TIMEOUT, MAX_CLIENTS, MAX_REQUEST};
use std::os::linux::net::SocketAddrExt;
use std::sync::{Arc, Once};
use std::time::Duration;
use tokio::net::{UnixListener, UnixStream};

/// Serves this process's endpoint, as the root of a program, from now on. Idempotent; a
/// failure to bind is logged (at debug level) and the process simply has no endpoint.
/// A child (which called [`serve_as_child`] at boot) stays a child.
pub fn serve() {
    start();
}

/// Serves this process's endpoint as a child named `name` running `actor`.
pub fn serve_as_child(name: &str, actor: &str) {
    registry::set_identity(Role::Child, name.to_owned(), Some(actor.to_owned()));
    start();
}

/// Whether a peer with uid `peer` may talk to a process running as uid `ours`: the same user,
/// or root (which could read our memory anyway).
pub fn peer_allowed(ours: u32, peer: u32) -> bool {
    peer == ours || peer == 0
}

fn start() {
    static STARTED: Once = Once::new();
    STARTED.call_once(|| {
        if std::env::var("ENSEMBLE_INTROSPECT").is_ok_and(|v| v == "off" || v == "0") {
            return;
        }
        match bind() {
            Ok(listener) => {
                crate::io_thread::handle().spawn(async move {
                    match UnixListener::from_std(listener) {
                        Ok(listener) => accept_loop(listener).await,
                        Err(e) => tracing::debug!("no introspection endpoint: {e}"),
                    }
                });
            }
            Err(e) => tracing::debug!("no introspection endpoint: {e}"),
        }
    });
}

/// Binds `ensemble-<pid>` in the abstract namespace (close-on-exec, as std makes every socket).
fn bind() -> std::io::Result<std::os::unix::net::UnixListener> {
    let name = super::endpoint_name(std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
    let listener = std::os::unix::net::UnixListener::bind_addr(&addr)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

async fn accept_loop(listener: UnixListener) {
    let busy = Arc::new(tokio::sync::Semaphore::new(MAX_CLIENTS));
    let ours = rustix::process::getuid().as_raw();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors, most likely: wait instead of spinning.
                tracing::debug!("introspection endpoint: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&busy).try_acquire_owned() else { continue };
        tokio::spawn(async move {
            let _ = tokio::time::timeout(CLIENT_TIMEOUT, client(stream, ours)).await;
            drop(permit);
        });
    }
}

/// One client: checked, read, answered, closed.
async fn client(stream: UnixStream, ours: u32) -> std::io::Result<()> {
    let peer = stream.peer_cred()?;
    if !peer_allowed(ours, peer.uid()) {
        tracing::warn!(uid = peer.uid(), pid = ?peer.pid(), "introspection endpoint: refused a peer of another user");
        return Ok(());
    }
    let line = read_line(&stream).await?;
    let answer = match parse(&line) {
        Ok(Request::Info) => Answer::Info(registry::snapshot()),
        Ok(Request::Stop(pid)) => registry::stop(pid),
        Err(message) => Answer::Error { message },
    };
    let mut bytes = serde_json::to_vec(&answer).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    write_all(&stream, &bytes).await
}

#[derive(Debug, PartialEq, Eq)]
enum Request {
    Info,
    Stop(u32),
}

fn parse(line: &[u8]) -> Result<Request, String> {
    let text = std::str::from_utf8(line).map_err(|_| "the request is not UTF-8".to_owned())?;
    let mut words = text.split_whitespace();
    match (words.next(), words.next(), words.next()) {
        (Some("info"), None, None) => Ok(Request::Info),
        (Some("stop"), Some(pid), None) => {
            pid.parse().map(Request::Stop).map_err(|_| format!("{pid:?} is not a pid"))
        }
        _ => Err(format!("unknown request {:?}: expected `info` or `stop <pid>`", text.trim_end())),
    }
}

/// Reads up to the first newline (or end of stream), at most `MAX_REQUEST` bytes.
async fn read_line(stream: &UnixStream) -> std::io::Result<Vec<u8>> {
    let mut buf = [0u8; MAX_REQUEST];
    let mut len = 0;
    while len < buf.len() && !buf[..len].contains(&b'\n') {
        stream.readable().await?;
        match stream.try_read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    let end = buf[..len].iter().position(|&b| b == b'\n').unwrap_or(len);
    Ok(buf[..end].to_vec())
}

async fn write_all(stream: &UnixStream, mut bytes: &[u8]) -> std::io::Result<()> {
    while !bytes.is_empty() {
        stream.writable().await?;
        match stream.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_own_user_and_root_are_answered() {
        assert!(peer_allowed(1000, 1000));
        assert!(peer_allowed(1000, 0));
        assert!(!peer_allowed(1000, 1001));
        assert!(!peer_allowed(0, 1000));
    }

    #[test]
    fn requests_parse_or_say_why_not() {
        let cases: [(&[u8], Result<Request, &str>); 6] = [
            (b"info", Ok(Request::Info)),
            (b"info\r", Ok(Request::Info)),
            (b"stop 42", Ok(Request::Stop(42))),
            (b"stop -1", Err("is not a pid")),
            (b"stop 1 2", Err("unknown request")),
            (b"\xff", Err("not UTF-8")),
        ];
        for (line, expected) in cases {
            match (parse(line), expected) {
                (Ok(got), Ok(want)) => assert_eq!(got, want),
                (Err(got), Err(want)) => assert!(got.contains(want), "{got}"),
                (got, want) => panic!("{line:?}: {got:?} instead of {want:?}"),
            }
        }
    }
}
