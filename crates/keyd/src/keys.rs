//! Keys as custody sees them: what they are, what they may sign, and the
//! check that a certificate chain belongs to a key and a domain.
use std::sync::Arc;

use aws_lc_rs::digest::{digest, Digest, SHA256, SHA384, SHA512};
use aws_lc_rs::rsa::KeyPair as RsaKeyPair;
use aws_lc_rs::signature::{
    EcdsaKeyPair, RsaEncoding, ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P384_SHA384_ASN1_SIGNING, RSA_PKCS1_SHA256, RSA_PKCS1_SHA384,
    RSA_PKCS1_SHA512, RSA_PSS_SHA256, RSA_PSS_SHA384, RSA_PSS_SHA512,
};
use rustls::SignatureScheme;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sealtls_custody_proto::der::{self, DigestHash};
pub use sealtls_custody_proto::Family;
use sealtls_custody_proto::{DigestSigning, KeyId, Scheme};
use sealtls_failure::Problem;
use sealtls_pki::inspect::{describe_spki, CertFacts};
use x509_parser::prelude::FromDer;
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::error::StoreError;

/// A key's id: SHA-256 of its SubjectPublicKeyInfo DER.
pub fn key_id(spki: &[u8]) -> KeyId {
    KeyId(digest(&SHA256, spki).as_ref().try_into().expect("SHA-256 is 32 bytes"))
}

/// What is known about a key without touching its private half.
#[derive(Clone, Debug)]
pub struct KeyInfo {
    /// SHA-256 of the SPKI.
    pub id: KeyId,
    /// SubjectPublicKeyInfo DER.
    pub spki: Vec<u8>,
    /// For people: "ECDSA P-256", "RSA 2048".
    pub description: String,
    /// For signing.
    pub family: Family,
}

impl KeyInfo {
    /// Describes a public key.
    pub fn from_spki(spki: Vec<u8>) -> Result<Self, StoreError> {
        let (_, parsed) =
            SubjectPublicKeyInfo::from_der(&spki).map_err(|e| StoreError::invalid(format!("public key does not parse: {e}")))?;
        let (description, _) = describe_spki(&parsed);
        let family = Family::from_description(&description);
        Ok(Self { id: key_id(&spki), spki, description, family })
    }

    /// A key known only by the id an unusable entry claims.
    pub fn unknown(id: KeyId) -> Self {
        Self { id, spki: Vec::new(), description: "unknown".into(), family: Family::Other }
    }
}

/// Why a signature was not made.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// The key cannot make this scheme.
    #[error("a {key} key cannot sign with {scheme:?}")]
    SchemeMismatch {
        /// The key's description.
        key: String,
        /// The scheme asked for.
        scheme: Scheme,
    },
    /// A SIGN_DIGEST input this key cannot sign: the wrong way for the key, or a digest of the wrong size.
    #[error("{0}")]
    DigestMismatch(String),
    /// The backend failed.
    #[error("{0}")]
    Failed(String),
}

/// Checks a SIGN_DIGEST input against a key of `family` (described as
/// `key`); returns the hash it was made with and the bare digest.
pub fn checked_digest<'a>(family: Family, key: &str, how: DigestSigning, input: &'a [u8]) -> Result<(DigestHash, &'a [u8]), SignError> {
    let mismatch = |why: String| SignError::DigestMismatch(format!("a {key} key cannot sign this {} input: {why}", how.name()));
    if !family.allows_digest(how) {
        return Err(mismatch("that way of signing is for another kind of key".into()));
    }
    let hash = match (how, family) {
        (DigestSigning::Ecdsa, Family::EcdsaP256) => DigestHash::Sha256,
        (DigestSigning::Ecdsa, _) => DigestHash::Sha384,
        (DigestSigning::RsaPkcs1, _) => return der::digest_info(input).map_err(|e| mismatch(format!("not a DigestInfo ({e})"))),
        (DigestSigning::RsaPssSha256, _) => DigestHash::Sha256,
        (DigestSigning::RsaPssSha384, _) => DigestHash::Sha384,
        (DigestSigning::RsaPssSha512, _) => DigestHash::Sha512,
    };
    if input.len() != hash.output_len() {
        return Err(mismatch(format!("it takes a {}-byte {hash:?} digest, not {} bytes", hash.output_len(), input.len())));
    }
    Ok((hash, input))
}

