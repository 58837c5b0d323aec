//! What the status page says about a certificate, read from its DER with
//! the same facts `sealtls inspect` prints.
use rustls_pki_types::CertificateDer;
use sealtls_pki::inspect::CertFacts;
use serde::Serialize;

/// A certificate being served.
#[derive(Clone, Debug, Serialize)]
pub struct Certificate {
    /// Subject name.
    pub subject: String,
    /// Subject alternative names (`DNS:…`, `IP:…`).
    pub sans: Vec<String>,
    /// SHA-256 over the DER, hex with colons.
    pub sha256: String,
    /// End of validity, RFC 3339.
    pub not_after: String,
    /// Whole days until expiry (negative once expired).
    pub days_left: i64,
    /// Seconds from now until expiry (negative once expired).
    #[serde(skip)]
    pub expires_in: i64,
}

impl Certificate {
    /// The facts of a DER certificate, or why it could not be read.
    pub fn of(der: &CertificateDer<'_>) -> Result<Self, String> {
        let facts = CertFacts::from_der(der)?;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
        Ok(Self {
            subject: facts.subject,
            sans: facts.sans,
            sha256: facts.sha256,
            not_after: facts.not_after,
            days_left: facts.days_left,
            expires_in: facts.validity.1 - now,
        })
    }
}

/// A trust anchor (a CA whose certificates are accepted).
#[derive(Clone, Debug, Serialize)]
pub struct Anchor {
    /// Subject name.
    pub subject: String,
    /// SHA-256 over the DER, hex with colons.
    pub sha256: String,
}

impl Anchor {
    /// The anchor of a DER CA certificate, or why it could not be read.
    pub fn of(der: &CertificateDer<'_>) -> Result<Self, String> {
        let facts = CertFacts::from_der(der)?;
        Ok(Self { subject: facts.subject, sha256: facts.sha256 })
    }
}
