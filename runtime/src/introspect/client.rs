//! The client's side: finding the endpoints on this machine and asking them, with blocking
//! sockets and the same bounds as the server (a time limit, a size limit on the answer).

use super::{endpoint_name, Answer, ProcessInfo, CLIENT_TIMEOUT, MAX_ANSWER};
use std::io::{Read, Write};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixStream};

/// Why a process could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// Nothing listens on its endpoint (it exited, or serves none).
    #[error("cannot reach the endpoint of process {pid}")]
    Connect {
        /// The process asked.
        pid: u32,
        /// The connect error.
        #[source]
        source: std::io::Error,
    },
    /// The exchange failed or timed out (the process refused us, e.g. another user's).
    #[error("the endpoint of process {pid} did not answer")]
    Io {
        /// The process asked.
        pid: u32,
        /// The read or write error.
        #[source]
        source: std::io::Error,
    },
    /// The answer was not a JSON document we know, or was over [`MAX_ANSWER`].
    #[error("the endpoint of process {pid} answered something unreadable: {detail}")]
    Decode {
        /// The process asked.
        pid: u32,
        /// What was wrong.
        detail: String,
    },
    /// The process understood the request and refused it.
    #[error("process {pid} answered: {message}")]
    Refused {
        /// The process asked.
        pid: u32,
        /// Its reason.
        message: String,
    },
}

/// The pids of the processes that serve an endpoint on this machine (in this network
/// namespace), from the abstract names in `/proc/net/unix`, in increasing order.
///
/// # Errors
/// When `/proc/net/unix` cannot be read.
pub fn discover() -> std::io::Result<Vec<u32>> {
    let table = std::fs::read_to_string("/proc/net/unix")?;
    let mut pids: Vec<u32> = table
        .lines()
        .skip(1)
        .filter_map(|line| line.split_whitespace().nth(7))
        .filter_map(|path| path.strip_prefix("@ensemble-")?.parse().ok())
        .collect();
    pids.sort_unstable();
    pids.dedup();
    Ok(pids)
}

/// Asks process `pid` what it is and runs (`info`).
///
/// # Errors
/// A [`QueryError`]: unreachable, no answer within the time limit, or an unreadable answer.
pub fn query(pid: u32) -> Result<ProcessInfo, QueryError> {
    match ask(pid, "info")? {
        Answer::Info(info) => Ok(info),
        Answer::Error { message } => Err(QueryError::Refused { pid, message }),
        other => Err(QueryError::Decode { pid, detail: format!("{other:?} in answer to info") }),
    }
}

/// Asks process `owner` to stop its child `child` in order. Returns what the owner did; the
/// child may still be running `post_run` when this returns.
///
/// # Errors
/// As [`query`], and [`QueryError::Refused`] when `child` is not a live child of `owner`.
pub fn request_stop(owner: u32, child: u32) -> Result<String, QueryError> {
    match ask(owner, &format!("stop {child}"))? {
        Answer::Stopping { how, .. } => Ok(how),
        Answer::Error { message } => Err(QueryError::Refused { pid: owner, message }),
        other => Err(QueryError::Decode { pid: owner, detail: format!("{other:?} in answer to stop") }),
    }
}

fn ask(pid: u32, request: &str) -> Result<Answer, QueryError> {
    let io = |source| QueryError::Io { pid, source };
    let addr = SocketAddr::from_abstract_name(endpoint_name(pid).as_bytes())
        .map_err(|source| QueryError::Connect { pid, source })?;
    let mut stream = UnixStream::connect_addr(&addr).map_err(|source| QueryError::Connect { pid, source })?;
    stream.set_read_timeout(Some(CLIENT_TIMEOUT)).map_err(io)?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT)).map_err(io)?;
    stream.write_all(format!("{request}\n").as_bytes()).map_err(io)?;
    let mut bytes = Vec::new();
    stream.take(MAX_ANSWER as u64 + 1).read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() > MAX_ANSWER {
        return Err(QueryError::Decode { pid, detail: format!("more than {MAX_ANSWER} bytes") });
    }
    if bytes.is_empty() {
        let refused = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "closed without an answer");
        return Err(io(refused));
    }
    serde_json::from_slice(&bytes).map_err(|e| QueryError::Decode { pid, detail: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_answers_on_its_own_endpoint() {
        crate::introspect::serve();
        let pid = std::process::id();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !discover().unwrap().contains(&pid) {
            assert!(std::time::Instant::now() < deadline, "the endpoint never appeared");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let info = query(pid).unwrap();
        assert_eq!(info.pid, pid);
        assert!(matches!(request_stop(pid, u32::MAX - 1), Err(QueryError::Refused { .. })));
        assert!(matches!(ask(pid, "bogus"), Ok(Answer::Error { .. })));
    }

    #[test]
    fn a_pid_without_an_endpoint_cannot_be_reached() {
        assert!(matches!(query(u32::MAX - 3), Err(QueryError::Connect { .. })));
    }
}