/// A private key that custody can sign with.
pub trait Sign: Send + Sync {
    /// Signs `message` (the whole message; hashing is part of the scheme).
    fn sign(&self, scheme: Scheme, message: &[u8]) -> Result<Vec<u8>, SignError>;
    /// Signs a digest the caller made (SIGN_DIGEST); ECDSA signatures are DER.
    fn sign_digest(&self, how: DigestSigning, input: &[u8]) -> Result<Vec<u8>, SignError>;
    /// Whether a signature takes long enough (RSA, a token) to belong on a blocking thread.
    fn is_slow(&self) -> bool;
}

/// A key held in this process's memory by aws-lc-rs (via rustls's provider).
pub struct MemoryKey {
    key: Arc<dyn rustls::sign::SigningKey>,
    /// The same key as aws-lc-rs signs digests with; Ed25519 has none (it signs messages only).
    digest_key: Option<DigestKey>,
    info: KeyInfo,
}

enum DigestKey {
    Ecdsa(EcdsaKeyPair),
    Rsa(RsaKeyPair),
}

impl DigestKey {
    fn new(der: &PrivateKeyDer<'_>, family: Family) -> Option<Self> {
        match (family, der) {
            (Family::EcdsaP256, _) => {
                EcdsaKeyPair::from_private_key_der(&ECDSA_P256_SHA256_ASN1_SIGNING, der.secret_der()).ok().map(Self::Ecdsa)
            }
            (Family::EcdsaP384, _) => {
                EcdsaKeyPair::from_private_key_der(&ECDSA_P384_SHA384_ASN1_SIGNING, der.secret_der()).ok().map(Self::Ecdsa)
            }
            (Family::Rsa, PrivateKeyDer::Pkcs1(k)) => RsaKeyPair::from_der(k.secret_pkcs1_der()).ok().map(Self::Rsa),
            (Family::Rsa, PrivateKeyDer::Pkcs8(k)) => RsaKeyPair::from_pkcs8(k.secret_pkcs8_der()).ok().map(Self::Rsa),
            _ => None,
        }
    }

    fn sign(&self, how: DigestSigning, hash: DigestHash, digest: &[u8]) -> Result<Vec<u8>, SignError> {
        let failed = || SignError::Failed(format!("aws-lc refused to sign the {} digest", how.name()));
        let algorithm = match hash {
            DigestHash::Sha256 => &SHA256,
            DigestHash::Sha384 => &SHA384,
            DigestHash::Sha512 => &SHA512,
        };
        let digest = Digest::import_less_safe(digest, algorithm).map_err(|_| failed())?;
        match self {
            Self::Ecdsa(key) => Ok(key.sign_digest(&digest).map_err(|_| failed())?.as_ref().to_vec()),
            Self::Rsa(key) => {
                let padding: &'static dyn RsaEncoding = match (how, hash) {
                    (DigestSigning::RsaPkcs1, DigestHash::Sha256) => &RSA_PKCS1_SHA256,
                    (DigestSigning::RsaPkcs1, DigestHash::Sha384) => &RSA_PKCS1_SHA384,
                    (DigestSigning::RsaPkcs1, DigestHash::Sha512) => &RSA_PKCS1_SHA512,
                    (_, DigestHash::Sha256) => &RSA_PSS_SHA256,
                    (_, DigestHash::Sha384) => &RSA_PSS_SHA384,
                    (_, DigestHash::Sha512) => &RSA_PSS_SHA512,
                };
                let mut signature = vec![0; key.public_modulus_len()];
                key.sign_digest(padding, &digest, &mut signature).map_err(|_| failed())?;
                Ok(signature)
            }
        }
    }
}

