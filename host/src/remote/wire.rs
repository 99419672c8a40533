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

use std::io::{self, BufRead, Write};

use serde::{Deserialize, Serialize};

/// The version of this wire format; bumped on any change to the types below.
pub(crate) const WIRE_VERSION: u32 = 1;

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

/// Encodes `message` as one frame into `buf` (cleared first).
pub(crate) fn encode<T: Serialize>(buf: &mut Vec<u8>, id: u64, body: &T) -> Result<(), String> {
    buf.clear();
    buf.extend_from_slice(&[0; 4]);
    let envelope = Envelope { id, body };
    let mut buf_taken = std::mem::take(buf);
    buf_taken = postcard::to_extend(&envelope, buf_taken).map_err(|err| err.to_string())?;
    *buf = buf_taken;
    let len = buf.len() - 4;
    if len > MAX_FRAME {
        return Err(format!("frame of {len} bytes exceeds the {MAX_FRAME}-byte limit"));
    }
    let len = u32::try_from(len).map_err(|_| format!("frame of {len} bytes is too large"))?;
    buf[..4].copy_from_slice(&len.to_le_bytes());
    Ok(())
}

/// Writes one already encoded frame.
pub(crate) fn write_frame(out: &mut impl Write, frame: &[u8]) -> io::Result<()> {
    out.write_all(frame)?;
    out.flush()
}

/// Reads one frame's payload into `buf` and decodes it.
pub(crate) fn read_frame<T: for<'de> Deserialize<'de>>(
    input: &mut impl BufRead,
    buf: &mut Vec<u8>,
) -> Result<Envelope<T>, FrameError> {
    let mut header = [0u8; 4];
    match input.read_exact(&mut header) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => return Err(FrameError::Closed),
        Err(err) if err.kind() == io::ErrorKind::ConnectionReset => return Err(FrameError::Closed),
        Err(err) => return Err(FrameError::Io(err)),
    }
    let len = u32::from_le_bytes(header) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::Malformed(format!(
            "frame of {len} bytes exceeds the {MAX_FRAME}-byte limit"
        )));
    }
    buf.clear();
    buf.resize(len, 0);
    match input.read_exact(buf) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => return Err(FrameError::Closed),
        Err(err) => return Err(FrameError::Io(err)),
    }
    postcard::from_bytes(buf)
        .map_err(|err| FrameError::Malformed(format!("undecodable frame: {err}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Arbitrary bytes from a peer never panic the reader: they decode, or they are a clean
        /// `Closed`/`Malformed`.
        #[test]
        fn fuzz_arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let mut input = io::BufReader::new(&bytes[..]);
            let mut scratch = Vec::new();
            for _ in 0..4 {
                match read_frame::<Request>(&mut input, &mut scratch) {
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            let mut input = io::BufReader::new(&bytes[..]);
            let _ = read_frame::<Response>(&mut input, &mut scratch);
        }
    }

    #[test]
    fn frames_round_trip() {
        let mut buf = Vec::new();
        encode(&mut buf, 7, &Request::Call { op: 4, a: 1.5, b: -2.0 }).unwrap();
        let mut input = io::BufReader::new(&buf[..]);
        let mut scratch = Vec::new();
        let got: Envelope<Request> = read_frame(&mut input, &mut scratch).unwrap();
        assert_eq!(got.id, 7);
        assert!(matches!(got.body, Request::Call { op: 4, a, b } if a == 1.5 && b == -2.0));
        assert!(matches!(read_frame::<Request>(&mut input, &mut scratch), Err(FrameError::Closed)));
    }

    #[test]
    fn oversized_and_garbage_frames_are_malformed_not_panics() {
        let mut scratch = Vec::new();
        let huge = (u32::MAX).to_le_bytes();
        let mut input = io::BufReader::new(&huge[..]);
        assert!(matches!(
            read_frame::<Request>(&mut input, &mut scratch),
            Err(FrameError::Malformed(_))
        ));
        let garbage = [3u8, 0, 0, 0, 0xff, 0xff, 0xff];
        let mut input = io::BufReader::new(&garbage[..]);
        assert!(matches!(
            read_frame::<Request>(&mut input, &mut scratch),
            Err(FrameError::Malformed(_))
        ));
        let truncated = [10u8, 0, 0, 0, 1, 2];
        let mut input = io::BufReader::new(&truncated[..]);
        assert!(matches!(read_frame::<Request>(&mut input, &mut scratch), Err(FrameError::Closed)));
    }
}
