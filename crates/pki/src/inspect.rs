//! Facts about certificates and keys, and warnings in plain words.
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Serialize;
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::public_key::PublicKey;
use x509_parser::x509::{SubjectPublicKeyInfo, X509Version};

/// What a TLS peer needs to know about one certificate, extracted once.
#[derive(Clone, Debug, Serialize)]
pub struct CertFacts {
    /// Subject distinguished name, e.g. `CN=localhost`.
    pub subject: String,
    /// Issuer distinguished name.
    pub issuer: String,
    /// Serial number, hex with colons.
    pub serial: String,
    /// X.509 version as written on certificates (1 or 3).
    pub version: u32,
    /// DNS names and IP addresses in subjectAltName.
    pub sans: Vec<String>,
    /// Whether a subjectAltName extension is present at all.
    pub has_san_extension: bool,
    /// Public key algorithm and size, e.g. `ECDSA P-256` or `RSA 2048`.
    pub key: String,
    /// RSA modulus size in bits, when RSA.
    #[serde(skip)]
    pub rsa_bits: Option<usize>,
    /// Signature algorithm name.
    pub signature_algorithm: String,
    /// Extended key usages, by short name; `None` when the extension is absent.
    pub extended_key_usage: Option<Vec<String>>,
    /// basicConstraints, e.g. `CA:TRUE, pathlen:0`; `None` when absent.
    pub basic_constraints: Option<String>,
    /// Whether basicConstraints says CA:TRUE.
    pub is_ca: bool,
    /// Key usage bits, e.g. `Digital Signature, Key Cert Sign`.
    pub key_usage: Option<String>,
    /// Start of validity, RFC 3339.
    pub not_before: String,
    /// End of validity, RFC 3339.
    pub not_after: String,
    /// Whole days until expiry (negative when expired).
    pub days_left: i64,
    /// Seconds since the epoch of not_before and not_after.
    #[serde(skip)]
    pub validity: (i64, i64),
    /// SHA-256 over the DER, hex with colons.
    pub sha256: String,
    /// The DER of the subject public key info.
    #[serde(skip)]
    pub spki: Vec<u8>,
    /// Whether subject and issuer names are equal.
    pub self_issued: bool,
}

/// Extended key usage short names, as OpenSSL prints them.
fn eku_names(eku: &x509_parser::extensions::ExtendedKeyUsage<'_>) -> Vec<String> {
    let flags = [
        (eku.any, "anyExtendedKeyUsage"),
        (eku.server_auth, "serverAuth"),
        (eku.client_auth, "clientAuth"),
        (eku.code_signing, "codeSigning"),
        (eku.email_protection, "emailProtection"),
        (eku.time_stamping, "timeStamping"),
        (eku.ocsp_signing, "OCSPSigning"),
    ];
    let mut names: Vec<String> = flags.iter().filter(|(on, _)| *on).map(|(_, n)| (*n).to_owned()).collect();
    names.extend(eku.other.iter().map(|oid| oid.to_id_string()));
    names
}

fn hex_colon(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

/// Names the public key algorithm and size of a subject public key info.
pub fn describe_spki(spki: &SubjectPublicKeyInfo<'_>) -> (String, Option<usize>) {
    use x509_parser::oid_registry as oids;
    let alg = &spki.algorithm.algorithm;
    if *alg == oids::OID_SIG_ED25519 {
        return ("Ed25519".into(), None);
    }
    match spki.parsed() {
        Ok(PublicKey::RSA(rsa)) => (format!("RSA {}", rsa.key_size()), Some(rsa.key_size())),
        Ok(PublicKey::EC(_)) => {
            let curve = spki.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok());
            let name = match curve {
                Some(c) if c == oids::OID_EC_P256 => "P-256",
                Some(c) if c == oids::OID_NIST_EC_P384 => "P-384",
                Some(c) if c == oids::OID_NIST_EC_P521 => "P-521",
                _ => "unknown curve",
            };
            (format!("ECDSA {name}"), None)
        }
        _ => (format!("unsupported ({})", alg.to_id_string()), None),
    }
}

