//! The wire format: the frames a parent and its child exchange over their [`crate::transport`].
//!
//! A frame is a 9-byte prefix (a flags byte and a little-endian
//! hand-over id, see [`crate::shm::handover`]), a bincode-encoded header, and directly after it
//! a bincode-encoded body. The prefix is written after the body, once it is known whether the
//! body holds segment handles. Keeping the body outside the header lets the runtime route frames
//! without knowing the user's types, and lets the typed layer encode a message straight into
//! the frame buffer (one copy, no intermediate `Vec`).
//!
//! | header | body | direction |
//! |---|---|---|
//! | [`ToChild::Start`] | the actor's initial state | parent → child, first frame |
//! | [`ToChild::Call`] | the message; a reply is expected | parent → child |
//! | [`ToChild::Cast`] | the message; no reply | parent → child |
//! | [`ToChild::Stop`] | empty | parent → child |
//! | [`ToParent::Ready`] | empty | child → parent, once, after `pre_run` |
//! | [`ToParent::StartFailed`] | a [`Failure`] | child → parent, instead of `Ready` |
//! | [`ToParent::Reply`] | the reply value, or a [`Failure`] when `ok` is false | child → parent |
//! | [`ToParent::Event`] | the event | child → parent |
//! | [`ToChild::Ack`], [`ToParent::Ack`] | empty | the receiver of a hand-over, once it holds the segments |

use crate::shm::transfer::{self, Hold};
use crate::transport::{FrameBuf, Limits};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::os::fd::OwnedFd;

/// Header of a frame sent from the parent to the child.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToChild {
    /// Run the actor registered under `actor`, with the process name `name`.
    Start {
        /// The registry key of the actor type.
        actor: String,
        /// The process name given at spawn.
        name: String,
    },
    /// Handle a message and reply with the same `id`.
    Call {
        /// Matches the reply to its caller.
        id: u64,
        /// Which of the actor's handlers receives the body.
        tag: u32,
    },
    /// Handle a message; no reply.
    Cast {
        /// Which of the actor's handlers receives the body.
        tag: u32,
    },
    /// Run `post_run` and exit with status 0.
    Stop,
    /// The parent holds the segments of the child's hand-over `transfer`.
    Ack {
        /// The hand-over acknowledged.
        transfer: u64,
    },
}

/// Header of a frame sent from the child to the parent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToParent {
    /// The actor's `pre_run` succeeded; calls may flow.
    Ready,
    /// The actor could not start; the body is a [`Failure`].
    StartFailed,
    /// The answer to the call `id`: the reply value when `ok`, else a [`Failure`].
    Reply {
        /// The id of the call answered.
        id: u64,
        /// Whether the body is the reply value (`true`) or a [`Failure`] (`false`).
        ok: bool,
    },
    /// An event pushed by the backend.
    Event,
    /// Log lines of the child (the body is a [`LogBatch`](crate::logs::LogBatch)).
    Logs,
    /// The child holds the segments of the parent's hand-over `transfer`.
    Ack {
        /// The hand-over acknowledged.
        transfer: u64,
    },
}

/// A header that can acknowledge a hand-over.
pub trait AckHeader: Serialize {
    /// The acknowledgement of hand-over `transfer`.
    fn ack(transfer: u64) -> Self;
}

impl AckHeader for ToChild {
    fn ack(transfer: u64) -> Self {
        ToChild::Ack { transfer }
    }
}

impl AckHeader for ToParent {
    fn ack(transfer: u64) -> Self {
        ToParent::Ack { transfer }
    }
}

/// Length of the frame prefix: flags (1 byte) and hand-over id (8 bytes).
const PREFIX: usize = 9;
/// Flag: the body holds segment handles; the receiver must acknowledge.
const CARRIES_SEGMENTS: u8 = 1;
/// Flag: the frame acknowledges the hand-over in the prefix (its header is an `Ack`), so that a
/// receiving thread can handle it from the prefix alone, without decoding the header.
const ACKNOWLEDGES: u8 = 2;

/// An encoded frame, with the holds on the segments its body hands over.
#[derive(Debug)]
pub struct Encoded {
    /// The frame: in memory, or spilled to a memfd when larger than one datagram.
    pub frame: FrameBuf,
    /// Segments the sender must keep until the receiver acknowledges.
    pub holds: Vec<Hold>,
}

impl Encoded {
    /// Whether the frame hands over segments.
    pub fn carries_segments(&self) -> bool {
        !self.holds.is_empty()
    }

