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
    /// Wait until something the client is interested in happens.
    Wait = 8,
    /// What the TLS session negotiated, in words.
    Session = 9,
    /// Switch to streaming: received data is pushed, sends are not answered.
    Stream = 10,
    /// Streaming: bytes to send, within the send window; no answer.
    Send = 11,
    /// Streaming: more receive credit; no answer.
    Credit = 12,
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
            8 => Self::Wait,
            9 => Self::Session,
            10 => Self::Stream,
            11 => Self::Send,
            12 => Self::Credit,
            _ => return None,
        })
    }
}

/// The kind byte of the daemon's greeting.
const WELCOME: u8 = 0x40;
/// The kind byte of the daemon's last words before it closes the socket.
const GOODBYE: u8 = 0x41;
/// Streaming, unasked: received data, or the end of the session.
const DATA: u8 = 0x42;
/// Streaming, unasked: send-window bytes given back.
const SENT: u8 = 0x43;
/// Response kinds are the request's with this bit set.
const RESPONSE: u8 = 0x80;

/// WAIT interest: data, the end of the stream or an error can be read.
pub const READABLE: u8 = 0x01;
/// WAIT interest: WRITE would take at least one byte.
pub const WRITABLE: u8 = 0x02;

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
    /// Receive at most `size` bytes.
    Read {
        /// Most bytes wanted.
        size: u32,
        /// When nothing can be read yet, answer once something can (or when
        /// the next request arrives) instead of answering WOULD_BLOCK now.
        wait: bool,
    },
    /// End the TLS session, keep the slot connected.
    Reset,
    /// Why did the last call fail?
    Detail,
    /// Answer when a connect or handshake under way finishes, or when one of
    /// the `interest` conditions ([`READABLE`], [`WRITABLE`]) holds.
    Wait {
        /// Bit set of [`READABLE`] and [`WRITABLE`].
        interest: u8,
    },
    /// What did the handshake negotiate?
    Session,
    /// Switch the session to streaming, granting `window` bytes of receive credit.
    Stream {
        /// Bytes the daemon may push before more credit is granted.
        window: u32,
    },
    /// Streaming: send these bytes (never more than the send window allows).
    Send(Vec<u8>),
    /// Streaming: the client consumed this many pushed bytes; push more.
    Credit(u32),
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
    /// Sent just before the daemon closes the socket on its own initiative.
    Goodbye {
        /// Why, as a code.
        code: Code,
        /// Why, in words.
        reason: String,
    },
    /// The answer to CONNECT, DISCONNECT, HANDSHAKE, RESET or WAIT.
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
    /// The answer to STREAM: the send window, in bytes.
    Streaming {
        /// SUCCESS, or INVALID_STATE without a TLS session.
        code: Code,
        /// Most SEND bytes the client may have unacknowledged (see [`Response::Sent`]).
        send_window: u32,
    },
    /// Streaming, unasked: received bytes (code SUCCESS), or, once, the end
    /// of the session (CONNECTION_CLOSED or NETWORK_CONN_SHUTDOWN, no bytes).
    Data {
        /// SUCCESS while data flows.
        code: Code,
        /// The bytes.
        data: Vec<u8>,
    },
    /// Streaming, unasked: this many SEND bytes left the daemon's queue, so
    /// the client may send as many more.
    Sent(u32),
    /// The answer to DETAIL or SESSION.
    Text {
        /// Which call this answers.
        op: Op,
        /// The result.
        code: Code,
        /// The text; empty when there is nothing to say.
        text: String,
    },
}

/// Why bytes are not a valid frame. Any of these ends the conversation:
/// after a bad frame the stream cannot be re-synchronised.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    /// The first two bytes are not "SO".
    #[error("not an offload frame (bad magic {0:02x}{1:02x}: is this a sealtls offload socket?)")]
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

/// Appends a WRITE request for `data` to `out`, without building a
/// [`Request`] (and copying the data into it) first.
pub fn encode_write(out: &mut Vec<u8>, data: &[u8]) {
    header(out, Op::Write as u8, data.len());
    out.extend_from_slice(data);
}

/// Appends a SEND request for `data` to `out`, like [`encode_write`].
pub fn encode_send(out: &mut Vec<u8>, data: &[u8]) {
    header(out, Op::Send as u8, data.len());
    out.extend_from_slice(data);
}

impl Request {
    /// Appends the frame to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Self::Connect { host, port } => {
                let host = &host.as_bytes()[..host.len().min(MAX_HOST)];
                header(out, Op::Connect as u8, 3 + host.len());
                out.extend_from_slice(&port.to_be_bytes());
                out.push(host.len() as u8);
                out.extend_from_slice(host);
            }
            Self::Write(data) => encode_write(out, data),
            Self::Read { size, wait } => {
                header(out, Op::Read as u8, 5);
                out.extend_from_slice(&size.to_be_bytes());
                out.push(u8::from(*wait));
            }
            Self::Wait { interest } => {
                header(out, Op::Wait as u8, 1);
                out.push(*interest);
            }
            Self::Disconnect => header(out, Op::Disconnect as u8, 0),
            Self::Handshake => header(out, Op::Handshake as u8, 0),
            Self::Reset => header(out, Op::Reset as u8, 0),
            Self::Detail => header(out, Op::Detail as u8, 0),
            Self::Session => header(out, Op::Session as u8, 0),
            Self::Stream { window } => {
                header(out, Op::Stream as u8, 4);
                out.extend_from_slice(&window.to_be_bytes());
            }
            Self::Send(data) => encode_send(out, data),
            Self::Credit(bytes) => {
                header(out, Op::Credit as u8, 4);
                out.extend_from_slice(&bytes.to_be_bytes());
            }
        }
    }
}

