//! A small development CA: create it, and issue server and client leaves.
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use time::{Duration, OffsetDateTime};
use zeroize::Zeroizing;

use crate::files::{write_atomic, WriteError};
use crate::load::{load_certs, load_key, LoadError};

/// Key algorithms the CA can generate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyType {
    /// ECDSA on NIST P-256 with SHA-256.
    EcdsaP256,
    /// ECDSA on NIST P-384 with SHA-384.
    EcdsaP384,
    /// Ed25519.
    Ed25519,
    /// RSA 2048-bit, PKCS#1 v1.5 with SHA-256.
    Rsa2048,
    /// RSA 3072-bit.
    Rsa3072,
    /// RSA 4096-bit.
    Rsa4096,
}

impl KeyType {
    /// Every key type, in the order shown to users.
    pub const ALL: [KeyType; 6] =
        [Self::EcdsaP256, Self::EcdsaP384, Self::Ed25519, Self::Rsa2048, Self::Rsa3072, Self::Rsa4096];

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::EcdsaP256 => "ecdsa-p256",
            Self::EcdsaP384 => "ecdsa-p384",
            Self::Ed25519 => "ed25519",
            Self::Rsa2048 => "rsa2048",
            Self::Rsa3072 => "rsa3072",
            Self::Rsa4096 => "rsa4096",
        }
    }

    /// Generates a fresh key pair of this type.
    pub fn generate(self) -> Result<KeyPair, rcgen::Error> {
        use rcgen::RsaKeySize as S;
        let rsa = |size| KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, size);
        match self {
            Self::EcdsaP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
            Self::EcdsaP384 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384),
            Self::Ed25519 => KeyPair::generate_for(&rcgen::PKCS_ED25519),
            Self::Rsa2048 => rsa(S::_2048),
            Self::Rsa3072 => rsa(S::_3072),
            Self::Rsa4096 => rsa(S::_4096),
        }
    }

    fn is_rsa(self) -> bool {
        matches!(self, Self::Rsa2048 | Self::Rsa3072 | Self::Rsa4096)
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for KeyType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL.into_iter().find(|k| k.name() == s).ok_or_else(|| {
            let names: Vec<_> = Self::ALL.iter().map(|k| k.name()).collect();
            format!("unknown key type `{s}`; choose one of {}", names.join(", "))
        })
    }
}

/// Which extended key usage a leaf gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeafKind {
    /// TLS server (serverAuth).
    Server,
    /// TLS client (clientAuth).
    Client,
}

/// Why issuance failed.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// The CA files could not be loaded.
    #[error("{0}; create the CA first with `sealtls pki init --dir DIR`")]
    Ca(#[source] LoadError),
    /// Writing an output file failed.
    #[error(transparent)]
    Write(#[from] WriteError),
    /// rcgen refused the parameters or key.
    #[error("cannot build certificate: {0}")]
    Build(#[from] rcgen::Error),
    /// A name or SAN that cannot be used.
    #[error("invalid {field} `{value}`: {why}")]
    InvalidInput {
        /// Which input.
        field: &'static str,
        /// The value given.
        value: String,
        /// What is wrong with it.
        why: &'static str,
    },
}

/// What a successful issuance wrote.
#[derive(Debug)]
pub struct Issued {
    /// Certificate (or chain, leaf first).
    pub cert_path: PathBuf,
    /// Private key, PKCS#8 PEM, mode 0600.
    pub key_path: PathBuf,
    /// The new certificate.
    pub cert: CertificateDer<'static>,
}

/// Paths of the CA inside a PKI directory.
pub fn ca_paths(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join("ca.pem"), dir.join("ca.key"))
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).expect("system randomness is available");
    bytes[0] &= 0x7f; // keep the DER integer positive
    SerialNumber::from_slice(&bytes)
}

fn base_params(cn: &str, days: u32) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    let now = OffsetDateTime::now_utc();
    // An hour of slack for peers whose clocks run behind.
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(i64::from(days));
    params.serial_number = Some(random_serial());
    params
}

fn refuse_existing(paths: &[&Path], force: bool) -> Result<(), IssueError> {
    match paths.iter().find(|p| !force && p.exists()) {
        Some(p) => Err(WriteError::Exists { path: p.to_path_buf() }.into()),
        None => Ok(()),
    }
}

fn write_pair(cert_path: &Path, cert_pem: &str, key_path: &Path, key: &KeyPair, force: bool) -> Result<(), IssueError> {
    let key_pem = Zeroizing::new(key.serialize_pem());
    write_atomic(key_path, key_pem.as_bytes(), 0o600, force)?;
    write_atomic(cert_path, cert_pem.as_bytes(), 0o644, force)?;
    Ok(())
}