    /// Marks the frame as hand-over `transfer`.
    ///
    /// # Errors
    /// When the prefix of a spilled frame cannot be written.
    pub fn set_transfer(&mut self, transfer: u64) -> std::io::Result<()> {
        self.frame.patch_start(&prefix(CARRIES_SEGMENTS, transfer))
    }

    /// Marks the frame as the acknowledgement of hand-over `transfer`.
    ///
    /// # Errors
    /// When the prefix of a spilled frame cannot be written.
    pub fn set_acknowledges(&mut self, transfer: u64) -> std::io::Result<()> {
        self.frame.patch_start(&prefix(ACKNOWLEDGES, transfer))
    }
}

fn prefix(flags: u8, transfer: u64) -> [u8; PREFIX] {
    let mut prefix = [0u8; PREFIX];
    prefix[0] = flags;
    prefix[1..].copy_from_slice(&transfer.to_le_bytes());
    prefix
}

/// Why a handler or hook in the child did not produce a value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Failure {
    /// The code panicked.
    Panicked {
        /// The panic payload, when it was a string.
        message: String,
        /// Where it panicked: the panic location and the backtrace captured in the child.
        backtrace: String,
    },
    /// The child could not decode what it was sent.
    Decode {
        /// What was being decoded.
        what: String,
        /// The decoder's complaint.
        detail: String,
    },
    /// A hook returned an error.
    Error {
        /// The error's Display, with its sources.
        message: String,
    },
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Panicked { message, .. } => write!(f, "panicked: {message}"),
            Failure::Decode { what, detail } => write!(f, "could not decode {what}: {detail}"),
            Failure::Error { message } => f.write_str(message),
        }
    }
}

/// A failure is an error of its own: its causes live in another process, as text.
impl std::error::Error for Failure {}

/// A frame or body that could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The value's own `Serialize` or `Deserialize` refused it (a custom validation, an
    /// unknown variant name), or the bytes are malformed (see [`WireError::is_malformed`]).
    #[error("{0}")]
    Value(#[from] bincode::Error),
    /// The value was decoded and bytes were left over.
    #[error("{0} unexpected bytes after the value")]
    Trailing(usize),
    /// The frame is shorter than its prefix.
    #[error("a frame shorter than its prefix")]
    Short,
    /// The frame grew past the connection's message limit while it was encoded.
    #[error("a message of {len} bytes or more is over the limit of {limit} bytes (see max_message_size)")]
    TooLarge {
        /// How many bytes were encoded before the limit was passed.
        len: u64,
        /// The limit.
        limit: usize,
    },
}

impl WireError {
    /// Whether the bytes themselves are malformed (lengths past the end, bad tags, invalid
    /// UTF-8, leftovers), as opposed to a well-formed value that a type's own `Deserialize`
    /// rejected. Between two processes of one build, malformed bytes mean the peer broke the
    /// protocol.
    pub fn is_malformed(&self) -> bool {
        match self {
            WireError::Value(e) => !matches!(**e, bincode::ErrorKind::Custom(_)),
            WireError::Trailing(_) | WireError::Short => true,
            WireError::TooLarge { .. } => false,
        }
    }
}

fn options() -> impl bincode::Options {
    use bincode::Options;
    bincode::DefaultOptions::new().with_fixint_encoding().allow_trailing_bytes()
}

/// Encodes `header` followed by `body` into one frame, with the default [`Limits`].
///
/// # Errors
/// When a value's `Serialize` impl fails (e.g. a map with non-string keys is fine, a custom impl
/// that returns an error is not), or the frame is over the limit.
///
/// # Examples
/// ```
/// use ensemble_runtime::wire::{self, ToChild};
/// let encoded = wire::encode(&ToChild::Cast { tag: 3 }, &"hello")?;
/// let frame = encoded.frame.inline().expect("small frames stay in memory");
/// let (header, body) = wire::decode::<ToChild>(frame)?;
/// assert_eq!(header, ToChild::Cast { tag: 3 });
/// assert_eq!(wire::decode_body::<String>(body)?, "hello");
/// # Ok::<(), wire::WireError>(())
/// ```
pub fn encode<H: Serialize, B: Serialize + ?Sized>(header: &H, body: &B) -> Result<Encoded, WireError> {
    encode_into(FrameBuf::new(Limits::default()), header, body)
}

