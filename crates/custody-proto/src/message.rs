//! Requests and responses: what goes in a frame's kind byte and body.
use zeroize::Zeroizing;

use crate::code::ErrorCode;
use crate::frame::{encode_frame, Frame, MAX_BODY};
use crate::wire::{BodyError, Put, Reader};

/// Kind byte of a successful response: the request's operation with the top bit set.
pub const RESPONSE_FLAG: u8 = 0x80;
/// Kind byte of an error response.
pub const ERROR_KIND: u8 = 0xFF;

/// Operations. Those from 0x10 up provision keys and need an admin caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Op {
    /// Echo a payload back.
    Ping = 0x01,
    /// Sign a message with a key.
    Sign = 0x02,
    /// A key's public key (SubjectPublicKeyInfo DER).
    PublicKey = 0x03,
    /// A key's certificate chain.
    Chain = 0x04,
    /// Sign a digest made by the caller (for PKCS#11 consumers).
    SignDigest = 0x05,
    /// The keys this caller may use, with public keys and chains.
    Keys = 0x06,
    /// Install a key and its chain, or a chain for a key generated in custody.
    Put = 0x10,
    /// Whether a domain has a key.
    Has = 0x11,
    /// Remove a domain's key.
    Remove = 0x12,
    /// Generate a key in custody and return a CSR for it.
    Generate = 0x13,
    /// Every installed domain.
    List = 0x14,
}

impl Op {
    /// Every operation.
    pub const ALL: [Self; 11] = [
        Self::Ping,
        Self::Sign,
        Self::PublicKey,
        Self::Chain,
        Self::SignDigest,
        Self::Keys,
        Self::Put,
        Self::Has,
        Self::Remove,
        Self::Generate,
        Self::List,
    ];

    /// The operation for a kind byte.
    pub fn from_u8(b: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|op| *op as u8 == b)
    }

    /// Whether the operation changes or reveals the key inventory.
    pub fn is_admin(self) -> bool {
        self as u8 >= 0x10
    }

    /// The name used in the spec and in logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ping => "PING",
            Self::Sign => "SIGN",
            Self::PublicKey => "PUBLIC_KEY",
            Self::Chain => "CHAIN",
            Self::SignDigest => "SIGN_DIGEST",
            Self::Keys => "KEYS",
            Self::Put => "PUT",
            Self::Has => "HAS",
            Self::Remove => "REMOVE",
            Self::Generate => "GENERATE",
            Self::List => "LIST",
        }
    }
}

/// Signature schemes, numbered as TLS SignatureScheme code points.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Scheme {
    /// RSA PKCS#1 v1.5 with SHA-256.
    RsaPkcs1Sha256 = 0x0401,
    /// RSA PKCS#1 v1.5 with SHA-384.
    RsaPkcs1Sha384 = 0x0501,
    /// RSA PKCS#1 v1.5 with SHA-512.
    RsaPkcs1Sha512 = 0x0601,
    /// ECDSA P-256 with SHA-256, DER signature.
    EcdsaP256Sha256 = 0x0403,
    /// ECDSA P-384 with SHA-384, DER signature.
    EcdsaP384Sha384 = 0x0503,
    /// RSA-PSS (rsaEncryption key) with SHA-256, salt length 32.
    RsaPssSha256 = 0x0804,
    /// RSA-PSS with SHA-384, salt length 48.
    RsaPssSha384 = 0x0805,
    /// RSA-PSS with SHA-512, salt length 64.
    RsaPssSha512 = 0x0806,
    /// Ed25519.
    Ed25519 = 0x0807,
}

impl Scheme {
    /// Every scheme.
    pub const ALL: [Self; 9] = [
        Self::RsaPkcs1Sha256,
        Self::RsaPkcs1Sha384,
        Self::RsaPkcs1Sha512,
        Self::EcdsaP256Sha256,
        Self::EcdsaP384Sha384,
        Self::RsaPssSha256,
        Self::RsaPssSha384,
        Self::RsaPssSha512,
        Self::Ed25519,
    ];

    /// The scheme for a code point.
    pub fn from_u16(n: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|s| *s as u16 == n)
    }
}

