//! Just enough DER for keys crossing into and out of PKCS#11: private keys
//! taken apart for a token import, public keys taken apart for token
//! attributes, ECDSA signatures between DER and raw `r || s`, and RSA
//! DigestInfo. Never panics on input.

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

/// Object identifiers used here (contents only, without tag and length).
pub mod oid {
    /// id-ecPublicKey.
    pub const EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
    /// secp256r1.
    pub const P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    /// secp384r1.
    pub const P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
    /// rsaEncryption.
    pub const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
    /// id-Ed25519.
    pub const ED25519: &[u8] = &[0x2b, 0x65, 0x70];
    /// SHA-256.
    pub const SHA256: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01];
    /// SHA-384.
    pub const SHA384: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02];
    /// SHA-512.
    pub const SHA512: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03];
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
        let len = rest[..n].iter().fold(0usize, |acc, b| (acc << 8) | *b as usize);
        // DER: the shortest form only.
        if rest[0] == 0 || len < 0x80 {
            return Err(DerError("a length not in its shortest form"));
        }
        (len, &rest[n..])
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

/// An ECDSA signature as raw `r || s`, each `half` bytes, from DER, as PKCS#11 returns it.
pub fn ecdsa_raw(sig: &[u8], half: usize) -> Result<Vec<u8>, DerError> {
    let (seq, rest) = expect(sig, tag::SEQUENCE)?;
    if !rest.is_empty() {
        return Err(DerError("bytes after the signature"));
    }
    let (r, seq) = expect(seq, tag::INTEGER)?;
    let (s, seq) = expect(seq, tag::INTEGER)?;
    if !seq.is_empty() {
        return Err(DerError("more than r and s"));
    }
    let mut out = vec![0; 2 * half];
    for (n, slot) in [(unsigned(r), 0), (unsigned(s), half)] {
        if n.len() > half {
            return Err(DerError("r or s longer than the curve's field"));
        }
        out[slot + half - n.len()..slot + half].copy_from_slice(n);
    }
    Ok(out)
}

/// The hashes a DigestInfo may name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DigestHash {
    /// SHA-256.
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
}

impl DigestHash {
    /// The digest's length in bytes.
    pub fn output_len(self) -> usize {
        match self {
            Self::Sha256 => 32,
            Self::Sha384 => 48,
            Self::Sha512 => 64,
        }
    }

    fn oid(self) -> &'static [u8] {
        match self {
            Self::Sha256 => oid::SHA256,
            Self::Sha384 => oid::SHA384,
            Self::Sha512 => oid::SHA512,
        }
    }
}

/// Reads a PKCS#1 DigestInfo (`SEQUENCE { AlgorithmIdentifier, OCTET STRING }`)
/// of SHA-256, SHA-384 or SHA-512, parameters NULL or absent; returns the
/// hash and the digest. Signers sign [`write_digest_info`]'s form of it.
pub fn digest_info(input: &[u8]) -> Result<(DigestHash, &[u8]), DerError> {
    let (seq, rest) = expect(input, tag::SEQUENCE)?;
    if !rest.is_empty() {
        return Err(DerError("bytes after the DigestInfo"));
    }
    let (alg, seq) = expect(seq, tag::SEQUENCE)?;
    let (digest, seq) = expect(seq, tag::OCTET_STRING)?;
    if !seq.is_empty() {
        return Err(DerError("more than an algorithm and a digest"));
    }
    let (id, params) = expect(alg, tag::OID)?;
    if !(params.is_empty() || params == [tag::NULL, 0]) {
        return Err(DerError("hash parameters other than NULL"));
    }
    let hash = [DigestHash::Sha256, DigestHash::Sha384, DigestHash::Sha512]
        .into_iter()
        .find(|h| h.oid() == id)
        .ok_or(DerError("a hash other than SHA-256, SHA-384 or SHA-512"))?;
    if digest.len() != hash.output_len() {
        return Err(DerError("a digest of the wrong length for its hash"));
    }
    Ok((hash, digest))
}

