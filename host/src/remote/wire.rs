//! The out-of-process wire protocol: length-prefixed postcard frames over a local socket.
//!
//! Every frame is a little-endian `u32` payload length followed by the payload, a postcard
//! encoding of an [`Envelope`]. The client sends one request and reads one response per
//! connection at a time; the request id is echoed so that a confused stream is detected rather
//! than answered wrongly. A connection opens with [`Request::Hello`], which carries
//! [`WIRE_VERSION`]; a runner speaking another version answers with an error and closes.
//! Frames are bounded by [`MAX_FRAME`]; a malformed or oversized frame closes the connection.
//!
//! **Architecture Invariant:** these are the only serializable types of the host: if a type is
//! serializable, it is part of this process boundary.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

/// The version of this wire format; bumped on any change to the types below.
pub(crate) const WIRE_VERSION: u32 = 2;

/// The name of this wire format in the runner's handshake line.
pub(crate) const WIRE_NAME: &str = "calcplug-postcard";

/// The largest frame either side accepts: a batch of one million operations is about 18 MB.
pub(crate) const MAX_FRAME: usize = 64 << 20;

/// A request or a response, with the id that pairs them.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Envelope<T> {
    pub(crate) id: u64,
    pub(crate) body: T,
}

/// What the host asks of the runner.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Request {
    /// The first request on every connection.
    Hello {
        wire_version: u32,
    },
    Metadata,
    Initialize(Vec<(String, String)>),
    Shutdown,
    Status,
    /// `op(a, b)`, `op` an `OpCode` number.
    Call {
        op: u8,
        a: f64,
        b: f64,
    },
    /// A whole batch: `(op, a, b)` items.
    Batch(Vec<(u8, f64, f64)>),
    SetAngleUnit(u8),
    AngleUnit,
    /// Asks to move this connection to a shared-memory lane of `bytes` bytes: the runner
    /// answers `Done`, the host then sends the lane's memfd (`SCM_RIGHTS`), and the runner
    /// answers `Done` again once it mapped it; from then on the connection's calls go through
    /// the lane (`remote/shm.rs`). A runner that cannot answers an error and stays on the socket.
    AttachLane {
        bytes: u64,
    },
}

/// What the runner answers.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Response {
    Hello(Hello),
    Metadata(WireMetadata),
    Done,
    Value(f64),
    Status(WireStatus),
    /// One `(error code or 0, value)` per batch item.
    Batch(Vec<(u8, f64)>),
    AngleUnit(u8),
    /// The plugin (or the runner) refused the request.
    Error {
        code: u8,
        message: String,
    },
}