/// How SIGN_DIGEST signs a digest the caller made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum DigestSigning {
    /// ECDSA over the digest as given (SHA-256 for P-256, SHA-384 for P-384); DER signature.
    Ecdsa = 0x0001,
    /// RSA PKCS#1 v1.5 over a DigestInfo (DER) of SHA-256, SHA-384 or SHA-512.
    RsaPkcs1 = 0x0002,
    /// RSA-PSS over a SHA-256 digest, MGF1 with SHA-256, salt length 32.
    RsaPssSha256 = 0x0804,
    /// RSA-PSS over a SHA-384 digest, MGF1 with SHA-384, salt length 48.
    RsaPssSha384 = 0x0805,
    /// RSA-PSS over a SHA-512 digest, MGF1 with SHA-512, salt length 64.
    RsaPssSha512 = 0x0806,
}

impl DigestSigning {
    /// Every way.
    pub const ALL: [Self; 5] = [Self::Ecdsa, Self::RsaPkcs1, Self::RsaPssSha256, Self::RsaPssSha384, Self::RsaPssSha512];

    /// The way for a number.
    pub fn from_u16(n: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|s| *s as u16 == n)
    }

    /// The name used in the spec and in logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ecdsa => "ecdsa",
            Self::RsaPkcs1 => "rsa_pkcs1",
            Self::RsaPssSha256 => "rsa_pss_sha256",
            Self::RsaPssSha384 => "rsa_pss_sha384",
            Self::RsaPssSha512 => "rsa_pss_sha512",
        }
    }
}

/// The algorithm family of a key, which fixes the schemes it can sign.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// ECDSA on P-256.
    EcdsaP256,
    /// ECDSA on P-384.
    EcdsaP384,
    /// Ed25519.
    Ed25519,
    /// RSA (PKCS#1 v1.5 and PSS).
    Rsa,
    /// Anything else: stored, never used to sign.
    Other,
}

impl Family {
    /// The family for a key description as sealtls prints it ("ECDSA P-256", "RSA 2048", "Ed25519").
    pub fn from_description(description: &str) -> Self {
        match description {
            "ECDSA P-256" => Self::EcdsaP256,
            "ECDSA P-384" => Self::EcdsaP384,
            "Ed25519" => Self::Ed25519,
            d if d.starts_with("RSA") => Self::Rsa,
            _ => Self::Other,
        }
    }

    /// The schemes a key of this family can make, best first.
    pub fn schemes(self) -> &'static [Scheme] {
        use Scheme as S;
        match self {
            Self::EcdsaP256 => &[S::EcdsaP256Sha256],
            Self::EcdsaP384 => &[S::EcdsaP384Sha384],
            Self::Ed25519 => &[S::Ed25519],
            Self::Rsa => &[S::RsaPssSha512, S::RsaPssSha384, S::RsaPssSha256, S::RsaPkcs1Sha512, S::RsaPkcs1Sha384, S::RsaPkcs1Sha256],
            Self::Other => &[],
        }
    }

    /// Whether a key of this family can make `scheme`.
    pub fn allows(self, scheme: Scheme) -> bool {
        self.schemes().contains(&scheme)
    }

    /// Whether a key of this family can sign a digest this way.
    pub fn allows_digest(self, how: DigestSigning) -> bool {
        match how {
            DigestSigning::Ecdsa => matches!(self, Self::EcdsaP256 | Self::EcdsaP384),
            _ => self == Self::Rsa,
        }
    }
}

/// A key's identity: SHA-256 of its SubjectPublicKeyInfo DER.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId(pub [u8; 32]);

impl std::fmt::Display for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// Which key a request means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selector {
    /// A server name, matched exactly first, then by wildcard.
    Domain(String),
    /// A key id.
    KeyId(KeyId),
    /// A PKCS#11 URI (RFC 7512) naming a token object by `object=` or `id=`.
    Pkcs11Uri(String),
}

/// A key's certificate chain as a server needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainInfo {
    /// The installed name that matched (`*.example.com` for a wildcard).
    pub domain: String,
    /// The key the chain's leaf certifies.
    pub key_id: KeyId,
    /// Changes whenever the domain's key or chain is replaced.
    pub generation: u64,
    /// Certificates, leaf first, DER.
    pub certs: Vec<Vec<u8>>,
}