/// A DigestInfo for `digest` made with `hash`.
pub fn write_digest_info(hash: DigestHash, digest: &[u8]) -> Vec<u8> {
    let mut alg = write(tag::OID, hash.oid());
    alg.extend([tag::NULL, 0]);
    let mut body = write(tag::SEQUENCE, &alg);
    body.extend(write(tag::OCTET_STRING, digest));
    write(tag::SEQUENCE, &body)
}

/// A public key taken apart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PublicKeyParts<'a> {
    /// An EC key: the curve's OID contents and the uncompressed point.
    Ec {
        /// The named curve.
        curve: &'a [u8],
        /// `04 || x || y`.
        point: &'a [u8],
    },
    /// An RSA key, as unsigned big-endian numbers.
    Rsa {
        /// The modulus.
        modulus: &'a [u8],
        /// The public exponent.
        exponent: &'a [u8],
    },
    /// An Ed25519 key: its 32 bytes.
    Ed25519(&'a [u8]),
}

/// Takes a SubjectPublicKeyInfo apart.
pub fn public_key_parts(spki: &[u8]) -> Result<PublicKeyParts<'_>, DerError> {
    let (seq, _) = expect(spki, tag::SEQUENCE)?;
    let (alg, seq) = expect(seq, tag::SEQUENCE)?;
    let (bits, _) = expect(seq, tag::BIT_STRING)?;
    let key = bits.strip_prefix(&[0]).ok_or(DerError("a public key with unused bits"))?;
    let (id, params) = expect(alg, tag::OID)?;
    match id {
        oid::EC_PUBLIC_KEY => Ok(PublicKeyParts::Ec { curve: expect(params, tag::OID)?.0, point: key }),
        oid::RSA => {
            let (rsa, _) = expect(key, tag::SEQUENCE)?;
            let (modulus, rsa) = expect(rsa, tag::INTEGER)?;
            let (exponent, _) = expect(rsa, tag::INTEGER)?;
            Ok(PublicKeyParts::Rsa { modulus: unsigned(modulus), exponent: unsigned(exponent) })
        }
        oid::ED25519 => Ok(PublicKeyParts::Ed25519(key)),
        _ => Err(DerError("a public key algorithm other than EC, RSA or Ed25519")),
    }
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
        assert!(read(&[4, 0x81, 3, 1, 1, 1]).is_err(), "a long form for a short length");
        assert!(read(&[4, 0x82, 0, 3, 1, 1, 1]).is_err(), "a leading zero length byte");
    }

    #[test]
    fn digest_info_is_the_one_pkcs1_names() {
        // RFC 8017, 9.2 note 1: the SHA-256 DigestInfo prefix.
        let prefix = [0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20];
        let info = write_digest_info(DigestHash::Sha256, &[7; 32]);
        assert_eq!(&info[..19], prefix);
        assert!(digest_info(&info[..50]).is_err());
        assert_eq!(ecdsa_raw(&[0x30, 7, 2, 2, 0, 0x80, 2, 1, 1], 2).unwrap(), [0, 0x80, 0, 1]);
        assert!(ecdsa_raw(&[0x30, 7, 2, 2, 0, 0x80, 2, 1, 1], 0).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok((tlv, rest)) = read(&bytes) {
                prop_assert!(tlv.value.len() + rest.len() < bytes.len());
                let _ = items(tlv.value);
            }
            let _ = ecdsa_signature(&bytes);
            let _ = ecdsa_raw(&bytes, 32);
            let _ = digest_info(&bytes);
            let _ = public_key_parts(&bytes);
        }

        #[test]
        fn ecdsa_signatures_convert_both_ways(r in proptest::collection::vec(any::<u8>(), 32), s in proptest::collection::vec(any::<u8>(), 32)) {
            let raw = [r, s].concat();
            let der = ecdsa_signature(&raw).unwrap();
            prop_assert_eq!(ecdsa_raw(&der, 32).unwrap(), raw);
        }

        #[test]
        fn digest_infos_round_trip(digest in proptest::collection::vec(any::<u8>(), 48)) {
            let info = write_digest_info(DigestHash::Sha384, &digest);
            prop_assert_eq!(digest_info(&info).unwrap(), (DigestHash::Sha384, &digest[..]));
        }
    }
}