fn signature_name(cert: &X509Certificate<'_>) -> String {
    let oid = &cert.signature_algorithm.algorithm;
    x509_parser::objects::oid2sn(oid, x509_parser::objects::oid_registry()).map(str::to_owned).unwrap_or_else(|_| oid.to_id_string())
}

fn rfc3339(ts: i64) -> String {
    OffsetDateTime::from_unix_timestamp(ts)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| ts.to_string())
}

impl CertFacts {
    /// Extracts the facts from a parsed certificate.
    pub fn from_parsed(cert: &X509Certificate<'_>, der: &[u8]) -> Self {
        let (mut sans, mut has_san_extension) = (Vec::new(), false);
        if let Ok(Some(ext)) = cert.subject_alternative_name() {
            has_san_extension = true;
            for name in &ext.value.general_names {
                match name {
                    GeneralName::DNSName(d) => sans.push(format!("DNS:{d}")),
                    GeneralName::IPAddress(ip) => sans.push(format!("IP:{}", ip_text(ip))),
                    GeneralName::RFC822Name(m) => sans.push(format!("email:{m}")),
                    GeneralName::URI(u) => sans.push(format!("URI:{u}")),
                    other => sans.push(format!("{other:?}")),
                }
            }
        }
        let bc = cert.basic_constraints().ok().flatten().map(|e| e.value);
        let basic_constraints = bc.map(|b| match (b.ca, b.path_len_constraint) {
            (true, Some(n)) => format!("CA:TRUE, pathlen:{n}"),
            (true, None) => "CA:TRUE".into(),
            (false, _) => "CA:FALSE".into(),
        });
        let (key, rsa_bits) = describe_spki(cert.public_key());
        let validity = (cert.validity().not_before.timestamp(), cert.validity().not_after.timestamp());
        let now = OffsetDateTime::now_utc().unix_timestamp();
        Self {
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            serial: cert.raw_serial_as_string().to_uppercase(),
            version: match cert.version() {
                X509Version::V1 => 1,
                X509Version::V2 => 2,
                _ => 3,
            },
            sans,
            has_san_extension,
            key,
            rsa_bits,
            signature_algorithm: signature_name(cert),
            extended_key_usage: cert.extended_key_usage().ok().flatten().map(|e| eku_names(e.value)),
            basic_constraints,
            is_ca: bc.is_some_and(|b| b.ca),
            key_usage: cert.key_usage().ok().flatten().map(|e| e.value.to_string()),
            not_before: rfc3339(validity.0),
            not_after: rfc3339(validity.1),
            // Whole days, toward zero: a certificate expired seconds ago is 0 days past, not 1.
            days_left: (validity.1 - now) / 86_400,
            validity,
            sha256: hex_colon(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der).as_ref()),
            spki: cert.public_key().raw.to_vec(),
            self_issued: cert.subject().as_raw() == cert.issuer().as_raw(),
        }
    }

    /// Parses a DER certificate and extracts its facts.
    pub fn from_der(der: &CertificateDer<'_>) -> Result<Self, String> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
        Ok(Self::from_parsed(&cert, der))
    }

    /// The common name, if any.
    pub fn common_name(&self) -> Option<&str> {
        self.subject.split(", ").find_map(|rdn| rdn.strip_prefix("CN="))
    }

    /// Whether the EKU allows the given purpose (absent EKU allows everything).
    pub fn eku_allows(&self, purpose: &str) -> bool {
        match &self.extended_key_usage {
            None => true,
            Some(list) => list.iter().any(|e| e == purpose || e == "anyExtendedKeyUsage"),
        }
    }

    /// Whether this looks like a leaf: not self-issued, or carrying a TLS EKU.
    pub fn looks_like_leaf(&self) -> bool {
        !self.self_issued || self.extended_key_usage.as_ref().is_some_and(|e| e.iter().any(|u| u.ends_with("Auth")))
    }

    /// Plain-language warnings. `as_leaf` says the certificate is used to
    /// identify a server or client (not as a CA).
    pub fn warnings(&self, as_leaf: bool) -> Vec<String> {
        let mut w = Vec::new();
        if self.version == 1 {
            w.push(
                "X.509 version 1: no extensions at all (no subjectAltName, key usage or CA flag); \
                 modern TLS clients refuse it as a server certificate"
                    .to_owned(),
            );
        }
        if as_leaf && self.is_ca {
            w.push(
                "CA:TRUE on a leaf: this certificate is marked as a certificate authority; \
                 rustls, browsers and verifying OpenSSL clients refuse a CA certificate as a server or client identity"
                    .to_owned(),
            );
        }
        if as_leaf && !self.has_san_extension {
            let cn = self.common_name().unwrap_or("(none)");
            w.push(format!("no subjectAltName: clients ignore the common name (CN={cn}) and match host names against the SAN only"));
        }
        if as_leaf && !self.eku_allows("serverAuth") && !self.eku_allows("clientAuth") {
            w.push(format!(
                "extended key usage {:?} allows neither serverAuth nor clientAuth: it cannot be used for TLS",
                self.extended_key_usage.clone().unwrap_or_default()
            ));
        }
        let now = OffsetDateTime::now_utc().unix_timestamp();
        if self.validity.1 < now {
            w.push(format!("expired on {} ({})", self.not_after, days_ago(-self.days_left)));
        } else if self.validity.0 > now {
            w.push(format!("not valid yet: starts on {}", self.not_before));
        } else if self.days_left < 30 {
            w.push(format!("expires in {} days ({})", self.days_left, self.not_after));
        }
        let sig = self.signature_algorithm.to_ascii_lowercase();
        if sig.contains("sha1") || sig.contains("md5") {
            w.push(format!("weak signature algorithm {}: clients refuse SHA-1 and MD5 signatures", self.signature_algorithm));
        }
        if self.rsa_bits.is_some_and(|b| b < 2048) {
            w.push(format!("{}: RSA keys under 2048 bits are refused by modern clients", self.key));
        }
        w
    }
}