/// One installed domain as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListEntry {
    /// The installed name.
    pub domain: String,
    /// For example "ECDSA P-256" or "RSA 2048".
    pub key_type: String,
    /// The key id.
    pub key_id: KeyId,
    /// The leaf's notAfter, Unix seconds; `None` before a chain is installed.
    pub not_after: Option<i64>,
    /// Where the key lives, for example "sealed file" or "token sealtls".
    pub location: String,
    /// "ok", or why the key cannot be used.
    pub status: String,
}

/// One key a caller may use, as KEYS lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyEntry {
    /// The installed name.
    pub domain: String,
    /// The key id.
    pub key_id: KeyId,
    /// SubjectPublicKeyInfo DER.
    pub spki: Vec<u8>,
    /// The leaf certificate, DER; empty before a chain is installed.
    pub leaf: Vec<u8>,
}

/// A request from a client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Echo the payload.
    Ping(Vec<u8>),
    /// Sign `message` (not a digest) with the selected key.
    Sign {
        /// Which key.
        key: Selector,
        /// How.
        scheme: Scheme,
        /// What.
        message: Vec<u8>,
    },
    /// The selected key's public key.
    PublicKey(Selector),
    /// The selected key's chain.
    Chain(Selector),
    /// Sign `digest`, made by the caller, with the selected key.
    SignDigest {
        /// Which key.
        key: Selector,
        /// How.
        how: DigestSigning,
        /// The digest (for RSA PKCS#1 v1.5, a DigestInfo).
        digest: Vec<u8>,
    },
    /// The keys the caller may use.
    Keys,
    /// Install `key` (PKCS#8 DER) with `chain` for `domain`; without a key,
    /// install a chain for the key already there (one made by GENERATE).
    Put {
        /// Name to install under.
        domain: String,
        /// PKCS#8 DER, or empty.
        key: Zeroizing<Vec<u8>>,
        /// Certificates, leaf first, DER.
        chain: Vec<Vec<u8>>,
    },
    /// Whether exactly this name has a key.
    Has(String),
    /// Remove exactly this name's key.
    Remove(String),
    /// Generate a key of `key_type` (as in `sealtls pki`, e.g. "ecdsa-p256") for `domain`.
    Generate {
        /// Name to install under.
        domain: String,
        /// Key type name.
        key_type: String,
    },
    /// Every installed domain.
    List,
}

/// A response from the daemon.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    /// PING's payload.
    Pong(Vec<u8>),
    /// The signature.
    Signature(Vec<u8>),
    /// The key id and SubjectPublicKeyInfo DER.
    PublicKey {
        /// Key id.
        key_id: KeyId,
        /// SubjectPublicKeyInfo DER.
        spki: Vec<u8>,
    },
    /// The chain.
    Chain(ChainInfo),
    /// The key a PUT installed.
    Stored(KeyId),
    /// HAS: whether the name has a key.
    Found(bool),
    /// REMOVE done.
    Removed,
    /// A PKCS#10 CSR (DER) for the generated key.
    Csr(Vec<u8>),
    /// LIST.
    List(Vec<ListEntry>),
    /// SIGN_DIGEST's signature.
    DigestSignature(Vec<u8>),
    /// KEYS.
    Keys(Vec<KeyEntry>),
    /// The request failed.
    Error {
        /// Why, as a code.
        code: ErrorCode,
        /// Why, in words, with what to do.
        message: String,
    },
}

fn put_selector(out: &mut Vec<u8>, s: &Selector) {
    match s {
        Selector::Domain(d) => {
            out.push(1);
            out.bytes16(d.as_bytes());
        }
        Selector::KeyId(id) => {
            out.push(2);
            out.bytes16(&id.0);
        }
        Selector::Pkcs11Uri(u) => {
            out.push(3);
            out.bytes16(u.as_bytes());
        }
    }
}

fn selector(r: &mut Reader<'_>) -> Result<Selector, BodyError> {
    let tag = r.u8("selector")?;
    let value = r.bytes16("selector")?;
    let text = || String::from_utf8(value.to_vec()).map_err(|_| BodyError::NotUtf8("selector"));
    match tag {
        1 => Ok(Selector::Domain(text()?)),
        2 => Ok(Selector::KeyId(key_id_from(value)?)),
        3 => Ok(Selector::Pkcs11Uri(text()?)),
        other => Err(BodyError::BadValue("selector", other as u32)),
    }
}