/// The runner's answer to [`Request::Hello`]: what it is serving.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Hello {
    pub(crate) wire_version: u32,
    pub(crate) interface_version: String,
    pub(crate) extensions: Vec<String>,
    pub(crate) pid: u32,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct WireMetadata {
    pub(crate) name: String,
    pub(crate) version: String,
    pub(crate) description: String,
    pub(crate) operations: Vec<String>,
    /// `(key, default, description)`
    pub(crate) config: Vec<(String, String, String)>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct WireStatus {
    pub(crate) state: u8,
    pub(crate) message: String,
    pub(crate) started_at_unix_nanos: Option<u64>,
    pub(crate) uptime_nanos: u64,
    pub(crate) request_count: u64,
    pub(crate) average_latency_nanos: Option<u64>,
}

impl WireMetadata {
    /// The metadata this answer carries.
    pub(crate) fn into_metadata(self) -> interface::Metadata {
        interface::Metadata {
            name: self.name,
            version: self.version,
            description: self.description,
            operations: self.operations,
            config: self
                .config
                .into_iter()
                .map(|(key, default, description)| interface::ConfigKey {
                    key,
                    default,
                    description,
                })
                .collect(),
        }
    }
}

impl WireStatus {
    /// The status this answer carries (an unknown state reads as `Error`).
    pub(crate) fn into_status(self) -> interface::Status {
        use std::time::{Duration, UNIX_EPOCH};
        interface::Status {
            state: interface::PluginState::from_u8(self.state)
                .unwrap_or(interface::PluginState::Error),
            message: self.message,
            started_at: self
                .started_at_unix_nanos
                .map(|nanos| UNIX_EPOCH + Duration::from_nanos(nanos)),
            uptime: Duration::from_nanos(self.uptime_nanos),
            request_count: self.request_count,
            average_latency: self.average_latency_nanos.map(Duration::from_nanos),
        }
    }
}

/// The batch answer `answers` (code 0 and a value, or an error code) into `results`.
pub(crate) fn fill_batch(results: &mut [interface::BatchResult], answers: Vec<(u8, f64)>) {
    use interface::{BatchResult, ErrorCode};
    for (slot, (code, value)) in results.iter_mut().zip(answers) {
        *slot = match code {
            0 => BatchResult::ok(value),
            raw => BatchResult::err(ErrorCode::from_u8(raw).unwrap_or(ErrorCode::Internal)),
        };
    }
}

/// Why a frame could not be read.
#[derive(Debug)]
pub(crate) enum FrameError {
    /// The peer closed the connection (cleanly or not).
    Closed,
    /// The socket failed, or timed out (`WouldBlock`/`TimedOut`).
    Io(io::Error),
    /// The bytes are not a valid frame.
    Malformed(String),
}

/// A message of the protocol: [`Request`] or [`Response`].
///
/// The one message a single call sends each way ([`Request::Call`], [`Response::Value`]) has a
/// hand-written codec that produces and accepts exactly postcard's bytes (the tests check both
/// directions), so a call skips serde's generic machinery on both sides. Every other message,
/// and any frame the fast decoder does not recognize, goes through postcard.
pub(crate) trait Message: Serialize + for<'de> Deserialize<'de> {
    /// Appends the postcard bytes of `Envelope { id, body: self }` to `buf` if this is the
    /// fast-path message.
    fn encode_fast(&self, id: u64, buf: &mut Vec<u8>) -> bool;
    /// Decodes `payload` if it is the fast-path message, exactly as postcard would.
    fn decode_fast(payload: &[u8]) -> Option<Envelope<Self>>;
}

/// Postcard's tag (variant index) of [`Request::Call`].
const CALL_TAG: u8 = 5;
/// Postcard's tag (variant index) of [`Response::Value`].
const VALUE_TAG: u8 = 3;

impl Message for Request {
    #[inline]
    fn encode_fast(&self, id: u64, buf: &mut Vec<u8>) -> bool {
        let Request::Call { op, a, b } = *self else { return false };
        let mut body = [0; 18];
        body[..2].copy_from_slice(&[CALL_TAG, op]);
        body[2..10].copy_from_slice(&a.to_le_bytes());
        body[10..].copy_from_slice(&b.to_le_bytes());
        put_envelope(buf, id, &body);
        true
    }

    #[inline]
    fn decode_fast(payload: &[u8]) -> Option<Envelope<Request>> {
        let (id, rest) = take_varint(payload)?;
        let (&[CALL_TAG, op], rest) = rest.split_first_chunk::<2>()? else { return None };
        let (a, rest) = rest.split_first_chunk::<8>()?;
        let (b, _) = rest.split_first_chunk::<8>()?;
        let (a, b) = (f64::from_le_bytes(*a), f64::from_le_bytes(*b));
        Some(Envelope { id, body: Request::Call { op, a, b } })
    }
}

impl Message for Response {
    #[inline]
    fn encode_fast(&self, id: u64, buf: &mut Vec<u8>) -> bool {
        let Response::Value(value) = *self else { return false };
        let mut body = [VALUE_TAG; 9];
        body[1..].copy_from_slice(&value.to_le_bytes());
        put_envelope(buf, id, &body);
        true
    }

    #[inline]
    fn decode_fast(payload: &[u8]) -> Option<Envelope<Response>> {
        let (id, rest) = take_varint(payload)?;
        let (&[VALUE_TAG], rest) = rest.split_first_chunk::<1>()? else { return None };
        let (value, _) = rest.split_first_chunk::<8>()?;
        Some(Envelope { id, body: Response::Value(f64::from_le_bytes(*value)) })
    }
}

/// Appends an envelope of the fast-path messages: `id` as postcard's varint (LEB128: 7 bits a
/// byte, least significant first), then `body` (at most 18 bytes), in one copy.
#[inline]
fn put_envelope(buf: &mut Vec<u8>, id: u64, body: &[u8]) {
    let mut bytes = [0; 10 + 18];
    let (mut n, mut id) = (0, id);
    while id >= 0x80 {
        bytes[n] = id as u8 | 0x80;
        id >>= 7;
        n += 1;
    }
    bytes[n] = id as u8;
    n += 1;
    bytes[n..n + body.len()].copy_from_slice(body);
    buf.extend_from_slice(&bytes[..n + body.len()]);
}

/// Reads a varint of at most 9 bytes (values below 2^63) and returns it with the bytes after
/// it; `None` for anything else, which the general decoder then handles.
#[inline]
fn take_varint(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let mut value = 0u64;
    for (i, byte) in bytes.iter().take(9).enumerate() {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, &bytes[i + 1..]));
        }
    }
    None
}