fn ip_text(bytes: &[u8]) -> String {
    match bytes.len() {
        4 => std::net::Ipv4Addr::from(<[u8; 4]>::try_from(bytes).expect("length checked")).to_string(),
        16 => std::net::Ipv6Addr::from(<[u8; 16]>::try_from(bytes).expect("length checked")).to_string(),
        _ => hex_colon(bytes),
    }
}

/// The facts about a private key that are safe to print.
#[derive(Clone, Debug, Serialize)]
pub struct KeyFacts {
    /// Encoding: PKCS#8, SEC1 or PKCS#1.
    pub encoding: &'static str,
    /// Algorithm and size, e.g. `ECDSA P-256`.
    pub key: String,
    /// The public half (SPKI DER), to match against certificates.
    #[serde(skip)]
    pub spki: Vec<u8>,
}

impl KeyFacts {
    /// Describes a private key by its public half. Never prints key material.
    pub fn from_key(key: &PrivateKeyDer<'_>, origin: &str) -> Result<Self, crate::LoadError> {
        let signer = crate::load::signing_key(key, origin)?;
        let spki = signer.public_key().map(|k| k.as_ref().to_vec()).unwrap_or_default();
        use x509_parser::prelude::FromDer;
        let key_name =
            SubjectPublicKeyInfo::from_der(&spki).map(|(_, s)| describe_spki(&s).0).unwrap_or_else(|_| format!("{:?}", signer.algorithm()));
        let encoding = match key {
            PrivateKeyDer::Pkcs8(_) => "PKCS#8",
            PrivateKeyDer::Sec1(_) => "SEC1",
            PrivateKeyDer::Pkcs1(_) => "PKCS#1",
            _ => "unknown",
        };
        Ok(Self { encoding, key: key_name, spki })
    }
}