/// Encodes `header` followed by `body` into `frame` (see [`crate::transport::Link::frame_buf`]).
///
/// # Errors
/// As [`encode`], with the frame's own limit.
pub fn encode_into<H: Serialize, B: Serialize + ?Sized>(
    mut frame: FrameBuf,
    header: &H,
    body: &B,
) -> Result<Encoded, WireError> {
    use bincode::Options;
    let mut write = || -> Result<(), bincode::Error> {
        std::io::Write::write_all(&mut frame, &[0; PREFIX]).map_err(bincode::Error::from)?;
        options().serialize_into(&mut frame, header)?;
        options().serialize_into(&mut frame, body)
    };
    let (written, holds) = transfer::collecting_holds(&mut write);
    match written {
        Ok(()) => Ok(Encoded { frame, holds }),
        Err(_) if frame.over_limit() => Err(too_large(&frame)),
        Err(e) => Err(WireError::Value(e)),
    }
}

fn too_large(frame: &FrameBuf) -> WireError {
    match frame.too_large() {
        crate::transport::LinkSendError::TooLarge { len, limit } => WireError::TooLarge { len, limit },
        _ => unreachable!("too_large is always TooLarge"),
    }
}

/// Encodes `header` followed by a body that is encoded already (see [`encode_body`]).
///
/// # Errors
/// When the header does not encode, or the frame is over the limit.
pub fn encode_with_raw_body<H: Serialize>(
    mut frame: FrameBuf,
    header: &H,
    body: &[u8],
) -> Result<FrameBuf, WireError> {
    use bincode::Options;
    use std::io::Write;
    let written = frame
        .write_all(&[0; PREFIX])
        .map_err(bincode::Error::from)
        .and_then(|()| options().serialize_into(&mut frame, header))
        .and_then(|()| frame.write_all(body).map_err(bincode::Error::from));
    match written {
        Ok(()) => Ok(frame),
        Err(_) if frame.over_limit() => Err(too_large(&frame)),
        Err(e) => Err(WireError::Value(e)),
    }
}

/// Encodes a value on its own, as the body of a `Start` frame is.
///
/// # Errors
/// When the value's `Serialize` impl fails.
pub fn encode_body<B: Serialize + ?Sized>(body: &B) -> Result<(Vec<u8>, Vec<Hold>), WireError> {
    use bincode::Options;
    let (bytes, holds) = transfer::collecting_holds(|| options().serialize(body));
    Ok((bytes?, holds))
}

/// Splits a frame into its decoded header and the still-encoded body.
///
/// # Errors
/// When the frame does not start with a valid header. No length in it can make this allocate
/// more than the frame's own size.
pub fn decode<H: DeserializeOwned>(frame: &[u8]) -> Result<(H, &[u8]), WireError> {
    use bincode::Options;
    let mut rest = frame.get(PREFIX..).ok_or(WireError::Short)?;
    let header = options().with_limit(rest.len() as u64).deserialize_from(&mut rest)?;
    Ok((header, rest))
}

/// The hand-over a frame carries, if its body holds segment handles.
pub fn transfer_of(frame: &[u8]) -> Option<u64> {
    prefixed(frame, CARRIES_SEGMENTS)
}

/// The hand-over a frame acknowledges, if it is an acknowledgement. Reads the prefix only.
pub fn acknowledgement_of(frame: &[u8]) -> Option<u64> {
    prefixed(frame, ACKNOWLEDGES)
}

fn prefixed(frame: &[u8], flag: u8) -> Option<u64> {
    match frame.get(..PREFIX) {
        Some([f, id @ ..]) if *f == flag => Some(u64::from_le_bytes(id.try_into().ok()?)),
        _ => None,
    }
}

/// Decodes a body that carries no descriptors, requiring that it is consumed whole. A segment
/// handle in it is an error (its descriptor is missing).
///
/// No length in the body can make this allocate more than the body's own size: a string that
/// claims a terabyte is an error, not an allocation.
///
/// # Errors
/// When the bytes are not a valid `T`, or hold more than one.
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, WireError> {
    decode_body_with(body, Vec::new())
}

/// Decodes a body with the descriptors attached to its frame: segment handles in it adopt
/// them and are held; the caller acknowledges the frame's hand-over afterwards (see
/// [`transfer_of`]). Descriptors no handle names are closed.
///
/// # Errors
/// As [`decode_body`], and when a segment handle's descriptor is missing or not a segment of
/// the right seals and size.
pub fn decode_body_with<T: DeserializeOwned>(body: &[u8], fds: Vec<OwnedFd>) -> Result<T, WireError> {
    decode_body_counted(body, fds).map(|(value, _)| value)
}