/// Encodes `body` as one frame into `buf` (cleared first).
pub(crate) fn encode<T: Message>(buf: &mut Vec<u8>, id: u64, body: &T) -> Result<(), String> {
    buf.clear();
    buf.extend_from_slice(&[0; 4]);
    if !body.encode_fast(id, buf) {
        let envelope = Envelope { id, body };
        let taken = std::mem::take(buf);
        *buf = postcard::to_extend(&envelope, taken).map_err(|err| err.to_string())?;
    }
    let len = buf.len() - 4;
    if len > MAX_FRAME {
        return Err(format!("frame of {len} bytes exceeds the {MAX_FRAME}-byte limit"));
    }
    let len = u32::try_from(len).map_err(|_| format!("frame of {len} bytes is too large"))?;
    buf[..4].copy_from_slice(&len.to_le_bytes());
    Ok(())
}

/// Decodes one frame's payload (the bytes after its length).
pub(crate) fn decode<T: Message>(payload: &[u8]) -> Result<Envelope<T>, FrameError> {
    match T::decode_fast(payload) {
        Some(envelope) => Ok(envelope),
        None => postcard::from_bytes(payload)
            .map_err(|err| FrameError::Malformed(format!("undecodable frame: {err}"))),
    }
}

/// Writes one already encoded frame: one `write` on an unbuffered stream, no `flush` needed.
pub(crate) fn write_frame(out: &mut impl Write, frame: &[u8]) -> io::Result<()> {
    out.write_all(frame)
}

/// The receiving side of a connection: a buffer that frames are read into and decoded from in
/// place, so a frame costs one `read` (when it arrives whole) and no copy.
///
/// (A `BufReader` plus a payload buffer would read the header and the payload in two calls and
/// copy the payload out before decoding it.) Bytes past the frame just read stay for the next.
#[derive(Debug)]
pub(crate) struct Inbox {
    buf: Vec<u8>,
    /// The first byte not yet consumed.
    start: usize,
    /// The end of the bytes received.
    end: usize,
}

impl Inbox {
    /// The initial buffer: every frame but a large batch fits. It grows to the largest frame
    /// received (like the payload buffer it replaces).
    const INITIAL: usize = 4096;

    pub(crate) fn new() -> Inbox {
        Inbox { buf: vec![0; Inbox::INITIAL], start: 0, end: 0 }
    }