fn key_id_from(b: &[u8]) -> Result<KeyId, BodyError> {
    b.try_into().map(KeyId).map_err(|_| BodyError::BadValue("key id length", b.len() as u32))
}

fn key_id(r: &mut Reader<'_>) -> Result<KeyId, BodyError> {
    key_id_from(r.take(32, "key id")?)
}

fn put_certs(out: &mut Vec<u8>, certs: &[Vec<u8>]) {
    out.u16_be(certs.len() as u16);
    for c in certs {
        out.bytes32(c);
    }
}

fn certs(r: &mut Reader<'_>) -> Result<Vec<Vec<u8>>, BodyError> {
    let n = r.u16("certificate count")?;
    (0..n).map(|_| r.bytes32("certificate").map(<[u8]>::to_vec)).collect()
}

impl Request {
    /// The operation.
    pub fn op(&self) -> Op {
        match self {
            Self::Ping(_) => Op::Ping,
            Self::Sign { .. } => Op::Sign,
            Self::PublicKey(_) => Op::PublicKey,
            Self::Chain(_) => Op::Chain,
            Self::SignDigest { .. } => Op::SignDigest,
            Self::Keys => Op::Keys,
            Self::Put { .. } => Op::Put,
            Self::Has(_) => Op::Has,
            Self::Remove(_) => Op::Remove,
            Self::Generate { .. } => Op::Generate,
            Self::List => Op::List,
        }
    }

    /// Appends this request as a frame with request id `id`.
    pub fn encode(&self, id: u64, out: &mut Vec<u8>) {
        let mut body = Vec::new();
        match self {
            Self::Ping(p) => body.extend_from_slice(p),
            Self::Sign { key, scheme, message } => {
                put_selector(&mut body, key);
                body.u16_be(*scheme as u16);
                body.bytes32(message);
            }
            Self::PublicKey(s) | Self::Chain(s) => put_selector(&mut body, s),
            Self::SignDigest { key, how, digest } => {
                put_selector(&mut body, key);
                body.u16_be(*how as u16);
                body.bytes16(digest);
            }
            Self::Keys => {}
            Self::Put { domain, key, chain } => {
                body.bytes16(domain.as_bytes());
                body.bytes32(key);
                put_certs(&mut body, chain);
            }
            Self::Has(d) | Self::Remove(d) => body.bytes16(d.as_bytes()),
            Self::Generate { domain, key_type } => {
                body.bytes16(domain.as_bytes());
                body.bytes16(key_type.as_bytes());
            }
            Self::List => {}
        }
        encode_frame(out, self.op() as u8, id, &body);
        body.iter_mut().for_each(|b| *b = 0);
    }

    /// The request in a frame.
    pub fn decode(frame: &Frame<'_>) -> Result<Self, BodyError> {
        let op = Op::from_u8(frame.kind).ok_or(BodyError::UnknownKind(frame.kind))?;
        let mut r = Reader::new(frame.body);
        let req = match op {
            Op::Ping => Self::Ping(r.rest().to_vec()),
            Op::Sign => {
                let key = selector(&mut r)?;
                let n = r.u16("scheme")?;
                let scheme = Scheme::from_u16(n).ok_or(BodyError::BadValue("scheme", n as u32))?;
                Self::Sign { key, scheme, message: r.bytes32("message")?.to_vec() }
            }
            Op::PublicKey => Self::PublicKey(selector(&mut r)?),
            Op::Chain => Self::Chain(selector(&mut r)?),
            Op::SignDigest => {
                let key = selector(&mut r)?;
                let n = r.u16("digest signing")?;
                let how = DigestSigning::from_u16(n).ok_or(BodyError::BadValue("digest signing", n as u32))?;
                Self::SignDigest { key, how, digest: r.bytes16("digest")?.to_vec() }
            }
            Op::Keys => Self::Keys,
            Op::Put => Self::Put { domain: r.text("domain")?, key: Zeroizing::new(r.bytes32("key")?.to_vec()), chain: certs(&mut r)? },
            Op::Has => Self::Has(r.text("domain")?),
            Op::Remove => Self::Remove(r.text("domain")?),
            Op::Generate => Self::Generate { domain: r.text("domain")?, key_type: r.text("key type")? },
            Op::List => Self::List,
        };
        r.finish()?;
        Ok(req)
    }
}

