//! Framing: every message is a 16-byte header, then its body.
//!
//! ```text
//! magic "SK" | version 1 | kind | request id (u64) | body length (u32) | body
//! ```
//! All integers are big-endian.

/// First two bytes of every frame.
pub const MAGIC: [u8; 2] = *b"SK";
/// The protocol version this codec speaks.
pub const VERSION: u8 = 1;
/// Header size in bytes.
pub const HEADER_LEN: usize = 16;
/// Largest body accepted (a PUT carries a key and its chain).
pub const MAX_BODY: usize = 1 << 20;

/// One frame, its body borrowed from the input.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    /// Operation (requests) or result (responses), see [`crate::Op`].
    pub kind: u8,
    /// Chosen by the client, echoed in the response.
    pub id: u64,
    /// The body.
    pub body: &'a [u8],
}

/// Why bytes are not a frame. The connection cannot continue after one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The first two bytes are not "SK".
    #[error("not a sealtls custody frame (first bytes {0:02x?}, expected \"SK\")")]
    BadMagic([u8; 2]),
    /// A version this codec does not speak.
    #[error("protocol version {0} is not supported (this side speaks version 1)")]
    UnsupportedVersion(u8),
    /// The body length is above [`MAX_BODY`].
    #[error("frame body of {0} bytes is above the limit of 1 MiB")]
    TooLarge(u32),
}

/// Appends a frame to `out`.
pub fn encode_frame(out: &mut Vec<u8>, kind: u8, id: u64, body: &[u8]) {
    debug_assert!(body.len() <= MAX_BODY);
    out.reserve(HEADER_LEN + body.len());
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(kind);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
}

/// Decodes the first frame of `buf`: `Ok(None)` until it is complete, else
/// the frame and how many bytes it used.
pub fn decode_frame(buf: &[u8]) -> Result<Option<(Frame<'_>, usize)>, FrameError> {
    if buf.len() >= 2 && buf[..2] != MAGIC {
        return Err(FrameError::BadMagic([buf[0], buf[1]]));
    }
    if buf.len() >= 3 && buf[2] != VERSION {
        return Err(FrameError::UnsupportedVersion(buf[2]));
    }
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let len = u32::from_be_bytes(buf[12..16].try_into().expect("four bytes"));
    if len as usize > MAX_BODY {
        return Err(FrameError::TooLarge(len));
    }
    let end = HEADER_LEN + len as usize;
    if buf.len() < end {
        return Ok(None);
    }
    let id = u64::from_be_bytes(buf[4..12].try_into().expect("eight bytes"));
    Ok(Some((Frame { kind: buf[3], id, body: &buf[HEADER_LEN..end] }, end)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_spec_example_bytes() {
        let mut out = Vec::new();
        encode_frame(&mut out, 0x01, 7, b"hi");
        assert_eq!(out, b"SK\x01\x01\0\0\0\0\0\0\0\x07\0\0\0\x02hi");
        let (frame, used) = decode_frame(&out).unwrap().unwrap();
        assert_eq!((frame.kind, frame.id, frame.body, used), (1, 7, &b"hi"[..], out.len()));
    }

    #[test]
    fn incomplete_frames_wait_for_more() {
        let mut out = Vec::new();
        encode_frame(&mut out, 2, u64::MAX, &[9; 100]);
        for cut in 0..out.len() {
            assert_eq!(decode_frame(&out[..cut]), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn bad_headers_are_named() {
        assert_eq!(decode_frame(b"GET / HTTP/1.1"), Err(FrameError::BadMagic(*b"GE")));
        assert_eq!(decode_frame(b"SK\x02"), Err(FrameError::UnsupportedVersion(2)));
        let mut big = b"SK\x01\x01\0\0\0\0\0\0\0\x01".to_vec();
        big.extend_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(decode_frame(&big), Err(FrameError::TooLarge(u32::MAX)));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_and_never_overrun(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(Some((frame, used))) = decode_frame(&bytes) {
                prop_assert!(used <= bytes.len());
                prop_assert_eq!(used, HEADER_LEN + frame.body.len());
            }
        }

        #[test]
        fn frames_round_trip(kind in any::<u8>(), id in any::<u64>(), body in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut out = Vec::new();
            encode_frame(&mut out, kind, id, &body);
            let (frame, used) = decode_frame(&out).unwrap().unwrap();
            prop_assert_eq!(used, out.len());
            prop_assert_eq!(frame, Frame { kind, id, body: &body });
        }
    }
}
