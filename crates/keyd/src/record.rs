//! Length-prefixed fields of what keyd stores (sealed entries, chain
//! objects on a token): a u32 length before byte strings, a u16 count
//! before certificate lists, all big-endian.
use rustls_pki_types::CertificateDer;

/// Appends a byte string with its u32 length.
pub fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_be_bytes());
    out.extend_from_slice(b);
}

/// Appends a certificate list: its u16 count, then each certificate as a byte string.
pub fn put_certs(out: &mut Vec<u8>, chain: &[CertificateDer<'_>]) {
    out.extend_from_slice(&(chain.len() as u16).to_be_bytes());
    for c in chain {
        put_bytes(out, c);
    }
}

/// Reads fields back; `None` when they run past the end.
pub struct Fields<'a> {
    rest: &'a [u8],
}

impl<'a> Fields<'a> {
    /// Fields of `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes }
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, tail) = (self.rest.get(..n)?, self.rest.get(n..)?);
        self.rest = tail;
        Some(head)
    }

    /// One byte.
    pub fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    /// A byte string written by [`put_bytes`].
    pub fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = u32::from_be_bytes(self.take(4)?.try_into().ok()?) as usize;
        self.take(n)
    }

    /// A certificate list written by [`put_certs`].
    pub fn certs(&mut self) -> Option<Vec<CertificateDer<'static>>> {
        let count = u16::from_be_bytes(self.take(2)?.try_into().ok()?);
        (0..count).map(|_| self.bytes().map(|c| CertificateDer::from(c.to_vec()))).collect()
    }

    /// Whether every byte was read.
    pub fn is_done(&self) -> bool {
        self.rest.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fields_round_trip() {
        let chain = vec![CertificateDer::from(vec![1, 2]), CertificateDer::from(vec![3; 300])];
        let mut out = vec![9];
        put_bytes(&mut out, b"key");
        put_certs(&mut out, &chain);
        let mut f = Fields::new(&out);
        assert_eq!((f.u8(), f.bytes(), f.certs()), (Some(9), Some(&b"key"[..]), Some(chain)));
        assert!(f.is_done());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            let mut f = Fields::new(&bytes);
            let _ = (f.u8(), f.bytes(), f.certs());
        }
    }
}
