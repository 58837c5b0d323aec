//! The offload RPC frames (docs/offload-protocol.md), encoded and decoded
//! over byte buffers. Every frame is an 8-byte header, then a body:
//!
//! ```text
//! magic "SO" | version 1 | kind | body length (u32, big-endian) | body
//! ```
use crate::code::Code;

/// First two bytes of every frame.
pub const MAGIC: [u8; 2] = *b"SO";
/// The protocol version this codec speaks.
pub const VERSION: u8 = 1;
/// Header size in bytes.
pub const HEADER_LEN: usize = 8;
/// Longest host name in CONNECT (DNS names are at most 253 bytes).
pub const MAX_HOST: usize = 253;
/// Bytes of a body besides the data of a WRITE request or READ response.
pub const BODY_OVERHEAD: usize = 8;

/// Operations a client can ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    /// `connect(host, port)`.
    Connect = 1,
    /// `disconnect()`.
    Disconnect = 2,
    /// `handshake()`.
    Handshake = 3,
    /// `write(data)`.
    Write = 4,
    /// `read(size)`.
    Read = 5,
    /// `reset()`.
    Reset = 6,
    /// The text explaining the last failure.
    Detail = 7,
}

impl Op {
    fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            1 => Self::Connect,
            2 => Self::Disconnect,
            3 => Self::Handshake,
            4 => Self::Write,
            5 => Self::Read,
            6 => Self::Reset,
            7 => Self::Detail,
            _ => return None,
        })
    }
}

/// The kind byte of the daemon's greeting.
const WELCOME: u8 = 0x40;
/// Response kinds are the request's with this bit set.
const RESPONSE: u8 = 0x80;

/// A client's call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Open a TCP connection (polled: WOULD_BLOCK until done).
    Connect {
        /// Name or address; may be empty (the daemon answers INVALID_PARAMETER).
        host: String,
        /// Port; may be 0 (the daemon answers INVALID_PARAMETER).
        port: u16,
    },
    /// Close the connection.
    Disconnect,
    /// Start or poll the TLS handshake.
    Handshake,
    /// Send these bytes.
    Write(Vec<u8>),
    /// Receive at most this many bytes.
    Read(u32),
    /// End the TLS session, keep the slot connected.
    Reset,
    /// Why did the last call fail?
    Detail,
}

/// The daemon's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    /// Sent once, when a client connects: its badge and the buffer size, or
    /// why it is refused (then the daemon closes the socket).
    Welcome {
        /// SUCCESS, OUT_OF_BOUNDS (no free slot) or OPERATION_DENIED (not allowed).
        code: Code,
        /// The client's badge (101, 102, ...).
        badge: u32,
        /// Largest WRITE or READ size, in bytes.
        buffer_size: u32,
    },
    /// The answer to CONNECT, DISCONNECT, HANDSHAKE or RESET.
    Status {
        /// Which call this answers.
        op: Op,
        /// The result.
        code: Code,
    },
    /// The answer to WRITE.
    Written {
        /// The result.
        code: Code,
        /// Bytes taken (0 unless SUCCESS).
        taken: u32,
    },
    /// The answer to READ.
    Read {
        /// The result.
        code: Code,
        /// Bytes read (empty unless SUCCESS).
        data: Vec<u8>,
    },
    /// The answer to DETAIL: empty when nothing failed.
    Detail(String),
}

/// Why bytes are not a valid frame. Any of these ends the conversation:
/// after a bad frame the stream cannot be re-synchronised.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    /// The first two bytes are not "SO".
    #[error("not an offload frame (bad magic {0:02x}{1:02x}); is this a sealtls offload socket?")]
    BadMagic(u8, u8),
    /// Another protocol version.
    #[error("protocol version {0} is not supported (this side speaks version 1)")]
    BadVersion(u8),
    /// An unknown kind byte.
    #[error("unknown frame kind 0x{0:02x}")]
    UnknownKind(u8),
    /// A body longer than the limit.
    #[error("frame body of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Announced length.
        len: u32,
        /// The limit.
        max: usize,
    },
    /// A body that does not fit its kind.
    #[error("malformed {kind} frame: {why}")]
    Malformed {
        /// Frame kind, for the message.
        kind: &'static str,
        /// What is wrong.
        why: &'static str,
    },
}