    /// Reads one frame from `input` and decodes it.
    pub(crate) fn read_frame<T: Message>(
        &mut self,
        input: &mut impl Read,
    ) -> Result<Envelope<T>, FrameError> {
        // Usually one `receive`: a frame this small arrives whole.
        let len = loop {
            let buffered = &self.buf[self.start..self.end];
            let Some(header) = buffered.first_chunk::<4>() else {
                self.receive(input, 4)?;
                continue;
            };
            let len = u32::from_le_bytes(*header) as usize;
            if len > MAX_FRAME {
                return Err(FrameError::Malformed(format!(
                    "frame of {len} bytes exceeds the {MAX_FRAME}-byte limit"
                )));
            }
            if buffered.len() >= 4 + len {
                break len;
            }
            self.receive(input, 4 + len)?;
        };
        let decoded = decode(&self.buf[self.start + 4..self.start + 4 + len]);
        self.start += 4 + len;
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        }
        decoded
    }

    /// Reads what is available (at least one byte), with room for a frame of `frame` bytes
    /// (header included) from `start`.
    fn receive(&mut self, input: &mut impl Read, frame: usize) -> Result<(), FrameError> {
        if self.buf.len() - self.start < frame {
            // Move the partial frame to the front, and make room for the whole of it.
            self.buf.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
            if self.buf.len() < frame {
                self.buf.resize(frame, 0);
            }
        }
        loop {
            match input.read(&mut self.buf[self.end..]) {
                Ok(0) => return Err(FrameError::Closed),
                Ok(n) => {
                    self.end += n;
                    return Ok(());
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) if err.kind() == io::ErrorKind::ConnectionReset => {
                    return Err(FrameError::Closed)
                }
                Err(err) => return Err(FrameError::Io(err)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest::proptest! {
        /// Arbitrary bytes from a peer never panic the reader: they decode, or they are a clean
        /// `Closed`/`Malformed`.
        #[test]
        fn fuzz_arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let mut input = &bytes[..];
            let mut inbox = Inbox::new();
            for _ in 0..4 {
                match inbox.read_frame::<Request>(&mut input) {
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            let mut input = &bytes[..];
            let _ = Inbox::new().read_frame::<Response>(&mut input);
        }

        /// A whole frame whose body is arbitrary, or a real message with bytes changed or cut:
        /// the decoder is reached, and answers a message or `Malformed`, never `Closed` (the
        /// frame is all there) and never a panic.
        #[test]
        fn fuzz_well_framed_bodies_decode_or_are_malformed(
            message in 0usize..5,
            id: u64,
            a: f64,
            text in "\\PC{0,12}",
            edits in proptest::collection::vec((proptest::prelude::any::<usize>(), proptest::prelude::any::<u8>()), 0..4),
            cut in proptest::option::of(proptest::prelude::any::<usize>()),
            raw in proptest::option::of(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)),
        ) {
            let mut frame = Vec::new();
            let request = match message {
                0 => Request::Call { op: 1, a, b: a },
                1 => Request::Hello { wire_version: WIRE_VERSION },
                2 => Request::Initialize(vec![(text.clone(), text)]),
                3 => Request::Batch(vec![(2, a, 1.0); 3]),
                _ => Request::SetAngleUnit(1),
            };
            encode(&mut frame, id, &request).unwrap();
            let mut body = match raw {
                Some(raw) => raw,
                None => frame[4..].to_vec(),
            };
            for (at, byte) in edits {
                if !body.is_empty() {
                    let at = at % body.len();
                    body[at] = byte;
                }
            }
            if let Some(cut) = cut {
                body.truncate(cut % (body.len() + 1));
            }
            let mut framed = u32::try_from(body.len()).unwrap().to_le_bytes().to_vec();
            framed.extend_from_slice(&body);
            let as_request = Inbox::new().read_frame::<Request>(&mut &framed[..]);
            prop_assert!(matches!(as_request, Ok(_) | Err(FrameError::Malformed(_))), "{as_request:?}");
            let as_response = Inbox::new().read_frame::<Response>(&mut &framed[..]);
            prop_assert!(matches!(as_response, Ok(_) | Err(FrameError::Malformed(_))), "{as_response:?}");
        }
    }

    proptest::proptest! {
        /// The hand-written codec writes postcard's bytes.
        #[test]
        fn fast_encoding_is_postcards(id: u64, op: u8, a: f64, b: f64) {
            let request = Request::Call { op, a, b };
            let mut fast = Vec::new();
            prop_assert!(request.encode_fast(id, &mut fast));
            prop_assert_eq!(&fast, &postcard::to_stdvec(&Envelope { id, body: &request }).unwrap());
            let response = Response::Value(a);
            fast.clear();
            prop_assert!(response.encode_fast(id, &mut fast));
            prop_assert_eq!(&fast, &postcard::to_stdvec(&Envelope { id, body: &response }).unwrap());
        }

        /// The hand-written decoder accepts only what postcard decodes, to the same message:
        /// an id, a tag (mostly the fast-path ones) and arbitrary bytes after it.
        #[test]
        fn fast_decoding_agrees_with_postcard(
            id: u64,
            tag in prop_oneof![Just(CALL_TAG), Just(VALUE_TAG), any::<u8>()],
            rest in proptest::collection::vec(any::<u8>(), 0..24),
        ) {
            let mut bytes = postcard::to_stdvec(&id).unwrap();
            bytes.push(tag);
            bytes.extend_from_slice(&rest);
            if let Some(fast) = Request::decode_fast(&bytes) {
                let slow: Envelope<Request> = postcard::from_bytes(&bytes).unwrap();
                prop_assert_eq!(format!("{fast:?}"), format!("{slow:?}"));
            }
            if let Some(fast) = Response::decode_fast(&bytes) {
                let slow: Envelope<Response> = postcard::from_bytes(&bytes).unwrap();
                prop_assert_eq!(format!("{fast:?}"), format!("{slow:?}"));
            }
        }
    }

    /// Valid frames of the fast-path messages, with small and large ids, decode on the fast path.
    #[test]
    fn fast_path_messages_take_the_fast_path() {
        for id in [0, 1, 127, 128, 1 << 21, (1 << 63) - 1] {
            let bytes = postcard::to_stdvec(&Envelope {
                id,
                body: Request::Call { op: 2, a: 1.0, b: -0.5 },
            })
            .unwrap();
            let got = Request::decode_fast(&bytes).unwrap();
            assert!(
                got.id == id
                    && matches!(got.body, Request::Call { op: 2, a, b } if a == 1.0 && b == -0.5)
            );
            let bytes = postcard::to_stdvec(&Envelope { id, body: Response::Value(3.0) }).unwrap();
            let got = Response::decode_fast(&bytes).unwrap();
            assert!(got.id == id && matches!(got.body, Response::Value(v) if v == 3.0));
        }
        let other = postcard::to_stdvec(&Envelope { id: 1, body: Request::Status }).unwrap();
        assert!(Request::decode_fast(&other).is_none());
    }

    #[test]
    fn frames_round_trip() {
        let mut buf = Vec::new();
        encode(&mut buf, 7, &Request::Call { op: 4, a: 1.5, b: -2.0 }).unwrap();
        let mut input = &buf[..];
        let mut inbox = Inbox::new();
        let got: Envelope<Request> = inbox.read_frame(&mut input).unwrap();
        assert_eq!(got.id, 7);
        assert!(matches!(got.body, Request::Call { op: 4, a, b } if a == 1.5 && b == -2.0));
        assert!(matches!(inbox.read_frame::<Request>(&mut input), Err(FrameError::Closed)));
    }

    /// Frames split across reads, several frames in one read, and a frame larger than the
    /// initial buffer all come out whole and in order.
    #[test]
    fn frames_survive_any_chunking() {
        let mut stream = Vec::new();
        let mut frame = Vec::new();
        let big: Vec<(u8, f64, f64)> = (0..1000).map(|i| (1, f64::from(i), 2.0)).collect();
        for id in 0..5u64 {
            let request = if id == 2 {
                Request::Batch(big.clone())
            } else {
                Request::Call { op: 1, a: id as f64, b: 0.5 }
            };
            encode(&mut frame, id, &request).unwrap();
            stream.extend_from_slice(&frame);
        }
        for chunk in [1, 3, 7, 4096, stream.len()] {
            let mut input = Chunked { bytes: &stream, chunk };
            let mut inbox = Inbox::new();
            for id in 0..5u64 {
                let got: Envelope<Request> = inbox.read_frame(&mut input).unwrap();
                assert_eq!(got.id, id, "chunks of {chunk}");
                match got.body {
                    Request::Batch(items) => assert_eq!(items, big),
                    Request::Call { a, .. } => assert_eq!(a, id as f64),
                    other => panic!("unexpected {other:?}"),
                }
            }
            assert!(matches!(inbox.read_frame::<Request>(&mut input), Err(FrameError::Closed)));
        }
    }

    /// A reader that hands out at most `chunk` bytes per `read`.
    struct Chunked<'a> {
        bytes: &'a [u8],
        chunk: usize,
    }

    impl Read for Chunked<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.chunk.min(buf.len()).min(self.bytes.len());
            buf[..n].copy_from_slice(&self.bytes[..n]);
            self.bytes = &self.bytes[n..];
            Ok(n)
        }
    }

    #[test]
    fn oversized_and_garbage_frames_are_malformed_not_panics() {
        let huge = (u32::MAX).to_le_bytes();
        assert!(matches!(
            Inbox::new().read_frame::<Request>(&mut &huge[..]),
            Err(FrameError::Malformed(_))
        ));
        let garbage = [3u8, 0, 0, 0, 0xff, 0xff, 0xff];
        assert!(matches!(
            Inbox::new().read_frame::<Request>(&mut &garbage[..]),
            Err(FrameError::Malformed(_))
        ));
        let truncated = [10u8, 0, 0, 0, 1, 2];
        assert!(matches!(
            Inbox::new().read_frame::<Request>(&mut &truncated[..]),
            Err(FrameError::Closed)
        ));
    }
}
