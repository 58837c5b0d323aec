//! A small development CA: create it, and issue server and client leaves.
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use sealtls_failure::Remedy;
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
    pub const ALL: [KeyType; 6] = [Self::EcdsaP256, Self::EcdsaP384, Self::Ed25519, Self::Rsa2048, Self::Rsa3072, Self::Rsa4096];

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
    #[error("{0}")]
    Ca(#[source] LoadError),
    /// Writing an output file failed.
    #[error(transparent)]
    Write(#[from] WriteError),
    /// rcgen refused the parameters or key.
    #[error("cannot build certificate: {0}")]
    Build(#[from] rcgen::Error),
    /// A certificate signing request that cannot be signed.
    #[error("{origin}: {what}")]
    Csr {
        /// Where the CSR came from.
        origin: String,
        /// What is wrong with it.
        what: String,
        /// What to do.
        fix: String,
    },
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

impl Remedy for IssueError {
    fn fix(&self) -> Option<String> {
        const CREATE_CA: &str = "create the CA first with `sealtls pki init --dir DIR`";
        match self {
            // Creating the CA helps only when it is missing.
            Self::Ca(e @ LoadError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => Some(match e.fix() {
                Some(fix) => format!("{fix}; {CREATE_CA}"),
                None => CREATE_CA.into(),
            }),
            Self::Ca(e) => e.fix(),
            Self::Write(e) => e.fix(),
            Self::Csr { fix, .. } => Some(fix.clone()),
            Self::InvalidInput { field: "SAN", .. } => {
                Some("give a DNS name (letters, digits, hyphens; a leading `*.` for a wildcard) or an IP address".into())
            }
            Self::InvalidInput { .. } => Some("give a plain file name: no `/`, not starting with `.`".into()),
            Self::Build(_) => None,
        }
    }
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

/// Validity of a leaf when none is given, in days (`pki issue`, `pki sign`).
pub const DEFAULT_LEAF_DAYS: u32 = 365;

/// The common name every development CA starts from; [`default_ca_name`]
/// adds a random suffix so that two CAs never look alike.
pub const CA_NAME_PREFIX: &str = "sealtls development CA";

/// A fresh default CA name: `sealtls development CA` and six random hex
/// digits, e.g. `sealtls development CA 3f9a1c`.
pub fn default_ca_name() -> String {
    let mut bytes = [0u8; 3];
    aws_lc_rs::rand::fill(&mut bytes).expect("system randomness is available");
    format!("{CA_NAME_PREFIX} {:02x}{:02x}{:02x}", bytes[0], bytes[1], bytes[2])
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
    params.not_after = now.saturating_add(Duration::days(i64::from(days)));
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

/// A SAN that is neither a DNS name nor an IP address, as a person writes it.
fn other_san_text(san: &SanType) -> String {
    match san {
        SanType::Rfc822Name(m) => format!("email:{}", m.as_str()),
        SanType::URI(u) => format!("URI:{}", u.as_str()),
        other => format!("{other:?}"),
    }
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
    // All digits, as 300.1.1.1 or 1.2.3: a mistyped address, not a name.
    if value.split('.').all(|label| label.bytes().all(|b| b.is_ascii_digit())) {
        return Err(IssueError::InvalidInput { field: "SAN", value: value.into(), why: "looks like an IP address but is not one" });
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

    let (ca_chain, ca_key) = load_ca(dir)?;
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

/// The CA chain and key in `dir`; the key file must be readable by its owner only.
fn load_ca(dir: &Path) -> Result<(Vec<CertificateDer<'static>>, KeyPair), IssueError> {
    let (ca_cert_path, ca_key_path) = ca_paths(dir);
    let ca_chain = load_certs(&ca_cert_path).map_err(IssueError::Ca)?;
    let ca_key = load_key(&ca_key_path).map_err(IssueError::Ca)?;
    Ok((ca_chain, KeyPair::try_from(&*ca_key)?))
}

/// What [`sign_csr`] wrote.
#[derive(Debug)]
pub struct SignedCsr {
    /// The certificate file: leaf then CA.
    pub cert_path: PathBuf,
    /// The new certificate.
    pub cert: CertificateDer<'static>,
    /// Its subjectAltName entries, as given to it.
    pub sans: Vec<String>,
    /// Where the names came from: `--san`, the CSR's subjectAltName, or its CN.
    pub sans_from: &'static str,
}

/// The DER inside a CSR file: PEM (`CERTIFICATE REQUEST` or `NEW CERTIFICATE
/// REQUEST`) or DER as it is.
fn csr_der(bytes: &[u8], origin: &str) -> Result<Vec<u8>, IssueError> {
    let refuse = |what: String| IssueError::Csr {
        origin: origin.into(),
        what,
        fix: "give the CSR file `sealtls key gen --out` or `openssl req -new` wrote (PEM or DER)".into(),
    };
    if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        return Ok(bytes.to_vec());
    }
    let blocks = pem::parse_many(bytes).map_err(|e| refuse(format!("damaged PEM: {e}")))?;
    match blocks.iter().find(|b| b.tag() == "CERTIFICATE REQUEST" || b.tag() == "NEW CERTIFICATE REQUEST") {
        Some(b) => Ok(b.contents().to_vec()),
        None => {
            let tags: Vec<_> = blocks.iter().map(|b| b.tag().to_owned()).collect();
            Err(refuse(format!(
                "holds no CERTIFICATE REQUEST (it holds {})",
                if tags.is_empty() { "nothing".into() } else { tags.join(", ") }
            )))
        }
    }
}

fn san_text(san: &SanType) -> Option<String> {
    match san {
        SanType::DnsName(name) => Some(name.as_str().to_owned()),
        SanType::IpAddress(ip) => Some(ip.to_string()),
        _ => None,
    }
}

/// Signs the PKCS#10 request `csr` (PEM or DER) with the CA in `dir` as a
/// TLS server certificate valid for `days`, and writes it to `out`, followed
/// by the CA, as `issue_leaf` does. The request's self-signature is checked.
/// Names: `sans` if given, else the request's subjectAltName, else its CN;
/// the certificate always has a subjectAltName, serverAuth and CA:FALSE.
pub fn sign_csr(
    dir: &Path,
    csr: &[u8],
    origin: &str,
    sans: &[String],
    days: u32,
    out: &Path,
    force: bool,
) -> Result<SignedCsr, IssueError> {
    use x509_parser::prelude::FromDer;
    refuse_existing(&[out], force)?;
    let refuse = |what: String, fix: &str| IssueError::Csr { origin: origin.into(), what, fix: fix.into() };
    let der = csr_der(csr, origin)?;
    let mut request = rcgen::CertificateSigningRequestParams::from_der(&der.as_slice().into()).map_err(|e| match e {
        rcgen::Error::InvalidCertificationRequestSignature => refuse(
            "the request's self-signature does not verify: it was altered or damaged after it was made".into(),
            "make a new request from the key (`sealtls key gen`, or `openssl req -new -key KEY`) and sign that",
        ),
        rcgen::Error::CouldNotParseCertificationRequest => refuse(
            "not a PKCS#10 certificate signing request".into(),
            "give the CSR file `sealtls key gen --out` or `openssl req -new` wrote (PEM or DER)",
        ),
        rcgen::Error::UnsupportedSignatureAlgorithm => refuse(
            "the request is signed with an algorithm sealtls cannot sign for".into(),
            "make the request with an ECDSA P-256/P-384, Ed25519 or RSA key (PKCS#1 v1.5 signature)",
        ),
        rcgen::Error::UnsupportedExtension => refuse(
            "the request asks for extensions other than subjectAltName, key usage, extended key usage and basic constraints".into(),
            "make the request without them; the names can be given with --san",
        ),
        other => refuse(format!("cannot be read: {other}"), "make a new request and sign that"),
    })?;
    let (_, parsed) = x509_parser::certification_request::X509CertificationRequest::from_der(&der).map_err(|e| {
        refuse(
            format!("not a PKCS#10 certificate signing request: {e}"),
            "give the CSR file `sealtls key gen --out` or `openssl req -new` wrote",
        )
    })?;
    let info = &parsed.certification_request_info;
    let cn = info.subject.iter_common_name().next().and_then(|cn| cn.as_str().ok()).map(str::to_owned);

    let (names, sans_from): (Vec<SanType>, &'static str) = if !sans.is_empty() {
        (sans.iter().map(|s| parse_san(s)).collect::<Result<_, _>>()?, "--san")
    } else if !request.params.subject_alt_names.is_empty() {
        let requested = std::mem::take(&mut request.params.subject_alt_names);
        if let Some(other) = requested.iter().find(|s| san_text(s).is_none()) {
            return Err(refuse(
                format!("the request asks for a subjectAltName that is not a DNS name or IP address ({})", other_san_text(other)),
                "give the server's names with --san NAME (repeat for each)",
            ));
        }
        (requested, "the request's subjectAltName")
    } else {
        match &cn {
            Some(cn) => match parse_san(cn) {
                Ok(san) => (vec![san], "the request's CN"),
                Err(_) => {
                    return Err(refuse(
                        format!("the request has no subjectAltName and its CN `{cn}` is not a DNS name or IP address"),
                        "give the server's names with --san NAME (repeat for each)",
                    ))
                }
            },
            None => {
                return Err(refuse(
                    "the request names no server: no subjectAltName and no CN".into(),
                    "give the server's names with --san NAME (repeat for each)",
                ))
            }
        }
    };
    let texts: Vec<String> = names.iter().filter_map(san_text).collect();

    let (ca_chain, ca_key) = load_ca(dir)?;
    let issuer = Issuer::from_ca_cert_der(&ca_chain[0], ca_key)?;
    let mut params = base_params(cn.as_deref().unwrap_or(&texts[0]), days);
    if cn.is_some() {
        params.distinguished_name = request.params.distinguished_name.clone();
    }
    params.subject_alt_names = names;
    params.is_ca = IsCa::ExplicitNoCa;
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let rsa = info.subject_pki.algorithm.algorithm == x509_parser::oid_registry::OID_PKCS1_RSAENCRYPTION;
    if rsa {
        params.key_usages.push(KeyUsagePurpose::KeyEncipherment);
    }
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    request.params = params;
    let cert = request.signed_by(&issuer)?;

    // The certificate must certify exactly the key the request was made with.
    let (_, issued) = x509_parser::parse_x509_certificate(cert.der())
        .map_err(|e| refuse(format!("the signed certificate does not parse: {e}"), "report this as a bug"))?;
    if issued.tbs_certificate.subject_pki.raw != info.subject_pki.raw {
        return Err(refuse(
            "the request's key and signature algorithm are an unusual pair, and the certificate would not carry its key as given".into(),
            "make the request with the usual hash for the key (SHA-256 for P-256 and RSA, SHA-384 for P-384)",
        ));
    }
    let mut chain_pem = cert.pem();
    for ca in &ca_chain {
        chain_pem.push_str(&pem_encode_cert(ca));
    }
    write_atomic(out, chain_pem.as_bytes(), 0o644, force)?;
    Ok(SignedCsr { cert_path: out.to_owned(), cert: cert.der().clone(), sans: texts, sans_from })
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

    fn csr(sans: &[&str], cn: &str) -> (KeyPair, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let pem = params.serialize_request(&key).unwrap().pem().unwrap();
        (key, pem)
    }

    fn facts(path: &Path) -> (crate::inspect::CertFacts, usize) {
        let chain = load_certs_pem(&std::fs::read(path).unwrap(), "out").unwrap();
        (crate::inspect::CertFacts::from_der(&chain[0]).unwrap(), chain.len())
    }

    #[test]
    fn csr_is_signed_as_a_server_leaf_with_names_from_san_then_csr_then_cn() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        init_ca(d, &default_ca_name(), KeyType::EcdsaP256, 30, false).unwrap();
        let (_, with_san) = csr(&["a.test", "127.0.0.1"], "a.test");
        let signed = sign_csr(d, with_san.as_bytes(), "a.csr", &[], DEFAULT_LEAF_DAYS, &d.join("a.pem"), false).unwrap();
        assert_eq!(signed.sans, ["a.test", "127.0.0.1"]);
        let (f, len) = facts(&d.join("a.pem"));
        assert_eq!(len, 2, "leaf then CA");
        assert!(f.has_san_extension && !f.is_ca && f.extended_key_usage == Some(vec!["serverAuth".into()]), "{f:?}");
        assert_eq!(f.subject, "CN=a.test");

        let (_, cn_only) = csr(&[], "b.test");
        let der = pem::parse(&cn_only).unwrap().contents().to_vec();
        let signed = sign_csr(d, &der, "b.der", &[], 10, &d.join("b.pem"), false).unwrap();
        assert_eq!((signed.sans.as_slice(), signed.sans_from), (&["b.test".to_string()][..], "the request's CN"));
        let signed = sign_csr(d, cn_only.as_bytes(), "b.csr", &["c.test".into()], 10, &d.join("c.pem"), false).unwrap();
        assert_eq!(signed.sans, ["c.test"]);
        assert!(matches!(
            sign_csr(d, cn_only.as_bytes(), "b.csr", &[], 10, &d.join("c.pem"), false),
            Err(IssueError::Write(WriteError::Exists { .. }))
        ));

        // A request for an e-mail name is refused naming it as written, not as a Rust value.
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::Rfc822Name("x@y.test".try_into().unwrap())];
        let mail = params.serialize_request(&key).unwrap().pem().unwrap();
        let e = sign_csr(d, mail.as_bytes(), "m.csr", &[], 10, &d.join("m.pem"), false).unwrap_err().to_string();
        assert!(e.contains("(email:x@y.test)"), "{e}");

        let (_, bad_cn) = csr(&[], "not a name");
        let e = sign_csr(d, bad_cn.as_bytes(), "x.csr", &[], 10, &d.join("x.pem"), false).unwrap_err();
        assert!(e.to_string().contains("x.csr: the request has no subjectAltName"), "{e}");
        assert!(e.fix().is_some_and(|f| f.starts_with("give the server's names with --san")), "{e}");
    }

    #[test]
    fn altered_or_junk_csrs_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        init_ca(d, "Test CA", KeyType::EcdsaP256, 30, false).unwrap();
        let (_, good) = csr(&["a.test"], "a.test");
        let mut der = pem::parse(&good).unwrap().contents().to_vec();
        // Change one byte of the requested name: the signature no longer verifies.
        let at = der.windows(6).position(|w| w == b"a.test").unwrap();
        der[at] = b'z';
        let e = sign_csr(d, &der, "z.csr", &[], 10, &d.join("z.pem"), false).unwrap_err().to_string();
        assert!(e.contains("self-signature does not verify"), "{e}");
        let e = sign_csr(d, b"hello", "j.csr", &[], 10, &d.join("j.pem"), false).unwrap_err().to_string();
        assert!(e.contains("j.csr: not a PKCS#10"), "{e}");
        assert!(!d.join("z.pem").exists() && !d.join("j.pem").exists());
    }

    #[test]
    fn a_mistyped_address_is_not_taken_for_a_name() {
        for bad in ["300.1.1.1", "1.2.3", "12"] {
            assert!(matches!(parse_san(bad), Err(IssueError::InvalidInput { .. })), "{bad}");
        }
        assert!(matches!(parse_san("10.1.2.3"), Ok(SanType::IpAddress(_))));
        assert!(matches!(parse_san("1password.com"), Ok(SanType::DnsName(_))));
    }

    #[test]
    fn default_ca_names_differ() {
        let (a, b) = (default_ca_name(), default_ca_name());
        assert!(a.starts_with("sealtls development CA ") && a.len() == CA_NAME_PREFIX.len() + 7, "{a}");
        assert_ne!(a, b);
    }

    #[test]
    fn bad_san_is_refused() {
        assert!(parse_san("bad name").is_err());
        assert!(parse_san("*.example.com").is_ok());
        assert!(matches!(parse_san("::1"), Ok(SanType::IpAddress(_))));
    }
}
