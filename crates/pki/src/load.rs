//! Loading certificates and private keys from PEM or DER, from files or from
//! inline text (configuration files), with errors that name the source and
//! say how to fix it.
use std::fs;
use std::path::Path;
use std::sync::Arc;

use rustls::sign::SigningKey;
use rustls_pki_types::pem::{PemObject, SectionKind};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sealtls_failure::Remedy;
use zeroize::Zeroizing;

use crate::files::{check_secret_mode, ExposedSecret};

/// Larger inputs are refused before parsing: no certificate or key is this big.
pub const MAX_INPUT: u64 = 4 << 20;

/// Why a certificate or key could not be loaded. `origin` names where it came
/// from: a file path, or a configuration key.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("{origin}: cannot read: {source}")]
    Io {
        /// Where the input came from.
        origin: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The input is larger than any certificate or key file should be.
    #[error("{origin}: larger than {} MiB", MAX_INPUT >> 20)]
    TooLarge {
        /// Where the input came from.
        origin: String,
    },
    /// PEM armour that does not decode.
    #[error("{origin}: damaged PEM: {detail}")]
    Pem {
        /// Where the input came from.
        origin: String,
        /// What the PEM parser found wrong.
        detail: String,
    },
    /// Neither PEM nor DER of the expected kind.
    #[error("{origin}: {}", if *.empty { format!("empty, where a {expected} was expected") } else { format!("neither PEM nor DER {expected}") })]
    Unrecognised {
        /// Where the input came from.
        origin: String,
        /// What was expected ("certificate" or "private key").
        expected: &'static str,
        /// Whether there were no bytes at all.
        empty: bool,
    },
    /// PEM without any certificate.
    #[error("{origin}: no certificate found{}", if *.found_key { " (it holds a private key: were the certificate and key files swapped?)" } else { "" })]
    NoCertificate {
        /// Where the input came from.
        origin: String,
        /// Whether a private key was found instead.
        found_key: bool,
    },
    /// A certificate whose DER does not parse.
    #[error("{origin}: certificate #{index} is not valid X.509: {detail}")]
    BadCertificate {
        /// Where the input came from.
        origin: String,
        /// Position in the file, starting at 1.
        index: usize,
        /// What the parser found wrong.
        detail: String,
    },
    /// PEM without any private key.
    #[error("{origin}: no private key found{}", if *.found_cert { " (it holds a certificate: were the certificate and key files swapped?)" } else { "" })]
    NoKey {
        /// Where the input came from.
        origin: String,
        /// Whether a certificate was found instead.
        found_cert: bool,
    },
    /// More than one private key in one input.
    #[error("{origin}: holds {count} private keys")]
    SeveralKeys {
        /// Where the input came from.
        origin: String,
        /// How many were found.
        count: usize,
    },
    /// A passphrase-protected key.
    #[error("{origin}: the private key is encrypted with a passphrase, which sealtls does not prompt for")]
    EncryptedKey {
        /// Where the input came from.
        origin: String,
    },
    /// A key that parses but that no supported algorithm accepts.
    #[error("{origin}: unsupported or damaged private key ({detail})")]
    UnsupportedKey {
        /// Where the input came from.
        origin: String,
        /// What the crypto provider said.
        detail: String,
    },
    /// A key file readable by group or others.
    #[error(transparent)]
    Exposed(#[from] ExposedSecret),
}

impl Remedy for LoadError {
    fn fix(&self) -> Option<String> {
        match self {
            Self::TooLarge { .. } => Some("this is not a certificate or key file".into()),
            Self::Pem { .. } => Some("re-export the file or remove the stray text".into()),
            Self::SeveralKeys { .. } => Some("give exactly one".into()),
            Self::EncryptedKey { origin } => {
                Some(format!("decrypt it with `openssl pkey -in {origin} -out plain.key` and keep plain.key mode 0600"))
            }
            Self::UnsupportedKey { .. } => Some("supported: RSA 2048+, ECDSA P-256/P-384/P-521, Ed25519".into()),
            Self::Exposed(e) => e.fix(),
            Self::Io { .. } | Self::Unrecognised { .. } | Self::NoCertificate { .. } | Self::BadCertificate { .. } | Self::NoKey { .. } => {
                None
            }
        }
    }
}

/// Reads a whole file of at most [`MAX_INPUT`] bytes, with its metadata; the bytes are
/// wiped when dropped.
pub fn read_limited(path: &Path) -> Result<(Zeroizing<Vec<u8>>, fs::Metadata), LoadError> {
    let origin = || path.display().to_string();
    let meta = fs::metadata(path).map_err(|source| LoadError::Io { origin: origin(), source })?;
    if meta.len() > MAX_INPUT {
        return Err(LoadError::TooLarge { origin: origin() });
    }
    // The size the file system reports is 0 for a device or a pipe: the read itself is bounded too.
    // Sized for the file, so that a key file is read into one buffer, not copied by growth
    // (a device or pipe reports size 0 and grows the buffer as it reads).
    let mut bytes = Zeroizing::new(Vec::with_capacity(meta.len() as usize));
    fs::File::open(path)
        .and_then(|f| std::io::Read::read_to_end(&mut std::io::Read::take(f, MAX_INPUT + 1), &mut bytes))
        .map_err(|source| LoadError::Io { origin: origin(), source })?;
    if bytes.len() as u64 > MAX_INPUT {
        return Err(LoadError::TooLarge { origin: origin() });
    }
    Ok((bytes, meta))
}

fn is_pem(bytes: &[u8]) -> bool {
    bytes.windows(11).any(|w| w == b"-----BEGIN ")
}

/// All PEM sections of known kinds, in order.
fn pem_sections(bytes: &[u8], origin: &str) -> Result<Vec<(SectionKind, Vec<u8>)>, LoadError> {
    <(SectionKind, Vec<u8>)>::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| LoadError::Pem { origin: origin.to_owned(), detail: pem_error_text(&e) })
}