fn code_and_bytes(out: &mut Vec<u8>, kind: u8, code: Code, bytes: &[u8]) {
    header(out, kind, 4 + bytes.len());
    out.extend_from_slice(&code.value().to_be_bytes());
    out.extend_from_slice(bytes);
}

impl Response {
    /// Appends the frame to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Self::Welcome { code, badge, buffer_size } => {
                let mut rest = badge.to_be_bytes().to_vec();
                rest.extend_from_slice(&buffer_size.to_be_bytes());
                code_and_bytes(out, WELCOME, *code, &rest);
            }
            Self::Goodbye { code, reason } => code_and_bytes(out, GOODBYE, *code, reason.as_bytes()),
            Self::Status { op, code } => code_and_bytes(out, *op as u8 | RESPONSE, *code, &[]),
            Self::Written { code, taken } => code_and_bytes(out, Op::Write as u8 | RESPONSE, *code, &taken.to_be_bytes()),
            Self::Read { code, data } => encode_read_response(out, *code, data),
            Self::Text { op, code, text } => code_and_bytes(out, *op as u8 | RESPONSE, *code, text.as_bytes()),
            Self::Streaming { code, send_window } => code_and_bytes(out, Op::Stream as u8 | RESPONSE, *code, &send_window.to_be_bytes()),
            Self::Data { code, data } => encode_data(out, *code, data),
            Self::Sent(bytes) => {
                header(out, SENT, 4);
                out.extend_from_slice(&bytes.to_be_bytes());
            }
        }
    }
}

/// Appends a pushed DATA frame to `out`, without building a [`Response`] first.
pub fn encode_data(out: &mut Vec<u8>, code: Code, data: &[u8]) {
    code_and_bytes(out, DATA, code, data);
}

/// Appends a READ response to `out`, without building a [`Response`] first.
pub fn encode_read_response(out: &mut Vec<u8>, code: Code, data: &[u8]) {
    code_and_bytes(out, Op::Read as u8 | RESPONSE, code, data);
}

/// One frame split off a buffer: its kind, its body, and the bytes it used.
type Split<'a> = (u8, &'a [u8], usize);

/// Splits one frame off `buf`: `Ok(None)` while incomplete.
fn frame(buf: &[u8], max_body: usize) -> Result<Option<Split<'_>>, ProtoError> {
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

fn text_at(body: &[u8], kind: &'static str) -> Result<String, ProtoError> {
    String::from_utf8(body.to_vec()).map_err(|_| malformed(kind, "text is not UTF-8"))
}

/// A frame carrying bulk data, borrowed from the receive buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Bulk<'a> {
    /// SEND (client → daemon).
    Send(&'a [u8]),
    /// DATA with SUCCESS (daemon → client).
    Data(&'a [u8]),
}

/// The complete, valid SEND or successful DATA frame at the front of `buf`
/// and its length; `None` for anything else (decode that as usual). Lets
/// the data path skip copying bodies into a [`Request`] or [`Response`].
pub fn split_bulk(buf: &[u8], max_body: usize) -> Option<(Bulk<'_>, usize)> {
    let (kind, body, used) = frame(buf, max_body).ok()??;
    match kind {
        k if k == Op::Send as u8 => Some((Bulk::Send(body), used)),
        DATA if body.len() >= 4 && be_u32(body) == 0 => Some((Bulk::Data(&body[4..]), used)),
        _ => None,
    }
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
        Op::Write => Request::Write(body.to_vec()),
        Op::Read => match body {
            [a, b, c, d, flags @ (0 | 1)] => Request::Read { size: be_u32(&[*a, *b, *c, *d]), wait: *flags == 1 },
            _ => return Err(malformed("READ", "body must be a 4-byte size and a wait flag of 0 or 1")),
        },
        Op::Wait => match body {
            [interest] if interest & !(READABLE | WRITABLE) == 0 => Request::Wait { interest: *interest },
            _ => return Err(malformed("WAIT", "body must be one byte of interest bits 0x01 and 0x02")),
        },
        Op::Disconnect => empty("DISCONNECT", Request::Disconnect)?,
        Op::Handshake => empty("HANDSHAKE", Request::Handshake)?,
        Op::Reset => empty("RESET", Request::Reset)?,
        Op::Detail => empty("DETAIL", Request::Detail)?,
        Op::Session => empty("SESSION", Request::Session)?,
        Op::Send => Request::Send(body.to_vec()),
        Op::Stream | Op::Credit => {
            let [a, b, c, d] = body else { return Err(malformed("STREAM or CREDIT", "body must be a 4-byte count")) };
            let n = u32::from_be_bytes([*a, *b, *c, *d]);
            if op == Op::Stream {
                Request::Stream { window: n }
            } else {
                Request::Credit(n)
            }
        }
    };
    Ok(Some((request, used)))
}

