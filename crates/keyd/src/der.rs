//! Just enough DER to take private keys apart for a PKCS#11 import and to
//! put public keys and ECDSA signatures together. Never panics on input.

/// Why bytes are not the DER expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed DER: {0}")]
pub struct DerError(pub &'static str);

/// One tag-length-value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tlv<'a> {
    /// The tag byte.
    pub tag: u8,
    /// The contents.
    pub value: &'a [u8],
}

/// Tags used here.
pub mod tag {
    /// INTEGER.
    pub const INTEGER: u8 = 0x02;
    /// BIT STRING.
    pub const BIT_STRING: u8 = 0x03;
    /// OCTET STRING.
    pub const OCTET_STRING: u8 = 0x04;
    /// NULL.
    pub const NULL: u8 = 0x05;
    /// OBJECT IDENTIFIER.
    pub const OID: u8 = 0x06;
    /// SEQUENCE.
    pub const SEQUENCE: u8 = 0x30;
}

/// Reads one TLV; returns it and what follows.
pub fn read(input: &[u8]) -> Result<(Tlv<'_>, &[u8]), DerError> {
    let (&tag, rest) = input.split_first().ok_or(DerError("missing tag"))?;
    let (&first, rest) = rest.split_first().ok_or(DerError("missing length"))?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return Err(DerError("bad length"));
        }
        (rest[..n].iter().fold(0usize, |acc, b| (acc << 8) | *b as usize), &rest[n..])
    };
    if rest.len() < len {
        return Err(DerError("value runs past the end"));
    }
    Ok((Tlv { tag, value: &rest[..len] }, &rest[len..]))
}

/// Reads one TLV that must have `tag`.
pub fn expect(input: &[u8], tag: u8) -> Result<(&[u8], &[u8]), DerError> {
    let (tlv, rest) = read(input)?;
    if tlv.tag != tag {
        return Err(DerError("unexpected tag"));
    }
    Ok((tlv.value, rest))
}

/// The items of a SEQUENCE's contents.
pub fn items(mut value: &[u8]) -> Result<Vec<Tlv<'_>>, DerError> {
    let mut out = Vec::new();
    while !value.is_empty() {
        let (tlv, rest) = read(value)?;
        out.push(tlv);
        value = rest;
    }
    Ok(out)
}

/// Encodes a TLV.
pub fn write(tag: u8, value: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = value.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(value);
    out
}

/// An INTEGER's contents as an unsigned big-endian number without leading zeros.
pub fn unsigned(value: &[u8]) -> &[u8] {
    let skip = value.iter().take_while(|b| **b == 0).count().min(value.len().saturating_sub(1));
    &value[skip..]
}

/// An INTEGER holding an unsigned big-endian number.
pub fn write_unsigned(n: &[u8]) -> Vec<u8> {
    let n = unsigned(n);
    let mut v = Vec::with_capacity(n.len() + 1);
    if n.first().is_some_and(|b| b & 0x80 != 0) {
        v.push(0);
    }
    v.extend_from_slice(n);
    write(tag::INTEGER, &v)
}

/// An ECDSA signature as DER (`SEQUENCE { r, s }`) from the raw `r || s` a token returns.
pub fn ecdsa_signature(raw: &[u8]) -> Result<Vec<u8>, DerError> {
    if raw.is_empty() || raw.len() % 2 != 0 {
        return Err(DerError("raw ECDSA signature of odd length"));
    }
    let (r, s) = raw.split_at(raw.len() / 2);
    let mut body = write_unsigned(r);
    body.extend(write_unsigned(s));
    Ok(write(tag::SEQUENCE, &body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn lengths_and_integers() {
        assert_eq!(write(tag::OCTET_STRING, &[1; 3]), [4, 3, 1, 1, 1]);
        let long = write(tag::OCTET_STRING, &[0; 300]);
        assert_eq!(&long[..4], &[4, 0x82, 1, 44]);
        assert_eq!(read(&long).unwrap().0.value.len(), 300);
        assert_eq!(write_unsigned(&[0, 0, 0x80]), [2, 2, 0, 0x80]);
        assert_eq!(write_unsigned(&[0, 0x7f]), [2, 1, 0x7f]);
        assert_eq!(ecdsa_signature(&[0x80, 1]).unwrap(), [0x30, 7, 2, 2, 0, 0x80, 2, 1, 1]);
        assert!(read(&[4, 5, 1]).is_err());
        assert!(read(&[4, 0x85, 1, 1, 1, 1, 1]).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok((tlv, rest)) = read(&bytes) {
                prop_assert!(tlv.value.len() + rest.len() < bytes.len());
                let _ = items(tlv.value);
            }
            let _ = ecdsa_signature(&bytes);
        }
    }
}