fn pem_error_text(e: &rustls_pki_types::pem::Error) -> String {
    use rustls_pki_types::pem::Error as E;
    match e {
        E::MissingSectionEnd { end_marker } => {
            format!("no `{}` line", String::from_utf8_lossy(end_marker))
        }
        E::IllegalSectionStart { .. } => "malformed `-----BEGIN` line".into(),
        E::Base64Decode(_) => "invalid base64 inside a PEM block".into(),
        E::SectionTooLarge => "a PEM block is too large".into(),
        other => other.to_string(),
    }
}

fn is_secret(kind: SectionKind) -> bool {
    matches!(kind, SectionKind::PrivateKey | SectionKind::RsaPrivateKey | SectionKind::EcPrivateKey)
}

/// Parses certificates from PEM (one or more blocks) or DER (one or more
/// concatenated certificates). Every certificate is checked to be X.509.
pub fn load_certs_pem(bytes: &[u8], origin: &str) -> Result<Vec<CertificateDer<'static>>, LoadError> {
    let certs: Vec<CertificateDer<'static>> = if is_pem(bytes) {
        let sections = pem_sections(bytes, origin)?;
        let found_key = sections.iter().any(|(k, _)| is_secret(*k));
        let certs: Vec<_> =
            sections.into_iter().filter(|(k, _)| *k == SectionKind::Certificate).map(|(_, der)| CertificateDer::from(der)).collect();
        if certs.is_empty() {
            return Err(LoadError::NoCertificate { origin: origin.to_owned(), found_key });
        }
        certs
    } else {
        split_der_certs(bytes).ok_or_else(|| LoadError::Unrecognised {
            origin: origin.to_owned(),
            expected: "certificate",
            empty: bytes.is_empty(),
        })?
    };
    for (i, cert) in certs.iter().enumerate() {
        if let Err(e) = x509_parser::parse_x509_certificate(cert) {
            return Err(LoadError::BadCertificate { origin: origin.to_owned(), index: i + 1, detail: e.to_string() });
        }
    }
    Ok(certs)
}

/// Splits concatenated DER certificates; `None` when the bytes are not that.
fn split_der_certs(mut bytes: &[u8]) -> Option<Vec<CertificateDer<'static>>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let (rest, _) = x509_parser::parse_x509_certificate(bytes).ok()?;
        let len = bytes.len() - rest.len();
        out.push(CertificateDer::from(bytes[..len].to_vec()));
        bytes = rest;
    }
    (!out.is_empty()).then_some(out)
}

/// Loads certificates (a chain, leaf first, or a set of trust anchors) from a file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, LoadError> {
    let (bytes, _) = read_limited(path)?;
    load_certs_pem(&bytes, &path.display().to_string())
}