fn header(out: &mut Vec<u8>, kind: u8, body_len: usize) {
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(kind);
    out.extend_from_slice(&(body_len as u32).to_be_bytes());
}

impl Request {
    /// Appends the frame to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let (op, body): (Op, Vec<u8>) = match self {
            Self::Connect { host, port } => {
                let host = &host.as_bytes()[..host.len().min(MAX_HOST)];
                let mut b = port.to_be_bytes().to_vec();
                b.push(host.len() as u8);
                b.extend_from_slice(host);
                (Op::Connect, b)
            }
            Self::Disconnect => (Op::Disconnect, vec![]),
            Self::Handshake => (Op::Handshake, vec![]),
            Self::Write(data) => (Op::Write, data.clone()),
            Self::Read(size) => (Op::Read, size.to_be_bytes().to_vec()),
            Self::Reset => (Op::Reset, vec![]),
            Self::Detail => (Op::Detail, vec![]),
        };
        header(out, op as u8, body.len());
        out.extend_from_slice(&body);
    }
}

impl Response {
    /// Appends the frame to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let code_bytes = |c: &Code| c.value().to_be_bytes();
        match self {
            Self::Welcome { code, badge, buffer_size } => {
                header(out, WELCOME, 12);
                out.extend_from_slice(&code_bytes(code));
                out.extend_from_slice(&badge.to_be_bytes());
                out.extend_from_slice(&buffer_size.to_be_bytes());
            }
            Self::Status { op, code } => {
                header(out, *op as u8 | RESPONSE, 4);
                out.extend_from_slice(&code_bytes(code));
            }
            Self::Written { code, taken } => {
                header(out, Op::Write as u8 | RESPONSE, 8);
                out.extend_from_slice(&code_bytes(code));
                out.extend_from_slice(&taken.to_be_bytes());
            }
            Self::Read { code, data } => {
                header(out, Op::Read as u8 | RESPONSE, 4 + data.len());
                out.extend_from_slice(&code_bytes(code));
                out.extend_from_slice(data);
            }
            Self::Detail(text) => {
                header(out, Op::Detail as u8 | RESPONSE, 4 + text.len());
                out.extend_from_slice(&code_bytes(&Code::Success));
                out.extend_from_slice(text.as_bytes());
            }
        }
    }
}

/// Splits one frame off `buf`: `Ok(None)` while incomplete, else the kind,
/// the body and the number of bytes used.
fn frame(buf: &[u8], max_body: usize) -> Result<Option<(u8, &[u8], usize)>, ProtoError> {
    if buf.len() >= 2 && buf[..2] != MAGIC {
        return Err(ProtoError::BadMagic(buf[0], buf[1]));
    }
    if buf.len() >= 3 && buf[2] != VERSION {
        return Err(ProtoError::BadVersion(buf[2]));
    }
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
    if len as usize > max_body {
        return Err(ProtoError::TooLarge { len, max: max_body });
    }
    let end = HEADER_LEN + len as usize;
    if buf.len() < end {
        return Ok(None);
    }
    Ok(Some((buf[3], &buf[HEADER_LEN..end], end)))
}