impl MemoryKey {
    /// Parses a private key (PKCS#8, SEC1 or PKCS#1 DER). The caller zeroizes `der`.
    pub fn new(der: &PrivateKeyDer<'_>, origin: &str) -> Result<Self, StoreError> {
        let key = sealtls_pki::load::signing_key(der, origin).map_err(|e| StoreError::Invalid(Problem::of(&e)))?;
        let spki = key.public_key().ok_or_else(|| StoreError::invalid(format!("{origin}: the public key cannot be derived")))?;
        let info = KeyInfo::from_spki(spki.as_ref().to_vec())?;
        let digest_key = DigestKey::new(der, info.family);
        if digest_key.is_none() && matches!(info.family, Family::EcdsaP256 | Family::EcdsaP384 | Family::Rsa) {
            return Err(StoreError::invalid(format!("{origin}: aws-lc-rs cannot load this {} key to sign digests", info.description)));
        }
        Ok(Self { key, digest_key, info })
    }

    /// What the key is.
    pub fn info(&self) -> &KeyInfo {
        &self.info
    }
}

impl Sign for MemoryKey {
    fn sign(&self, scheme: Scheme, message: &[u8]) -> Result<Vec<u8>, SignError> {
        let mismatch = || SignError::SchemeMismatch { key: self.info.description.clone(), scheme };
        if !self.info.family.allows(scheme) {
            return Err(mismatch());
        }
        let signer = self.key.choose_scheme(&[SignatureScheme::from(scheme as u16)]).ok_or_else(mismatch)?;
        signer.sign(message).map_err(|e| SignError::Failed(e.to_string()))
    }

    fn sign_digest(&self, how: DigestSigning, input: &[u8]) -> Result<Vec<u8>, SignError> {
        let (hash, digest) = checked_digest(self.info.family, &self.info.description, how, input)?;
        let key = self.digest_key.as_ref().ok_or_else(|| SignError::Failed("this key was not loaded for digest signing".into()))?;
        key.sign(how, hash, digest)
    }

    fn is_slow(&self) -> bool {
        self.info.family == Family::Rsa
    }
}

/// Whether a certificate name (possibly `*.parent`) covers an installed
/// domain (possibly `*.parent` too).
fn name_covers(san: &str, domain: &str) -> bool {
    let Some(san) = san.strip_prefix("DNS:").map(str::to_ascii_lowercase) else { return false };
    if san == domain {
        return true;
    }
    match (san.strip_prefix("*."), domain.split_once('.')) {
        (Some(parent), Some((first, rest))) => first != "*" && rest == parent,
        _ => false,
    }
}