impl Response {
    /// An error response.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Error { code, message: message.into() }
    }

    /// An error response in the protocol's form: what is wrong, then `"; "`
    /// and what to do (see [`message_parts`]).
    pub fn refusal(code: ErrorCode, what: &str, fix: &str) -> Self {
        Self::Error { code, message: format!("{what}; {fix}") }
    }

    /// The operation this response answers; `None` for errors.
    pub fn op(&self) -> Option<Op> {
        Some(match self {
            Self::Pong(_) => Op::Ping,
            Self::Signature(_) => Op::Sign,
            Self::PublicKey { .. } => Op::PublicKey,
            Self::Chain(_) => Op::Chain,
            Self::Stored(_) => Op::Put,
            Self::Found(_) => Op::Has,
            Self::Removed => Op::Remove,
            Self::Csr(_) => Op::Generate,
            Self::List(_) => Op::List,
            Self::DigestSignature(_) => Op::SignDigest,
            Self::Keys(_) => Op::Keys,
            Self::Error { .. } => return None,
        })
    }

    /// Appends this response as a frame answering request `id`.
    pub fn encode(&self, id: u64, out: &mut Vec<u8>) {
        let mut body = Vec::new();
        match self {
            Self::Pong(b) | Self::Signature(b) | Self::Csr(b) | Self::DigestSignature(b) => body.extend_from_slice(b),
            Self::PublicKey { key_id, spki } => {
                body.extend_from_slice(&key_id.0);
                body.extend_from_slice(spki);
            }
            Self::Chain(c) => {
                body.bytes16(c.domain.as_bytes());
                body.extend_from_slice(&c.key_id.0);
                body.extend_from_slice(&c.generation.to_be_bytes());
                put_certs(&mut body, &c.certs);
            }
            Self::Stored(id) => body.extend_from_slice(&id.0),
            Self::Found(f) => body.push(*f as u8),
            Self::Removed => {}
            Self::List(entries) => {
                body.extend_from_slice(&(entries.len() as u32).to_be_bytes());
                for e in entries {
                    body.bytes16(e.domain.as_bytes());
                    body.bytes16(e.key_type.as_bytes());
                    body.extend_from_slice(&e.key_id.0);
                    match e.not_after {
                        Some(t) => {
                            body.push(1);
                            body.extend_from_slice(&t.to_be_bytes());
                        }
                        None => body.push(0),
                    }
                    body.bytes16(e.location.as_bytes());
                    body.bytes16(e.status.as_bytes());
                }
            }
            Self::Keys(entries) => {
                body.extend_from_slice(&(entries.len() as u32).to_be_bytes());
                for e in entries {
                    body.bytes16(e.domain.as_bytes());
                    body.extend_from_slice(&e.key_id.0);
                    body.bytes16(&e.spki);
                    body.bytes32(&e.leaf);
                }
            }
            Self::Error { code, message } => {
                body.u16_be(*code as u16);
                let mut end = message.len().min(u16::MAX as usize);
                while !message.is_char_boundary(end) {
                    end -= 1;
                }
                body.bytes16(&message.as_bytes()[..end]);
            }
        }
        if body.len() > MAX_BODY {
            // Only a LIST or KEYS of thousands of domains gets here; say so rather than send a frame the peer refuses.
            return Self::error(ErrorCode::Internal, "response above the 1 MiB frame limit").encode(id, out);
        }
        let kind = self.op().map_or(ERROR_KIND, |op| op as u8 | RESPONSE_FLAG);
        encode_frame(out, kind, id, &body);
    }

    /// The response in a frame.
    pub fn decode(frame: &Frame<'_>) -> Result<Self, BodyError> {
        let mut r = Reader::new(frame.body);
        let resp = if frame.kind == ERROR_KIND {
            let code = ErrorCode::from_u16(r.u16("error code")?);
            Self::Error { code, message: r.text("error message")? }
        } else {
            let op = (frame.kind & RESPONSE_FLAG != 0)
                .then(|| Op::from_u8(frame.kind & !RESPONSE_FLAG))
                .flatten()
                .ok_or(BodyError::UnknownKind(frame.kind))?;
            match op {
                Op::Ping => Self::Pong(r.rest().to_vec()),
                Op::Sign => Self::Signature(r.rest().to_vec()),
                Op::SignDigest => Self::DigestSignature(r.rest().to_vec()),
                Op::Keys => {
                    let n = r.u32("entry count")?;
                    let mut entries = Vec::new();
                    for _ in 0..n {
                        entries.push(KeyEntry {
                            domain: r.text("domain")?,
                            key_id: key_id(&mut r)?,
                            spki: r.bytes16("public key")?.to_vec(),
                            leaf: r.bytes32("leaf certificate")?.to_vec(),
                        });
                    }
                    Self::Keys(entries)
                }
                Op::Generate => Self::Csr(r.rest().to_vec()),
                Op::PublicKey => Self::PublicKey { key_id: key_id(&mut r)?, spki: r.rest().to_vec() },
                Op::Chain => Self::Chain(ChainInfo {
                    domain: r.text("domain")?,
                    key_id: key_id(&mut r)?,
                    generation: r.u64("generation")?,
                    certs: certs(&mut r)?,
                }),
                Op::Put => Self::Stored(key_id(&mut r)?),
                Op::Has => match r.u8("found")? {
                    0 => Self::Found(false),
                    1 => Self::Found(true),
                    other => return Err(BodyError::BadValue("found", other as u32)),
                },
                Op::Remove => Self::Removed,
                Op::List => {
                    let n = r.u32("entry count")?;
                    let mut entries = Vec::new();
                    for _ in 0..n {
                        let domain = r.text("domain")?;
                        let key_type = r.text("key type")?;
                        let key_id = key_id(&mut r)?;
                        let not_after = match r.u8("has expiry")? {
                            0 => None,
                            1 => Some(r.u64("expiry")? as i64),
                            other => return Err(BodyError::BadValue("has expiry", other as u32)),
                        };
                        entries.push(ListEntry {
                            domain,
                            key_type,
                            key_id,
                            not_after,
                            location: r.text("location")?,
                            status: r.text("status")?,
                        });
                    }
                    Self::List(entries)
                }
            }
        };
        r.finish()?;
        Ok(resp)
    }
}