/// As [`decode_body_with`], and also the number of `fds` that no handle in the value named.
pub(crate) fn decode_body_counted<T: DeserializeOwned>(
    body: &[u8],
    fds: Vec<OwnedFd>,
) -> Result<(T, usize), WireError> {
    use bincode::Options;
    let mut rest = body;
    let limited = options().with_limit(body.len() as u64);
    let (value, _opened, unnamed) = transfer::receiving_counted(fds, || limited.deserialize_from(&mut rest));
    let value = value?;
    if rest.is_empty() {
        Ok((value, unnamed))
    } else {
        Err(WireError::Trailing(rest.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip<H, B>(header: H, body: B)
    where
        H: Serialize + DeserializeOwned + PartialEq + fmt::Debug,
        B: Serialize + DeserializeOwned + PartialEq + fmt::Debug,
    {
        let frame = encode(&header, &body).unwrap().frame;
        let (h, rest) = decode::<H>(frame.inline().unwrap()).unwrap();
        assert_eq!(h, header);
        assert_eq!(decode_body::<B>(rest).unwrap(), body);
    }

    #[test]
    fn every_header_roundtrips_with_its_body() {
        roundtrip(ToChild::Start { actor: "a::B".into(), name: "b".into() }, vec![1u8, 2, 3]);
        roundtrip(ToChild::Call { id: u64::MAX, tag: 7 }, (1u32, "x".to_string()));
        roundtrip(ToChild::Cast { tag: 0 }, ());
        roundtrip(ToChild::Stop, ());
        roundtrip(ToParent::Ready, ());
        roundtrip(ToParent::Reply { id: 9, ok: true }, 42u64);
        roundtrip(
            ToParent::Reply { id: 9, ok: false },
            Failure::Panicked { message: "boom".into(), backtrace: "at x".into() },
        );
        roundtrip(ToParent::StartFailed, Failure::Error { message: "no".into() });
        roundtrip(ToParent::Event, Some(1.5f64));
        roundtrip(ToChild::Ack { transfer: 3 }, ());
        roundtrip(ToParent::Ack { transfer: 4 }, ());
    }

    #[test]
    fn a_raw_body_is_appended_as_is() {
        let (body, _) = encode_body(&(7u16, "state")).unwrap();
        let frame = encode_with_raw_body(FrameBuf::new(Limits::default()), &ToChild::Stop, &body).unwrap();
        let (_, rest) = decode::<ToChild>(frame.inline().unwrap()).unwrap();
        assert_eq!(decode_body::<(u16, String)>(rest).unwrap(), (7, "state".to_string()));
    }

    #[test]
    fn a_truncated_frame_is_an_error_not_a_panic() {
        let encoded = encode(&ToChild::Call { id: 1, tag: 2 }, &12345u64).unwrap();
        let frame = encoded.frame.inline().unwrap();
        for cut in 0..frame.len() {
            let bad = &frame[..cut];
            let ok = decode::<ToChild>(bad).and_then(|(_, body)| decode_body::<u64>(body));
            assert!(ok.is_err(), "cut at {cut} decoded");
        }
    }

    #[test]
    fn a_frame_without_segments_carries_no_transfer() {
        let mut encoded = encode(&ToChild::Stop, &()).unwrap();
        assert!(!encoded.carries_segments());
        assert_eq!(transfer_of(encoded.frame.inline().unwrap()), None);
        encoded.set_transfer(42).unwrap();
        let frame = encoded.frame.inline().unwrap();
        assert_eq!(transfer_of(frame), Some(42));
        assert_eq!(acknowledgement_of(frame), None);
        assert_eq!(decode::<ToChild>(frame).unwrap().0, ToChild::Stop);
    }

    #[test]
    fn an_acknowledgement_is_known_from_its_prefix() {
        let mut encoded = encode(&ToChild::ack(7), &()).unwrap();
        encoded.set_acknowledges(7).unwrap();
        let frame = encoded.frame.inline().unwrap();
        assert_eq!(acknowledgement_of(frame), Some(7));
        assert_eq!(transfer_of(frame), None);
        assert_eq!(decode::<ToChild>(frame).unwrap().0, ToChild::Ack { transfer: 7 });
    }

    #[test]
    fn garbage_headers_are_rejected() {
        assert!(decode::<ToChild>(&[0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(decode::<ToParent>(&[]).is_err());
    }

    #[test]
    fn trailing_bytes_in_a_body_are_rejected() {
        let err = decode_body::<u8>(&[1, 2]).unwrap_err();
        assert!(err.to_string().contains("1 unexpected bytes"), "{err}");
        assert!(err.is_malformed());
    }

    #[test]
    fn a_handle_is_adopted_from_its_descriptor_and_refused_without_it() {
        use crate::shm::{SegmentError, SharedSliceMut};
        let slice = SharedSliceMut::<u8>::from_slice(b"in shared memory").unwrap();
        let encoded = encode(&ToChild::Cast { tag: 1 }, &slice).unwrap();
        assert_eq!(encoded.holds.len(), 1);
        let (_, body) = decode::<ToChild>(encoded.frame.inline().unwrap()).unwrap();
        let fd = || encoded.holds[0].fd().try_clone_to_owned().unwrap();
        let missing = SegmentError::MissingDescriptor.to_string();
        let error = decode_body::<SharedSliceMut<u8>>(body).unwrap_err().to_string();
        assert!(error.contains(&missing), "{error}");
        // With its descriptor, even while a frame without any is being decoded.
        let (adopted, bare) = transfer::receiving_counted(Vec::new(), || {
            let adopted = decode_body_with::<SharedSliceMut<u8>>(body, vec![fd()]).unwrap();
            (adopted, decode_body::<SharedSliceMut<u8>>(body).map(drop))
        })
        .0;
        assert_eq!(&adopted[..], b"in shared memory");
        assert!(bare.unwrap_err().to_string().contains(&missing));
        // And without, while a frame with descriptors is being decoded.
        let nested =
            transfer::receiving_counted(vec![fd()], || decode_body::<SharedSliceMut<u8>>(body).map(drop)).0;
        assert!(nested.unwrap_err().to_string().contains(&missing));
    }

    #[test]
    fn lengths_that_lie_are_errors_not_allocations() {
        // A string, a byte vector and a vector of strings claiming about a terabyte each.
        let claim = (1u64 << 40).to_le_bytes();
        for body in [claim.to_vec(), [claim.to_vec(), vec![b'x'; 8]].concat()] {
            let string = decode_body::<String>(&body).unwrap_err();
            assert!(string.is_malformed(), "{string}");
            assert!(decode_body::<Vec<u8>>(&body).unwrap_err().is_malformed());
            assert!(decode_body::<Vec<String>>(&body).unwrap_err().is_malformed());
        }
        let mut frame = vec![0u8; PREFIX];
        frame.extend_from_slice(&[0, 0, 0, 0]); // ToChild::Start
        frame.extend_from_slice(&claim);
        assert!(decode::<ToChild>(&frame).unwrap_err().is_malformed());
    }

    #[test]
    fn a_value_its_type_rejects_is_not_malformed() {
        #[derive(Debug, Deserialize)]
        #[serde(try_from = "u8")]
        struct Even(#[allow(dead_code)] u8);
        impl TryFrom<u8> for Even {
            type Error = String;
            fn try_from(n: u8) -> Result<Self, String> {
                if n.is_multiple_of(2) {
                    Ok(Even(n))
                } else {
                    Err(format!("{n} is odd"))
                }
            }
        }
        let err = decode_body::<Even>(&[3]).unwrap_err();
        assert!(!err.is_malformed(), "{err}");
    }

    #[test]
    fn a_frame_over_the_limit_stops_encoding_and_names_the_limit() {
        let limits = Limits { max_message: 1000 };
        let err =
            encode_into(FrameBuf::new(limits), &ToChild::Cast { tag: 0 }, &vec![0u8; 5000]).unwrap_err();
        match err {
            WireError::TooLarge { len, limit } => assert_eq!((len <= 1000, limit), (true, 1000)),
            other => panic!("expected TooLarge, got {other:?}"),
        }
    }

    #[test]
    fn a_frame_larger_than_a_datagram_spills_to_a_memfd_with_its_prefix() {
        let big = vec![7u8; crate::transport::inline_max() + 1];
        let mut encoded = encode(&ToChild::Cast { tag: 1 }, &big).unwrap();
        assert!(encoded.frame.inline().is_none());
        encoded.set_transfer(9).unwrap();
        assert!(encoded.frame.len() > big.len() as u64);
    }

    mod fuzz {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(20_000))]
            /// Arbitrary bytes as any frame or body the parent receives: never a panic.
            #[test]
            fn arbitrary_bytes_never_panic_any_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..96)) {
                let _ = decode::<ToParent>(&bytes);
                let _ = decode::<ToChild>(&bytes);
                let _ = decode_body::<Failure>(&bytes);
                let _ = decode_body::<String>(&bytes);
                let _ = decode_body::<Vec<Result<String, Failure>>>(&bytes);
                let _ = decode_body::<(u32, crate::BuildId, u32)>(&bytes);
                let _ = transfer_of(&bytes);
                let _ = acknowledgement_of(&bytes);
            }
        }
    }
}
