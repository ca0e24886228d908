//! The 16-byte header in front of every datagram, and its checks.
//!
//! | bytes | field | value |
//! |---|---|---|
//! | 0 | magic | `0xE5` |
//! | 1 | transport version | [`TRANSPORT_VERSION`] |
//! | 2 | body kind | 0: the frame follows inline; 1: the frame is in the last attached memfd; 2: a fast-lane switch-over (see [`lane`](super::lane)), at most 64 bytes inline |
//! | 3 | descriptors | how many descriptors the frame carries, not counting a body memfd |
//! | 4..8 | reserved | zero |
//! | 8..16 | length | the frame's length in bytes, little-endian |
//!
//! [`check`] is pure: it takes what `recvmsg` reported and says what the datagram holds, or
//! which rule it breaks. It is the part of the decoder a peer controls, and it is fuzzed.

use std::fmt;

/// The length of the header.
pub const HEADER_LEN: usize = 16;
/// The version of this framing. A peer that speaks another is refused.
pub const TRANSPORT_VERSION: u8 = 2;
const MAGIC: u8 = 0xE5;
const INLINE: u8 = 0;
const MEMFD: u8 = 1;
const LANE: u8 = 2;

/// How large a message may be, per connection.
///
/// # Examples
/// ```
/// use ensemble_runtime::transport::Limits;
/// let limits = Limits { max_message: 1 << 30 };
/// assert!(limits.max_message > Limits::default().max_message);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The largest frame (header and body, encoded) accepted in either direction. Default:
    /// 256 MiB.
    pub max_message: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_message: 256 << 20 }
    }
}

/// How a datagram that passed [`check`] carries its frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// The frame is the datagram after the header, `len` bytes.
    Inline {
        /// The frame's length.
        len: usize,
    },
    /// The frame is in the last attached descriptor, a memfd of `len` bytes.
    Memfd {
        /// The frame's length.
        len: u64,
    },
    /// A fast-lane switch-over of `len` bytes inline (an offer, or its answer: empty).
    Lane {
        /// The body's length.
        len: usize,
    },
}

/// A rule of the protocol that the peer broke. The connection is closed on the first.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// A datagram shorter than the header.
    #[error("a {0}-byte datagram is shorter than the frame header")]
    Short(usize),
    /// A datagram longer than any frame may be; its tail was cut off.
    #[error("a datagram longer than the largest inline frame")]
    Oversized,
    /// A zero-length record: never sent by ensemble.
    #[error("an empty record")]
    Empty,
    /// The header does not start with the magic byte.
    #[error("a frame header with magic byte {0:#04x}")]
    BadMagic(u8),
    /// Another version of the framing.
    #[error("transport version {theirs}, this process speaks {ours}")]
    WrongVersion {
        /// Ours.
        ours: u8,
        /// The peer's.
        theirs: u8,
    },
    /// An unknown body kind or non-zero reserved bytes.
    #[error("a frame header with unknown kind {kind} or reserved bits set")]
    BadHeader {
        /// The kind byte.
        kind: u8,
    },
    /// The header's length is not what arrived.
    #[error("the header announces {announced} bytes, the datagram holds {actual}")]
    LengthMismatch {
        /// From the header.
        announced: u64,
        /// What arrived.
        actual: u64,
    },
    /// A frame larger than this connection accepts.
    #[error("a {len}-byte frame is over this connection's limit of {limit} bytes")]
    TooLarge {
        /// From the header.
        len: u64,
        /// [`Limits::max_message`].
        limit: usize,
    },
    /// The number of descriptors attached is not what the header announces.
    #[error("the header announces {announced} descriptors, {received} arrived")]
    UnexpectedDescriptors {
        /// From the header (including a body memfd).
        announced: usize,
        /// Attached to the datagram.
        received: usize,
    },
    /// A body memfd that is not sealed, has another size, or cannot be mapped.
    #[error("a frame body: {0}")]
    Body(String),
    /// A frame or body that does not decode: structurally wrong bytes.
    #[error("a frame that does not decode: {0}")]
    Undecodable(String),
    /// A frame that is not allowed at this point (e.g. an unexpected header, a batch reply of
    /// the wrong length).
    #[error("an unexpected frame: {0}")]
    Unexpected(String),
    /// The peer closed its end of the connection but did not exit.
    #[error("the peer closed its connection without exiting")]
    ClosedWhileAlive,
    /// The peer wrote into the fast lane's ring what no correct peer writes (a slot length or a
    /// buffer index out of range), or switched over to the lane out of turn.
    #[error("the fast lane: {0}")]
    Lane(String),
    /// The child's events piled up unread past what the parent holds for it.
    #[error("{events} events ({bytes} bytes, {descriptors} descriptors) piled up unread, past the limit of {limit}")]
    EventsUnread {
        /// Events waiting.
        events: usize,
        /// Their bytes.
        bytes: usize,
        /// The descriptors attached to them.
        descriptors: usize,
        /// Which limit was passed, in words.
        limit: &'static str,
    },
}