/// Decodes one response from the front of `buf`; like [`decode_request`].
pub fn decode_response(buf: &[u8], max_body: usize) -> Result<Option<(Response, usize)>, ProtoError> {
    let Some((kind, body, used)) = frame(buf, max_body)? else { return Ok(None) };
    let response = match kind {
        WELCOME => {
            if body.len() != 12 {
                return Err(malformed("WELCOME", "body must be 12 bytes"));
            }
            Response::Welcome { code: code_at(body, "WELCOME")?, badge: be_u32(&body[4..]), buffer_size: be_u32(&body[8..]) }
        }
        GOODBYE => Response::Goodbye { code: code_at(body, "GOODBYE")?, reason: text_at(&body[4..], "GOODBYE")? },
        DATA => Response::Data { code: code_at(body, "DATA")?, data: body[4..].to_vec() },
        SENT => match body {
            [a, b, c, d] => Response::Sent(u32::from_be_bytes([*a, *b, *c, *d])),
            _ => return Err(malformed("SENT", "body must be a 4-byte count")),
        },
        _ => {
            let op = Op::from_u8(kind & !RESPONSE).filter(|_| kind & RESPONSE != 0).ok_or(ProtoError::UnknownKind(kind))?;
            let code = code_at(body, "response")?;
            match op {
                Op::Write => {
                    if body.len() != 8 {
                        return Err(malformed("WRITE response", "body must be 8 bytes"));
                    }
                    Response::Written { code, taken: be_u32(&body[4..]) }
                }
                Op::Read => Response::Read { code, data: body[4..].to_vec() },
                Op::Detail | Op::Session => Response::Text { op, code, text: text_at(&body[4..], "text response")? },
                Op::Stream => match body[4..] {
                    [a, b, c, d] => Response::Streaming { code, send_window: u32::from_be_bytes([a, b, c, d]) },
                    _ => return Err(malformed("STREAM response", "body must be 8 bytes")),
                },
                _ => {
                    if body.len() != 4 {
                        return Err(malformed("status response", "body must be 4 bytes"));
                    }
                    Response::Status { op, code }
                }
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
        round_trip_request(Request::Read { size: 1024, wait: false });
        round_trip_request(Request::Read { size: 16384, wait: true });
        round_trip_request(Request::Wait { interest: READABLE | WRITABLE });
        round_trip_request(Request::Stream { window: 1 << 17 });
        round_trip_request(Request::Send(b"streamed".to_vec()));
        round_trip_request(Request::Credit(16384));
        for r in [Request::Disconnect, Request::Handshake, Request::Reset, Request::Detail, Request::Session] {
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
            Response::Text { op: Op::Detail, code: Code::Success, text: "certificate is signed by an untrusted CA".into() },
            Response::Text { op: Op::Session, code: Code::InvalidState, text: String::new() },
            Response::Status { op: Op::Wait, code: Code::WouldBlock },
            Response::Goodbye { code: Code::InvalidParameter, reason: "unknown frame kind 0x0d".into() },
            Response::Streaming { code: Code::Success, send_window: 65536 },
            Response::Data { code: Code::Success, data: b"pushed".to_vec() },
            Response::Data { code: Code::ConnectionClosed, data: vec![] },
            Response::Sent(16384),
        ] {
            let mut buf = Vec::new();
            r.encode(&mut buf);
            assert_eq!(decode_response(&buf, MAX), Ok(Some((r, buf.len()))));
        }
    }

    #[test]
    fn bulk_frames_are_borrowed_and_nothing_else_is() {
        let mut buf = Vec::new();
        encode_send(&mut buf, b"abc");
        assert_eq!(split_bulk(&buf, MAX), Some((Bulk::Send(b"abc"), buf.len())));
        assert_eq!(split_bulk(&buf[..buf.len() - 1], MAX), None);
        let mut buf = Vec::new();
        encode_data(&mut buf, Code::Success, b"xyz");
        assert_eq!(split_bulk(&buf, MAX), Some((Bulk::Data(b"xyz"), buf.len())));
        let mut buf = Vec::new();
        encode_data(&mut buf, Code::ConnectionClosed, b"");
        assert_eq!(split_bulk(&buf, MAX), None);
        let mut buf = Vec::new();
        encode_write(&mut buf, b"abc");
        assert_eq!(split_bulk(&buf, MAX), None);
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
        assert_eq!(decode_request(b"SO\x01\x0d\0\0\0\0", MAX), Err(ProtoError::UnknownKind(13)));
        assert!(matches!(decode_request(b"SO\x01\x05\0\0\0\x05\0\0\0\x01\x02", MAX), Err(ProtoError::Malformed { .. })));
        assert!(matches!(decode_request(b"SO\x01\x08\0\0\0\x01\x04", MAX), Err(ProtoError::Malformed { .. })));
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
            if let Some((_, used)) = split_bulk(&buf, MAX) {
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