/// One inspected item of a file.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Item {
    /// A certificate, with warnings.
    Certificate {
        /// Where it came from.
        source: String,
        /// Position in its file, from 1.
        index: usize,
        /// The facts.
        #[serde(flatten)]
        facts: Box<CertFacts>,
        /// Plain-language warnings.
        warnings: Vec<String>,
    },
    /// A private key.
    PrivateKey {
        /// Where it came from.
        source: String,
        /// The facts.
        #[serde(flatten)]
        facts: KeyFacts,
        /// The certificate it belongs to, when one was inspected with it.
        matches: Option<String>,
        /// Plain-language warnings.
        warnings: Vec<String>,
    },
    /// A file that could not be read as either.
    Error {
        /// Where it came from.
        source: String,
        /// What went wrong.
        error: String,
    },
}

/// Inspects several inputs together, each `(origin, bytes)`.
/// Keys are matched against the leaf certificates among the inputs.
pub fn inspect(inputs: &[(String, zeroize::Zeroizing<Vec<u8>>)]) -> Vec<Item> {
    let mut items = Vec::new();
    for (origin, bytes) in inputs {
        let mut found = false;
        if let Ok(certs) = crate::load::load_certs_pem(bytes, origin) {
            found = true;
            for (i, der) in certs.iter().enumerate() {
                match CertFacts::from_der(der) {
                    Ok(facts) => {
                        let as_leaf = i == 0 && facts.looks_like_leaf();
                        let warnings = facts.warnings(as_leaf);
                        items.push(Item::Certificate { source: origin.clone(), index: i + 1, facts: Box::new(facts), warnings });
                    }
                    Err(error) => items.push(Item::Error { source: origin.clone(), error }),
                }
            }
        }
        match crate::load::load_key_pem(bytes, origin).and_then(|k| KeyFacts::from_key(&k, origin)) {
            Ok(facts) => {
                items.push(Item::PrivateKey { source: origin.clone(), facts, matches: None, warnings: Vec::new() });
            }
            Err(e) if !found => items.push(Item::Error { source: origin.clone(), error: sealtls_failure::Remedy::with_fix(&e) }),
            Err(_) => {}
        }
    }
    match_keys(&mut items);
    items
}

fn match_keys(items: &mut [Item]) {
    let leaves: Vec<(String, Vec<u8>)> = items
        .iter()
        .filter_map(|it| match it {
            Item::Certificate { source, index: 1, facts, .. } => Some((format!("{source} ({})", facts.subject), facts.spki.clone())),
            _ => None,
        })
        .collect();
    if leaves.is_empty() {
        return;
    }
    for item in items.iter_mut() {
        if let Item::PrivateKey { facts, matches, warnings, .. } = item {
            match leaves.iter().find(|(_, spki)| *spki == facts.spki) {
                Some((name, _)) => *matches = Some(name.clone()),
                None => warnings.push(
                    "key does not match any certificate inspected with it: a server given this pair fails every handshake".to_owned(),
                ),
            }
        }
    }
}
/// The leaf's subject and what clients will refuse in it, in words.
pub fn leaf_problems(chain: &[rustls_pki_types::CertificateDer<'_>]) -> Option<(String, Vec<String>)> {
    let facts = chain.first().and_then(|c| CertFacts::from_der(c).ok())?;
    let problems = facts.warnings(true);
    Some((facts.subject, problems))
}

/// How long ago something ended, in whole days.
pub(crate) fn days_ago(days: i64) -> String {
    match days {
        0 => "less than a day ago".into(),
        1 => "1 day ago".into(),
        n => format!("{n} days ago"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_expired_seconds_ago_is_not_a_day_past() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["a.test".into()]).unwrap();
        let now = OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(2);
        params.not_after = now - time::Duration::seconds(10);
        let cert = params.self_signed(&key).unwrap();
        let facts = CertFacts::from_der(cert.der()).unwrap();
        assert_eq!(facts.days_left, 0);
        let warnings = facts.warnings(true).join("\n");
        assert!(warnings.contains("(less than a day ago)"), "{warnings}");
        assert_eq!(days_ago(1), "1 day ago");
        assert_eq!(days_ago(3), "3 days ago");
    }
}