/// Checks that `chain`'s leaf certifies `key` and names `domain`; returns
/// the leaf's notAfter (Unix seconds).
pub fn check_chain(domain: &str, key: &KeyInfo, chain: &[CertificateDer<'_>]) -> Result<i64, StoreError> {
    let leaf =
        chain.first().ok_or_else(|| StoreError::refused("the certificate chain is empty", "give the leaf first, then intermediates"))?;
    let facts = CertFacts::from_der(leaf).map_err(|e| StoreError::invalid(format!("the leaf certificate does not parse: {e}")))?;
    for (i, c) in chain.iter().enumerate().skip(1) {
        CertFacts::from_der(c).map_err(|e| StoreError::invalid(format!("certificate {} of the chain does not parse: {e}", i + 1)))?;
    }
    if facts.spki != key.spki {
        return Err(StoreError::refused(
            format!("the key does not match the certificate ({}, key id {}): the certificate certifies another key", facts.subject, key.id),
            "give the key the certificate was issued for, or reissue the certificate for this key",
        ));
    }
    if !facts.has_san_extension {
        return Err(StoreError::refused(
            format!(
                "the certificate ({}) has no subjectAltName, and modern clients match names only there, never in the CN",
                facts.subject
            ),
            format!(
                "reissue it with {domain} in subjectAltName: `sealtls pki issue server --dir DIR --name {domain}`, \
                 or `sealtls pki sign --dir DIR CSR --out CERT` for a key made by `sealtls key gen`, \
                 or with openssl, `subjectAltName = DNS:{domain}` in the file given to -extfile"
            ),
        ));
    }
    if !facts.sans.iter().any(|san| name_covers(san, domain)) {
        return Err(StoreError::refused(
            format!("the certificate ({}) does not name {domain}: its names are [{}]", facts.subject, facts.sans.join(", ")),
            format!("install it under one of those names, or reissue it with {domain} in subjectAltName"),
        ));
    }
    Ok(facts.validity.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_names_cover_domains() {
        assert!(name_covers("DNS:www.example.com", "www.example.com"));
        assert!(name_covers("DNS:WWW.example.com", "www.example.com"));
        assert!(name_covers("DNS:*.example.com", "www.example.com"));
        assert!(name_covers("DNS:*.example.com", "*.example.com"));
        assert!(!name_covers("DNS:*.example.com", "a.b.example.com"));
        assert!(!name_covers("DNS:*.example.com", "example.com"));
        assert!(!name_covers("DNS:www.example.com", "*.example.com"));
        assert!(!name_covers("IP:127.0.0.1", "127.0.0.1"));
    }

    #[test]
    fn memory_keys_sign_only_their_schemes() {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let der = PrivateKeyDer::Pkcs8(kp.serialize_der().into());
        let key = MemoryKey::new(&der, "test").unwrap();
        assert_eq!(key.info().family, Family::EcdsaP256);
        assert_eq!(key.info().description, "ECDSA P-256");
        let sig = key.sign(Scheme::EcdsaP256Sha256, b"message").unwrap();
        assert_eq!(sig[0], 0x30, "DER-encoded ECDSA signature");
        assert!(matches!(key.sign(Scheme::RsaPssSha256, b"m"), Err(SignError::SchemeMismatch { .. })));
        assert!(!key.is_slow());
    }

    #[test]
    fn memory_keys_sign_digests_that_verify() {
        use aws_lc_rs::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_ASN1, RSA_PKCS1_2048_8192_SHA256, RSA_PSS_2048_8192_SHA384};
        let message = b"the handshake transcript";
        let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let key = MemoryKey::new(&PrivateKeyDer::Pkcs8(ec.serialize_der().into()), "test").unwrap();
        let sig = key.sign_digest(DigestSigning::Ecdsa, digest(&SHA256, message).as_ref()).unwrap();
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, ec.public_key_raw()).verify(message, &sig).unwrap();
        let short = key.sign_digest(DigestSigning::Ecdsa, &[1; 20]);
        assert!(matches!(short, Err(SignError::DigestMismatch(m)) if m.contains("32-byte")));
        assert!(matches!(key.sign_digest(DigestSigning::RsaPkcs1, &[1; 51]), Err(SignError::DigestMismatch(_))));

        let rsa = rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048).unwrap();
        let key = MemoryKey::new(&PrivateKeyDer::Pkcs8(rsa.serialize_der().into()), "test").unwrap();
        let info = der::write_digest_info(DigestHash::Sha256, digest(&SHA256, message).as_ref());
        let sig = key.sign_digest(DigestSigning::RsaPkcs1, &info).unwrap();
        UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, rsa.public_key_raw()).verify(message, &sig).unwrap();
        let sig = key.sign_digest(DigestSigning::RsaPssSha384, digest(&SHA384, message).as_ref()).unwrap();
        UnparsedPublicKey::new(&RSA_PSS_2048_8192_SHA384, rsa.public_key_raw()).verify(message, &sig).unwrap();
    }
}