/// An error response's message read in the protocol's form: what is wrong
/// and, after the first `"; "`, what to do, when the daemon said.
pub fn message_parts(message: &str) -> (&str, Option<&str>) {
    match message.split_once("; ") {
        Some((what, fix)) => (what, Some(fix)),
        None => (message, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::decode_frame;
    use proptest::prelude::*;

    fn through_frames_req(r: &Request) -> Request {
        let mut out = Vec::new();
        r.encode(42, &mut out);
        let (frame, used) = decode_frame(&out).unwrap().unwrap();
        assert_eq!((frame.id, used), (42, out.len()));
        Request::decode(&frame).unwrap()
    }

    fn through_frames_resp(r: &Response) -> Response {
        let mut out = Vec::new();
        r.encode(u64::MAX, &mut out);
        let (frame, _) = decode_frame(&out).unwrap().unwrap();
        assert_eq!(frame.id, u64::MAX);
        Response::decode(&frame).unwrap()
    }

    #[test]
    fn every_request_round_trips() {
        let id = KeyId([7; 32]);
        let all = [
            Request::Ping(b"are you there".to_vec()),
            Request::Sign { key: Selector::Domain("www.example.com".into()), scheme: Scheme::EcdsaP256Sha256, message: vec![1; 130] },
            Request::Sign { key: Selector::KeyId(id), scheme: Scheme::RsaPssSha512, message: vec![] },
            Request::PublicKey(Selector::Pkcs11Uri("pkcs11:token=t;object=www".into())),
            Request::Chain(Selector::Domain("a.example.com".into())),
            Request::SignDigest { key: Selector::Domain("a.example.com".into()), how: DigestSigning::Ecdsa, digest: vec![3; 32] },
            Request::SignDigest { key: Selector::KeyId(id), how: DigestSigning::RsaPssSha384, digest: vec![4; 48] },
            Request::Keys,
            Request::Put { domain: "x.org".into(), key: Zeroizing::new(vec![9; 121]), chain: vec![vec![1; 300], vec![2; 400]] },
            Request::Put { domain: "x.org".into(), key: Zeroizing::new(vec![]), chain: vec![] },
            Request::Has("x.org".into()),
            Request::Remove("x.org".into()),
            Request::Generate { domain: "*.x.org".into(), key_type: "ecdsa-p384".into() },
            Request::List,
        ];
        for r in &all {
            assert_eq!(&through_frames_req(r), r);
        }
        let ops: std::collections::HashSet<_> = all.iter().map(Request::op).collect();
        assert_eq!(ops.len(), Op::ALL.len(), "every operation is covered");
    }

    #[test]
    fn every_response_round_trips() {
        let id = KeyId([3; 32]);
        let all = [
            Response::Pong(vec![1, 2]),
            Response::Signature(vec![0x30; 71]),
            Response::PublicKey { key_id: id, spki: vec![5; 91] },
            Response::Chain(ChainInfo { domain: "*.example.com".into(), key_id: id, generation: 9, certs: vec![vec![1; 10], vec![2; 20]] }),
            Response::Stored(id),
            Response::Found(true),
            Response::Found(false),
            Response::Removed,
            Response::Csr(vec![0x30; 200]),
            Response::DigestSignature(vec![0x30; 70]),
            Response::Keys(vec![
                KeyEntry { domain: "a.org".into(), key_id: id, spki: vec![0x30; 91], leaf: vec![1; 300] },
                KeyEntry { domain: "*.b.org".into(), key_id: id, spki: vec![0x30; 294], leaf: vec![] },
            ]),
            Response::List(vec![
                ListEntry {
                    domain: "a.org".into(),
                    key_type: "ECDSA P-256".into(),
                    key_id: id,
                    not_after: Some(-5),
                    location: "sealed file".into(),
                    status: "ok".into(),
                },
                ListEntry {
                    domain: "b.org".into(),
                    key_type: "RSA 2048".into(),
                    key_id: id,
                    not_after: None,
                    location: "token t".into(),
                    status: "no certificate".into(),
                },
            ]),
            Response::error(ErrorCode::KeyNotFound, "no key for c.org"),
        ];
        for r in &all {
            assert_eq!(&through_frames_resp(r), r);
        }
    }

    #[test]
    fn body_errors_name_the_field() {
        let frame = Frame { kind: Op::Sign as u8, id: 1, body: &[1, 0, 3, b'a', b'.'] };
        assert_eq!(Request::decode(&frame), Err(BodyError::Truncated("selector")));
        let frame = Frame { kind: Op::Has as u8, id: 1, body: &[0, 1, b'a', 0] };
        assert_eq!(Request::decode(&frame), Err(BodyError::TrailingBytes(1)));
        let frame = Frame { kind: Op::Sign as u8, id: 1, body: &[1, 0, 1, b'a', 0x12, 0x34, 0, 0, 0, 0] };
        assert_eq!(Request::decode(&frame), Err(BodyError::BadValue("scheme", 0x1234)));
        assert_eq!(Request::decode(&Frame { kind: 0x55, id: 1, body: &[] }), Err(BodyError::UnknownKind(0x55)));
        assert_eq!(Response::decode(&Frame { kind: 0x02, id: 1, body: &[] }), Err(BodyError::UnknownKind(0x02)));
    }

    #[test]
    fn admin_operations_are_the_provisioning_ones() {
        let admin: Vec<_> = Op::ALL.into_iter().filter(|o| o.is_admin()).collect();
        assert_eq!(admin, [Op::Put, Op::Has, Op::Remove, Op::Generate, Op::List]);
    }

    proptest! {
        #[test]
        fn arbitrary_bodies_never_panic(kind in any::<u8>(), body in proptest::collection::vec(any::<u8>(), 0..400)) {
            let frame = Frame { kind, id: 0, body: &body };
            if let Ok(req) = Request::decode(&frame) {
                // What decodes re-encodes to the same bytes.
                let mut out = Vec::new();
                req.encode(0, &mut out);
                prop_assert_eq!(&out[crate::HEADER_LEN..], &body[..]);
            }
            let _ = Response::decode(&frame);
        }

        #[test]
        fn sign_requests_round_trip(domain in "[a-z]{1,20}\\.[a-z]{2,5}", scheme in proptest::sample::select(Scheme::ALL.to_vec()), message in proptest::collection::vec(any::<u8>(), 0..600)) {
            let r = Request::Sign { key: Selector::Domain(domain), scheme, message };
            prop_assert_eq!(through_frames_req(&r), r);
        }
    }
}
