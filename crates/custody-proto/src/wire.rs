//! Big-endian field readers and writers shared by every message body.

/// Why a frame's body does not fit its kind. The connection continues:
/// the framing is intact.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// The kind byte names no operation or result.
    #[error("unknown kind 0x{0:02x}")]
    UnknownKind(u8),
    /// A field runs past the body.
    #[error("field {0} runs past the end of the body")]
    Truncated(&'static str),
    /// Bytes after the last field.
    #[error("{0} bytes after the last field")]
    TrailingBytes(usize),
    /// A text field is not UTF-8.
    #[error("field {0} is not UTF-8")]
    NotUtf8(&'static str),
    /// A field with a value outside its range.
    #[error("field {0} has value {1}, which is not defined")]
    BadValue(&'static str, u32),
}

/// Reads fields from a body, failing with the name of the field that does not fit.
pub(crate) struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(body: &'a [u8]) -> Self {
        Self { rest: body }
    }

    pub(crate) fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], BodyError> {
        if self.rest.len() < n {
            return Err(BodyError::Truncated(field));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, BodyError> {
        Ok(self.take(1, field)?[0])
    }

    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, BodyError> {
        let b = self.take(2, field)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, BodyError> {
        let b = self.take(4, field)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, BodyError> {
        let b = self.take(8, field)?;
        Ok(u64::from_be_bytes(b.try_into().expect("eight bytes")))
    }

    /// A byte string with a 16-bit length.
    pub(crate) fn bytes16(&mut self, field: &'static str) -> Result<&'a [u8], BodyError> {
        let n = self.u16(field)? as usize;
        self.take(n, field)
    }

    /// A byte string with a 32-bit length.
    pub(crate) fn bytes32(&mut self, field: &'static str) -> Result<&'a [u8], BodyError> {
        let n = self.u32(field)? as usize;
        self.take(n, field)
    }

    /// UTF-8 text with a 16-bit length.
    pub(crate) fn text(&mut self, field: &'static str) -> Result<String, BodyError> {
        let b = self.bytes16(field)?;
        String::from_utf8(b.to_vec()).map_err(|_| BodyError::NotUtf8(field))
    }

    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.rest)
    }

    /// Fails when bytes are left over: a body has exactly its fields.
    pub(crate) fn finish(self) -> Result<(), BodyError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(BodyError::TrailingBytes(self.rest.len()))
        }
    }
}

/// Appends fields to a body.
pub(crate) trait Put {
    fn u16_be(&mut self, v: u16);
    fn bytes16(&mut self, b: &[u8]);
    fn bytes32(&mut self, b: &[u8]);
}

impl Put for Vec<u8> {
    fn u16_be(&mut self, v: u16) {
        self.extend_from_slice(&v.to_be_bytes());
    }
    fn bytes16(&mut self, b: &[u8]) {
        let n = u16::try_from(b.len()).expect("callers check 16-bit fields");
        self.u16_be(n);
        self.extend_from_slice(b);
    }
    fn bytes32(&mut self, b: &[u8]) {
        let n = u32::try_from(b.len()).expect("bodies are at most MAX_BODY");
        self.extend_from_slice(&n.to_be_bytes());
        self.extend_from_slice(b);
    }
}