/// Writes the header of a frame of `len` bytes carrying `fds` descriptors.
pub fn header(len: u64, in_memfd: bool, fds: u8) -> [u8; HEADER_LEN] {
    let mut header = [0u8; HEADER_LEN];
    header[0] = MAGIC;
    header[1] = TRANSPORT_VERSION;
    header[2] = if in_memfd { MEMFD } else { INLINE };
    header[3] = fds;
    header[8..].copy_from_slice(&len.to_le_bytes());
    header
}

/// Writes the header of a fast-lane switch-over of `len` bytes carrying `fds` descriptors.
pub(crate) fn lane_header(len: usize, fds: u8) -> [u8; HEADER_LEN] {
    let mut header = header(len as u64, false, fds);
    header[2] = LANE;
    header
}

/// Checks a received datagram: `datagram` is what arrived (at most the receive buffer),
/// `truncated` whether the kernel cut it, `fds` how many descriptors came with it.
///
/// # Errors
/// The [`ProtocolError`] the datagram commits; the first one found.
pub fn check(datagram: &[u8], truncated: bool, fds: usize, limits: Limits) -> Result<Layout, ProtocolError> {
    if truncated {
        return Err(ProtocolError::Oversized);
    }
    if datagram.is_empty() {
        return Err(ProtocolError::Empty);
    }
    let header: &[u8; HEADER_LEN] = datagram
        .get(..HEADER_LEN)
        .and_then(|h| h.try_into().ok())
        .ok_or(ProtocolError::Short(datagram.len()))?;
    if header[0] != MAGIC {
        return Err(ProtocolError::BadMagic(header[0]));
    }
    if header[1] != TRANSPORT_VERSION {
        return Err(ProtocolError::WrongVersion { ours: TRANSPORT_VERSION, theirs: header[1] });
    }
    if header[4..8] != [0; 4] || header[2] > LANE {
        return Err(ProtocolError::BadHeader { kind: header[2] });
    }
    let len = u64::from_le_bytes(header[8..].try_into().expect("8 bytes"));
    if len > limits.max_message as u64 {
        return Err(ProtocolError::TooLarge { len, limit: limits.max_message });
    }
    let in_memfd = header[2] == MEMFD;
    let announced = usize::from(header[3]) + usize::from(in_memfd);
    if announced != fds {
        return Err(ProtocolError::UnexpectedDescriptors { announced, received: fds });
    }
    let after = (datagram.len() - HEADER_LEN) as u64;
    if header[2] == LANE {
        return match len == after && len <= super::lane::MAX_LANE_BODY as u64 {
            true => Ok(Layout::Lane { len: after as usize }),
            false => Err(ProtocolError::LengthMismatch { announced: len, actual: after }),
        };
    }
    match in_memfd {
        false if len == 0 || len != after => {
            Err(ProtocolError::LengthMismatch { announced: len, actual: after })
        }
        false => Ok(Layout::Inline { len: after as usize }),
        true if after != 0 || len == 0 => {
            Err(ProtocolError::LengthMismatch { announced: len, actual: after })
        }
        true => Ok(Layout::Memfd { len }),
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Layout::Inline { len } => write!(f, "{len} bytes inline"),
            Layout::Memfd { len } => write!(f, "{len} bytes in a memfd"),
            Layout::Lane { len } => write!(f, "a fast-lane switch-over of {len} bytes"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMITS: Limits = Limits { max_message: 1 << 20 };

    fn datagram(header: [u8; HEADER_LEN], body: &[u8]) -> Vec<u8> {
        let mut d = header.to_vec();
        d.extend_from_slice(body);
        d
    }

    #[test]
    fn well_formed_datagrams_pass() {
        let inline = datagram(header(3, false, 0), b"abc");
        assert_eq!(check(&inline, false, 0, LIMITS), Ok(Layout::Inline { len: 3 }));
        let with_fds = datagram(header(1, false, 2), b"x");
        assert_eq!(check(&with_fds, false, 2, LIMITS), Ok(Layout::Inline { len: 1 }));
        assert_eq!(check(&header(5000, true, 1), false, 2, LIMITS), Ok(Layout::Memfd { len: 5000 }));
        assert_eq!(check(&lane_header(0, 0), false, 0, LIMITS), Ok(Layout::Lane { len: 0 }));
        let offer = datagram(lane_header(16, 4), &[0; 16]);
        assert_eq!(check(&offer, false, 4, LIMITS), Ok(Layout::Lane { len: 16 }));
        let huge = datagram(lane_header(65, 0), &[0; 65]);
        assert_eq!(
            check(&huge, false, 0, LIMITS),
            Err(ProtocolError::LengthMismatch { announced: 65, actual: 65 })
        );
    }

    /// Each malformed shape and the rule it breaks.
    #[test]
    fn malformed_datagrams_name_the_rule_they_break() {
        let good = header(3, false, 0);
        let with = |i: usize, v: u8| {
            let mut h = good;
            h[i] = v;
            datagram(h, b"abc")
        };
        let cases: Vec<(Vec<u8>, bool, usize, ProtocolError)> = vec![
            (vec![], false, 0, ProtocolError::Empty),
            (vec![0xE5, 1, 0], false, 0, ProtocolError::Short(3)),
            (datagram(good, b"abc"), true, 0, ProtocolError::Oversized),
            (with(0, 0), false, 0, ProtocolError::BadMagic(0)),
            (with(1, 9), false, 0, ProtocolError::WrongVersion { ours: TRANSPORT_VERSION, theirs: 9 }),
            (with(2, 7), false, 0, ProtocolError::BadHeader { kind: 7 }),
            (with(5, 1), false, 0, ProtocolError::BadHeader { kind: 0 }),
            (datagram(good, b"ab"), false, 0, ProtocolError::LengthMismatch { announced: 3, actual: 2 }),
            (
                datagram(header(0, false, 0), b""),
                false,
                0,
                ProtocolError::LengthMismatch { announced: 0, actual: 0 },
            ),
            (
                datagram(good, b"abc"),
                false,
                1,
                ProtocolError::UnexpectedDescriptors { announced: 0, received: 1 },
            ),
            (
                datagram(header(1 << 40, true, 0), b""),
                false,
                1,
                ProtocolError::TooLarge { len: 1 << 40, limit: 1 << 20 },
            ),
            (
                datagram(header(10, true, 0), b""),
                false,
                0,
                ProtocolError::UnexpectedDescriptors { announced: 1, received: 0 },
            ),
            (
                datagram(header(10, true, 0), b"x"),
                false,
                1,
                ProtocolError::LengthMismatch { announced: 10, actual: 1 },
            ),
        ];
        for (bytes, truncated, fds, expected) in cases {
            assert_eq!(check(&bytes, truncated, fds, LIMITS), Err(expected.clone()), "{bytes:?}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]
        /// Arbitrary bytes never panic, and whatever passes is consistent with what arrived.
        #[test]
        fn arbitrary_datagrams_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64), fds in 0usize..4) {
            match check(&bytes, false, fds, LIMITS) {
                Ok(Layout::Inline { len }) => prop_assert_eq!(len + HEADER_LEN, bytes.len()),
                Ok(Layout::Memfd { len }) => prop_assert!(len > 0 && len <= 1 << 20),
                Ok(Layout::Lane { len }) => prop_assert!(len + HEADER_LEN == bytes.len() && len <= 64),
                Err(_) => {}
            }
        }

        /// Headers that start right (magic and version) but carry arbitrary fields.
        #[test]
        fn arbitrary_headers_never_panic(rest in proptest::collection::vec(any::<u8>(), 14..40), fds in 0usize..300) {
            let mut bytes = vec![0xE5, TRANSPORT_VERSION];
            bytes.extend(rest);
            let _ = check(&bytes, false, fds, LIMITS);
        }
    }
}