/// Parses one private key: PEM (PKCS#8, SEC1 or PKCS#1) or DER, and checks
/// that the crypto provider can sign with it.
/// The key is wiped from memory when the returned value is dropped.
pub fn load_key_pem(bytes: &[u8], origin: &str) -> Result<Zeroizing<PrivateKeyDer<'static>>, LoadError> {
    let origin_s = || origin.to_owned();
    if contains(bytes, b"ENCRYPTED PRIVATE KEY") || contains(bytes, b"Proc-Type: 4,ENCRYPTED") {
        return Err(LoadError::EncryptedKey { origin: origin_s() });
    }
    let key = if is_pem(bytes) {
        let sections = pem_sections(bytes, origin)?;
        let found_cert = sections.iter().any(|(k, _)| *k == SectionKind::Certificate);
        let mut keys: Vec<PrivateKeyDer<'static>> =
            sections.into_iter().filter_map(|(kind, der)| PrivateKeyDer::from_pem(kind, der)).collect();
        match keys.len() {
            0 => return Err(LoadError::NoKey { origin: origin_s(), found_cert }),
            1 => keys.remove(0),
            count => return Err(LoadError::SeveralKeys { origin: origin_s(), count }),
        }
    } else {
        PrivateKeyDer::try_from(bytes.to_vec()).map_err(|_| LoadError::Unrecognised {
            origin: origin_s(),
            expected: "private key",
            empty: bytes.is_empty(),
        })?
    };
    let key = Zeroizing::new(key);
    signing_key(&key, origin)?;
    Ok(key)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Loads one private key from a file, refusing a file that group or others
/// can read.
pub fn load_key(path: &Path) -> Result<Zeroizing<PrivateKeyDer<'static>>, LoadError> {
    let (bytes, meta) = read_limited(path)?;
    check_secret_mode(path, &meta)?;
    load_key_pem(&bytes, &path.display().to_string())
}

/// Turns a private key into a rustls signing key (aws-lc-rs provider).
pub fn signing_key(key: &PrivateKeyDer<'_>, origin: &str) -> Result<Arc<dyn SigningKey>, LoadError> {
    rustls::crypto::aws_lc_rs::sign::any_supported_type(key)
        .map_err(|e| LoadError::UnsupportedKey { origin: origin.to_owned(), detail: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["a.test".into()]).unwrap().self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn pem_and_der_round_trip() {
        let (cert_pem, key_pem) = sample();
        let certs = load_certs_pem(cert_pem.as_bytes(), "c").unwrap();
        assert_eq!(certs.len(), 1);
        assert_eq!(load_certs_pem(certs[0].as_ref(), "c").unwrap(), certs);
        let key = load_key_pem(key_pem.as_bytes(), "k").unwrap();
        let der = key.secret_der().to_vec();
        assert!(load_key_pem(&der, "k").is_ok());
    }

    #[test]
    fn swapped_files_are_named() {
        let (cert_pem, key_pem) = sample();
        let e = load_certs_pem(key_pem.as_bytes(), "x").unwrap_err();
        assert!(matches!(e, LoadError::NoCertificate { found_key: true, .. }), "{e}");
        let e = load_key_pem(cert_pem.as_bytes(), "y").unwrap_err();
        assert!(matches!(e, LoadError::NoKey { found_cert: true, .. }), "{e}");
        assert!(e.to_string().contains("swapped"));
    }

    #[test]
    fn encrypted_key_is_explained() {
        let text = "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n";
        let e = load_key_pem(text.as_bytes(), "enc.key").unwrap_err();
        assert!(matches!(e, LoadError::EncryptedKey { .. }));
        assert!(e.fix().is_some_and(|f| f.contains("openssl pkey")), "{e}");
    }

    #[test]
    fn junk_inside_pem_is_an_error() {
        let (cert_pem, _) = sample();
        let broken = cert_pem.replacen('M', "!", 1);
        assert!(matches!(load_certs_pem(broken.as_bytes(), "c"), Err(LoadError::Pem { .. })));
        let e = load_certs_pem(b"hello world", "c").unwrap_err();
        assert!(matches!(e, LoadError::Unrecognised { empty: false, .. }));
        // An empty file says so, rather than looking like a wrong format.
        let e = load_certs_pem(b"", "c").unwrap_err();
        assert_eq!(e.to_string(), "c: empty, where a certificate was expected");
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = load_certs_pem(&bytes, "fuzz");
            let _ = load_key_pem(&bytes, "fuzz");
        }

        #[test]
        fn arbitrary_pem_bodies_never_panic(body in "[A-Za-z0-9+/=\n]{0,600}", label in "(CERTIFICATE|PRIVATE KEY|EC PRIVATE KEY|RSA PRIVATE KEY)") {
            let text = format!("-----BEGIN {label}-----\n{body}\n-----END {label}-----\n");
            let _ = load_certs_pem(text.as_bytes(), "fuzz");
            let _ = load_key_pem(text.as_bytes(), "fuzz");
        }
    }
}
