//! What a key store offers custody, whatever holds the private keys.
use std::sync::Arc;

use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sealtls_pki::issue::KeyType;

use crate::error::StoreError;
use crate::keys::{KeyInfo, Sign};

/// Whether an entry's key can be used.
#[derive(Clone)]
pub enum State {
    /// Ready to sign.
    Ready(Arc<dyn Sign>),
    /// Present but unusable, and why (tampered file, missing token object).
    Unavailable(String),
}

/// One installed domain.
#[derive(Clone)]
pub struct Entry {
    /// The installed name (may be `*.parent`).
    pub domain: String,
    /// The key; for an unusable entry, what its header claims.
    pub key: KeyInfo,
    /// Leaf first; empty for a generated key still waiting for its certificate.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's notAfter, Unix seconds.
    pub not_after: Option<i64>,
    /// Where the key lives, for people and for PKCS#11 URIs.
    pub location: Location,
    /// Usable or not.
    pub state: State,
}

/// Where an entry's private key is kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// A sealed file in the data directory.
    SealedFile(std::path::PathBuf),
    /// An object on a PKCS#11 token.
    Token {
        /// The token's label.
        token: String,
        /// The key object's CKA_LABEL.
        label: String,
        /// The key object's CKA_ID.
        id: Vec<u8>,
    },
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::SealedFile(p) => write!(f, "sealed file {}", p.display()),
            Self::Token { token, label, .. } => write!(f, "token {token}, object {label}"),
        }
    }
}

/// A store of keys and chains.
pub trait Backend: Send + Sync {
    /// For logs: "sealed files in DIR", "PKCS#11 token T".
    fn describe(&self) -> String;
    /// The kind of store, for metrics: `sealed-file`, `tpm` or `pkcs11`.
    fn kind(&self) -> &'static str;
    /// Every entry, usable or not.
    fn load(&self) -> Result<Vec<Entry>, StoreError>;
    /// Installs `key` with `chain` (already checked to match) for `domain`, replacing what was there.
    fn put(&self, domain: &str, key: &PrivateKeyDer<'_>, chain: &[CertificateDer<'static>]) -> Result<Entry, StoreError>;
    /// Replaces the chain of `entry`'s key (one made by [`Backend::generate`]).
    fn put_chain(&self, entry: &Entry, chain: &[CertificateDer<'static>]) -> Result<Entry, StoreError>;
    /// Makes a key of `key_type` for `domain` inside the store; returns it and a CSR (DER) signed by it.
    fn generate(&self, domain: &str, key_type: KeyType) -> Result<(Entry, Vec<u8>), StoreError>;
    /// Removes `entry`.
    fn remove(&self, entry: &Entry) -> Result<(), StoreError>;
}

/// Makes a CSR naming `domain` (CN and subjectAltName), signed by `key`.
pub fn csr_for(domain: &str, key: &impl rcgen::SigningKey) -> Result<Vec<u8>, StoreError> {
    let mut params = rcgen::CertificateParams::new(vec![domain.to_string()]).map_err(|e| StoreError::invalid(format!("{domain}: {e}")))?;
    params.distinguished_name.push(rcgen::DnType::CommonName, domain);
    let csr = params.serialize_request(key).map_err(|e| StoreError::invalid(format!("cannot make a CSR for {domain}: {e}")))?;
    Ok(csr.der().to_vec())
}