fn malformed(kind: &'static str, why: &'static str) -> ProtoError {
    ProtoError::Malformed { kind, why }
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn code_at(body: &[u8], kind: &'static str) -> Result<Code, ProtoError> {
    if body.len() < 4 {
        return Err(malformed(kind, "shorter than its result code"));
    }
    Code::from_value(be_u32(body) as i32).ok_or(malformed(kind, "unknown result code"))
}

/// Decodes one request from the front of `buf`, accepting bodies of at
/// most `max_body` bytes. `Ok(None)`: more bytes are needed.
pub fn decode_request(buf: &[u8], max_body: usize) -> Result<Option<(Request, usize)>, ProtoError> {
    let Some((kind, body, used)) = frame(buf, max_body)? else { return Ok(None) };
    let op = Op::from_u8(kind).ok_or(ProtoError::UnknownKind(kind))?;
    let empty = |name, r: Request| if body.is_empty() { Ok(r) } else { Err(malformed(name, "must have no body")) };
    let request = match op {
        Op::Connect => {
            if body.len() < 3 || body.len() != 3 + body[2] as usize {
                return Err(malformed("CONNECT", "host length does not match the body"));
            }
            let host = std::str::from_utf8(&body[3..]).map_err(|_| malformed("CONNECT", "host is not UTF-8"))?;
            Request::Connect { host: host.to_owned(), port: u16::from_be_bytes([body[0], body[1]]) }
        }
        Op::Disconnect => empty("DISCONNECT", Request::Disconnect)?,
        Op::Handshake => empty("HANDSHAKE", Request::Handshake)?,
        Op::Write => Request::Write(body.to_vec()),
        Op::Read => {
            if body.len() != 4 {
                return Err(malformed("READ", "body must be a 4-byte size"));
            }
            Request::Read(be_u32(body))
        }
        Op::Reset => empty("RESET", Request::Reset)?,
        Op::Detail => empty("DETAIL", Request::Detail)?,
    };
    Ok(Some((request, used)))
}

/// Decodes one response from the front of `buf`; like [`decode_request`].
pub fn decode_response(buf: &[u8], max_body: usize) -> Result<Option<(Response, usize)>, ProtoError> {
    let Some((kind, body, used)) = frame(buf, max_body)? else { return Ok(None) };
    let response = if kind == WELCOME {
        if body.len() != 12 {
            return Err(malformed("WELCOME", "body must be 12 bytes"));
        }
        Response::Welcome { code: code_at(body, "WELCOME")?, badge: be_u32(&body[4..]), buffer_size: be_u32(&body[8..]) }
    } else {
        let op = Op::from_u8(kind & !RESPONSE).filter(|_| kind & RESPONSE != 0).ok_or(ProtoError::UnknownKind(kind))?;
        match op {
            Op::Write => {
                if body.len() != 8 {
                    return Err(malformed("WRITE response", "body must be 8 bytes"));
                }
                Response::Written { code: code_at(body, "WRITE response")?, taken: be_u32(&body[4..]) }
            }
            Op::Read => Response::Read { code: code_at(body, "READ response")?, data: body[4..].to_vec() },
            Op::Detail => {
                code_at(body, "DETAIL response")?;
                Response::Detail(String::from_utf8_lossy(&body[4..]).into_owned())
            }
            _ => {
                if body.len() != 4 {
                    return Err(malformed("status response", "body must be 4 bytes"));
                }
                Response::Status { op, code: code_at(body, "status response")? }
            }
        }
    };
    Ok(Some((response, used)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAX: usize = 16384 + BODY_OVERHEAD;

    fn round_trip_request(r: Request) {
        let mut buf = Vec::new();
        r.encode(&mut buf);
        for cut in 0..buf.len() {
            assert_eq!(decode_request(&buf[..cut], MAX), Ok(None), "{r:?} cut at {cut}");
        }
        assert_eq!(decode_request(&buf, MAX), Ok(Some((r, buf.len()))));
    }

    #[test]
    fn requests_round_trip() {
        round_trip_request(Request::Connect { host: "127.0.0.1".into(), port: 10007 });
        round_trip_request(Request::Connect { host: String::new(), port: 0 });
        round_trip_request(Request::Write(b"HELLOOOOOO?!\0".to_vec()));
        round_trip_request(Request::Write(vec![]));
        round_trip_request(Request::Read(1024));
        for r in [Request::Disconnect, Request::Handshake, Request::Reset, Request::Detail] {
            round_trip_request(r);
        }
    }

    #[test]
    fn responses_round_trip() {
        for r in [
            Response::Welcome { code: Code::Success, badge: 101, buffer_size: 16384 },
            Response::Welcome { code: Code::OutOfBounds, badge: 0, buffer_size: 0 },
            Response::Status { op: Op::Connect, code: Code::WouldBlock },
            Response::Status { op: Op::Handshake, code: Code::Aborted },
            Response::Written { code: Code::Success, taken: 13 },
            Response::Read { code: Code::Success, data: b"HELLOOOOOO?!\0".to_vec() },
            Response::Read { code: Code::ConnectionClosed, data: vec![] },
            Response::Detail("certificate is signed by an untrusted CA".into()),
        ] {
            let mut buf = Vec::new();
            r.encode(&mut buf);
            assert_eq!(decode_response(&buf, MAX), Ok(Some((r, buf.len()))));
        }
    }

    #[test]
    fn the_example_in_the_spec() {
        let mut connect = b"SO\x01\x01\x00\x00\x00\x0c\x27\x17\x09".to_vec();
        connect.extend_from_slice(b"127.0.0.1");
        assert_eq!(decode_request(&connect, MAX), Ok(Some((Request::Connect { host: "127.0.0.1".into(), port: 10007 }, 20))));
        let answer = b"SO\x01\x81\x00\x00\x00\x04\xff\xff\xff\xef";
        assert_eq!(decode_response(answer, MAX), Ok(Some((Response::Status { op: Op::Connect, code: Code::WouldBlock }, 12))));
    }

    #[test]
    fn bad_frames_are_named() {
        assert_eq!(decode_request(b"GET / HTTP/1.1\r\n", MAX), Err(ProtoError::BadMagic(b'G', b'E')));
        assert_eq!(decode_request(b"SO\x02", MAX), Err(ProtoError::BadVersion(2)));
        assert_eq!(decode_request(b"SO\x01\x09\0\0\0\0", MAX), Err(ProtoError::UnknownKind(9)));
        assert!(matches!(decode_request(b"SO\x01\x04\xff\xff\xff\xff", MAX), Err(ProtoError::TooLarge { .. })));
        assert!(matches!(decode_request(b"SO\x01\x02\0\0\0\x01x", MAX), Err(ProtoError::Malformed { .. })));
        assert!(matches!(decode_request(b"SO\x01\x01\0\0\0\x04\x01\xbb\x05x", MAX), Err(ProtoError::Malformed { .. })));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_request(&bytes, MAX);
            let _ = decode_response(&bytes, MAX);
        }

        #[test]
        fn arbitrary_bodies_after_a_valid_header_never_panic(kind in any::<u8>(), body in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut buf = Vec::new();
            header(&mut buf, kind, body.len());
            buf.extend_from_slice(&body);
            if let Ok(Some((_, used))) = decode_request(&buf, MAX) {
                prop_assert_eq!(used, buf.len());
            }
            if let Ok(Some((_, used))) = decode_response(&buf, MAX) {
                prop_assert_eq!(used, buf.len());
            }
        }

        #[test]
        fn writes_round_trip(data in proptest::collection::vec(any::<u8>(), 0..2000), host in "[a-z0-9.-]{0,60}", port in any::<u16>()) {
            let mut buf = Vec::new();
            Request::Write(data.clone()).encode(&mut buf);
            Request::Connect { host: host.clone(), port }.encode(&mut buf);
            let (first, used) = decode_request(&buf, MAX).unwrap().unwrap();
            prop_assert_eq!(first, Request::Write(data));
            let (second, _) = decode_request(&buf[used..], MAX).unwrap().unwrap();
            prop_assert_eq!(second, Request::Connect { host, port });
        }
    }
}