/// Creates a self-signed CA in `dir` (ca.pem, ca.key), creating `dir` if needed.
pub fn init_ca(dir: &Path, cn: &str, key_type: KeyType, days: u32, force: bool) -> Result<Issued, IssueError> {
    let (cert_path, key_path) = ca_paths(dir);
    refuse_existing(&[&cert_path, &key_path], force)?;
    std::fs::create_dir_all(dir).map_err(|source| WriteError::Io { path: dir.to_owned(), source })?;
    let key = key_type.generate()?;
    let mut params = base_params(cn, days);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let cert = params.self_signed(&key)?;
    write_pair(&cert_path, &cert.pem(), &key_path, &key, force)?;
    Ok(Issued { cert_path, key_path, cert: cert.der().clone() })
}

fn parse_san(value: &str) -> Result<SanType, IssueError> {
    if let Ok(ip) = value.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let ok = !value.is_empty()
        && value.len() <= 253
        && value.split('.').enumerate().all(|(i, label)| {
            (label == "*" && i == 0)
                || (!label.is_empty() && label.len() <= 63 && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        });
    if !ok {
        return Err(IssueError::InvalidInput { field: "SAN", value: value.into(), why: "not a DNS name or IP address" });
    }
    let name = value.to_owned().try_into().map_err(IssueError::Build)?;
    Ok(SanType::DnsName(name))
}

/// The SANs a leaf gets when none are given: its name, plus the loopback
/// addresses for `localhost`.
pub fn default_sans(name: &str) -> Vec<String> {
    let mut sans = vec![name.to_owned()];
    if name == "localhost" {
        sans.extend(["127.0.0.1".to_owned(), "::1".to_owned()]);
    }
    sans
}

/// Issues a leaf signed by the CA in `dir`, writing `dir/NAME.pem` (leaf then
/// CA) and `dir/NAME.key`.
pub fn issue_leaf(
    dir: &Path,
    kind: LeafKind,
    name: &str,
    sans: &[String],
    key_type: KeyType,
    days: u32,
    force: bool,
) -> Result<Issued, IssueError> {
    if name.is_empty() || name.starts_with('.') || name.contains('/') {
        return Err(IssueError::InvalidInput { field: "name", value: name.into(), why: "must be a plain file name" });
    }
    let cert_path = dir.join(format!("{name}.pem"));
    let key_path = dir.join(format!("{name}.key"));
    refuse_existing(&[&cert_path, &key_path], force)?;

    let (ca_cert_path, ca_key_path) = ca_paths(dir);
    let ca_chain = load_certs(&ca_cert_path).map_err(IssueError::Ca)?;
    let ca_key = load_key(&ca_key_path).map_err(IssueError::Ca)?;
    let ca_key = KeyPair::try_from(&*ca_key)?;
    let issuer = Issuer::from_ca_cert_der(&ca_chain[0], ca_key)?;

    let mut params = base_params(name, days);
    let sans = if sans.is_empty() { default_sans(name) } else { sans.to_vec() };
    if kind == LeafKind::Server || sans.iter().any(|s| s != name) {
        params.subject_alt_names = sans.iter().map(|s| parse_san(s)).collect::<Result<_, _>>()?;
    } else if let Ok(san) = parse_san(name) {
        params.subject_alt_names = vec![san];
    }
    params.is_ca = IsCa::ExplicitNoCa;
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    if key_type.is_rsa() {
        params.key_usages.push(KeyUsagePurpose::KeyEncipherment);
    }
    params.extended_key_usages = vec![match kind {
        LeafKind::Server => ExtendedKeyUsagePurpose::ServerAuth,
        LeafKind::Client => ExtendedKeyUsagePurpose::ClientAuth,
    }];
    let key = key_type.generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    let mut chain_pem = cert.pem();
    for ca in &ca_chain {
        chain_pem.push_str(&pem_encode_cert(ca));
    }
    write_pair(&cert_path, &chain_pem, &key_path, &key, force)?;
    Ok(Issued { cert_path, key_path, cert: cert.der().clone() })
}

/// PEM-encodes one certificate.
pub fn pem_encode_cert(cert: &CertificateDer<'_>) -> String {
    pem_encode("CERTIFICATE", cert.as_ref())
}

/// PEM text of `der` under `label` ("CERTIFICATE REQUEST", ...), LF line endings.
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new(label, der), config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::load_certs_pem;

    #[test]
    fn ca_and_leaf_are_issued_and_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path(), "Test CA", KeyType::EcdsaP256, 30, false).unwrap();
        let leaf = issue_leaf(dir.path(), LeafKind::Server, "localhost", &[], KeyType::Ed25519, 10, false).unwrap();
        let chain = load_certs_pem(&std::fs::read(&leaf.cert_path).unwrap(), "chain").unwrap();
        assert_eq!(chain.len(), 2, "leaf then CA");
        assert!(matches!(
            issue_leaf(dir.path(), LeafKind::Server, "localhost", &[], KeyType::Ed25519, 10, false),
            Err(IssueError::Write(WriteError::Exists { .. }))
        ));
        assert!(init_ca(dir.path(), "again", KeyType::EcdsaP256, 30, false).is_err());
    }

    #[test]
    fn bad_san_is_refused() {
        assert!(parse_san("bad name").is_err());
        assert!(parse_san("*.example.com").is_ok());
        assert!(matches!(parse_san("::1"), Ok(SanType::IpAddress(_))));
    }
}
