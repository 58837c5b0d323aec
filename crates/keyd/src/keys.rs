//! Keys as custody sees them: what they are, what they may sign, and the
//! check that a certificate chain belongs to a key and a domain.
use std::sync::Arc;

use aws_lc_rs::digest::{digest, SHA256};
use rustls::SignatureScheme;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
pub use sealtls_custody_proto::Family;
use sealtls_custody_proto::{KeyId, Scheme};
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
    /// The backend failed.
    #[error("{0}")]
    Failed(String),
}

/// A private key that custody can sign with.
pub trait Sign: Send + Sync {
    /// Signs `message` (the whole message; hashing is part of the scheme).
    fn sign(&self, scheme: Scheme, message: &[u8]) -> Result<Vec<u8>, SignError>;
    /// Whether a signature takes long enough (RSA, a token) to belong on a blocking thread.
    fn is_slow(&self) -> bool;
}

/// A key held in this process's memory by aws-lc-rs (via rustls's provider).
pub struct MemoryKey {
    key: Arc<dyn rustls::sign::SigningKey>,
    info: KeyInfo,
}

impl MemoryKey {
    /// Parses a private key (PKCS#8, SEC1 or PKCS#1 DER). The caller zeroizes `der`.
    pub fn new(der: &PrivateKeyDer<'_>, origin: &str) -> Result<Self, StoreError> {
        let key = sealtls_pki::load::signing_key(der, origin).map_err(|e| StoreError::Invalid(Problem::of(&e)))?;
        let spki = key.public_key().ok_or_else(|| StoreError::invalid(format!("{origin}: the public key cannot be derived")))?;
        let info = KeyInfo::from_spki(spki.as_ref().to_vec())?;
        Ok(Self { key, info })
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
}
