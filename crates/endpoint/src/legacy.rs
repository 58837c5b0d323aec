//! The relaxed server-certificate check of BitVisor's TLS client, for
//! `legacy_v1_leaf = true`: the chain must still be signed by a trusted CA
//! (through intermediates that are CAs, with SHA-256 or better) and be
//! within its validity period, and a leaf that lists extended key usages
//! must allow serverAuth; but the leaf may be X.509 version 1, lack
//! subjectAltName, be marked CA:TRUE, and its names are not compared with
//! the address connected to. webpki refuses version 1 certificates outright,
//! so both the chain and the handshake signature are checked here with
//! x509-parser and aws-lc-rs.
use std::sync::Arc;

use aws_lc_rs::signature::{self as sig, VerificationAlgorithm};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, Error, SignatureScheme};
use sealtls_pki::{Diagnosis, Problem, Purpose};
use x509_parser::oid_registry::{OID_PKCS1_SHA1WITHRSA, OID_SHA1_WITH_RSA};
use x509_parser::prelude::{ASN1Time, FromDer, X509Certificate};

use crate::verify::Observation;

/// How many certificates a chain may have, anchor excluded.
const MAX_CHAIN: usize = 8;

/// Checks signatures up to a trusted CA and validity periods only.
#[derive(Debug)]
pub struct LegacyLeafVerifier {
    anchors: Vec<CertificateDer<'static>>,
    seen: Arc<Observation>,
}

impl LegacyLeafVerifier {
    /// A verifier trusting `anchors`, recording refusals into `seen`.
    pub fn new(anchors: Vec<CertificateDer<'static>>, seen: Arc<Observation>) -> Self {
        Self { anchors, seen }
    }
}

fn parse(der: &[u8]) -> Result<X509Certificate<'_>, CertificateError> {
    X509Certificate::from_der(der).map(|(_, c)| c).map_err(|_| CertificateError::BadEncoding)
}

/// Why a chain was refused: a rustls error that `diagnose` explains, or a
/// rule of this verifier's own, explained here.
enum Refusal {
    Webpki(CertificateError),
    Legacy(CertificateError, String),
}

fn issuer_is_ca(issuer: &X509Certificate<'_>) -> bool {
    let ca = matches!(issuer.basic_constraints(), Ok(Some(bc)) if bc.value.ca);
    let may_sign = match issuer.key_usage() {
        Ok(Some(ku)) => ku.value.key_cert_sign(),
        Ok(None) => true,
        Err(_) => false,
    };
    ca && may_sign
}

impl LegacyLeafVerifier {
    fn check_chain(&self, chain: &[CertificateDer<'_>], now: UnixTime) -> Result<(), Refusal> {
        let certs = chain.iter().take(MAX_CHAIN).map(|c| parse(c)).collect::<Result<Vec<_>, _>>().map_err(Refusal::Webpki)?;
        let anchors: Vec<X509Certificate<'_>> = self.anchors.iter().filter_map(|a| parse(a).ok()).collect();
        let at = ASN1Time::from_timestamp(now.as_secs() as i64).map_err(|_| Refusal::Webpki(CertificateError::BadEncoding))?;
        if let Some(leaf) = certs.first() {
            if let Ok(Some(eku)) = leaf.extended_key_usage() {
                if !eku.value.server_auth && !eku.value.any {
                    return Err(Refusal::Webpki(CertificateError::InvalidPurpose));
                }
            }
        }
        for (i, cert) in certs.iter().enumerate() {
            let position = || format!("certificate #{} ({})", i + 1, cert.subject());
            if at < cert.validity().not_before {
                return Err(Refusal::Webpki(CertificateError::NotValidYet));
            }
            if at > cert.validity().not_after {
                return Err(Refusal::Webpki(CertificateError::Expired));
            }
            let alg = &cert.signature_algorithm.algorithm;
            if *alg == OID_PKCS1_SHA1WITHRSA || *alg == OID_SHA1_WITH_RSA {
                let why = format!("{} is signed with SHA-1, which is broken; even legacy_v1_leaf requires SHA-256 or better: reissue it (openssl x509 -req -sha256 ...)", position());
                let ce = CertificateError::UnsupportedSignatureAlgorithmContext {
                    signature_algorithm_id: alg.as_bytes().to_vec(),
                    supported_algorithms: vec![],
                };
                return Err(Refusal::Legacy(ce, why));
            }
            let signed_by = |issuer: &X509Certificate<'_>| {
                issuer.subject() == cert.issuer() && cert.verify_signature(Some(issuer.public_key())).is_ok()
            };
            if anchors.iter().any(signed_by) {
                return Ok(());
            }
            match certs.get(i + 1) {
                Some(next) if signed_by(next) && !issuer_is_ca(next) => {
                    let why = format!(
                        "{} is signed by {}, which is not a CA (it lacks basicConstraints CA:TRUE or keyCertSign)",
                        position(),
                        next.subject()
                    );
                    return Err(Refusal::Legacy(CertificateError::UnknownIssuer, why));
                }
                Some(next) if signed_by(next) => {}
                _ => return Err(Refusal::Webpki(CertificateError::UnknownIssuer)),
            }
        }
        Err(Refusal::Webpki(CertificateError::UnknownIssuer))
    }
}

fn algorithm(scheme: SignatureScheme) -> Option<&'static dyn VerificationAlgorithm> {
    use SignatureScheme as S;
    Some(match scheme {
        S::RSA_PKCS1_SHA256 => &sig::RSA_PKCS1_2048_8192_SHA256,
        S::RSA_PKCS1_SHA384 => &sig::RSA_PKCS1_2048_8192_SHA384,
        S::RSA_PKCS1_SHA512 => &sig::RSA_PKCS1_2048_8192_SHA512,
        S::RSA_PSS_SHA256 => &sig::RSA_PSS_2048_8192_SHA256,
        S::RSA_PSS_SHA384 => &sig::RSA_PSS_2048_8192_SHA384,
        S::RSA_PSS_SHA512 => &sig::RSA_PSS_2048_8192_SHA512,
        S::ECDSA_NISTP256_SHA256 => &sig::ECDSA_P256_SHA256_ASN1,
        S::ECDSA_NISTP384_SHA384 => &sig::ECDSA_P384_SHA384_ASN1,
        S::ED25519 => &sig::ED25519,
        _ => return None,
    })
}

const SCHEMES: [SignatureScheme; 9] = [
    SignatureScheme::ECDSA_NISTP256_SHA256,
    SignatureScheme::ECDSA_NISTP384_SHA384,
    SignatureScheme::ED25519,
    SignatureScheme::RSA_PSS_SHA256,
    SignatureScheme::RSA_PSS_SHA384,
    SignatureScheme::RSA_PSS_SHA512,
    SignatureScheme::RSA_PKCS1_SHA256,
    SignatureScheme::RSA_PKCS1_SHA384,
    SignatureScheme::RSA_PKCS1_SHA512,
];

/// Verifies a handshake signature with the leaf's public key.
fn verify_signature(
    message: &[u8],
    cert: &CertificateDer<'_>,
    scheme: SignatureScheme,
    signature: &[u8],
) -> Result<HandshakeSignatureValid, Error> {
    let alg = algorithm(scheme).ok_or(Error::PeerMisbehaved(rustls::PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme))?;
    let (_, leaf) = X509Certificate::from_der(cert).map_err(|_| Error::InvalidCertificate(CertificateError::BadEncoding))?;
    let key = sig::UnparsedPublicKey::new(alg, leaf.public_key().subject_public_key.data.as_ref());
    key.verify(message, signature).map_err(|_| Error::InvalidCertificate(CertificateError::BadSignature))?;
    Ok(HandshakeSignatureValid::assertion())
}

impl ServerCertVerifier for LegacyLeafVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let chain: Vec<CertificateDer<'_>> = std::iter::once(end_entity.clone()).chain(intermediates.iter().cloned()).collect();
        match self.check_chain(&chain, now) {
            Ok(()) => Ok(ServerCertVerified::assertion()),
            Err(Refusal::Webpki(ce)) => {
                let err = Error::InvalidCertificate(ce);
                self.seen.record_refusal(&err, &chain, &self.anchors, Some(&server_name.to_str()), Purpose::ServerAuth);
                Err(err)
            }
            Err(Refusal::Legacy(ce, detail)) => {
                let subject = parse(end_entity).map(|c| c.subject().to_string()).unwrap_or_default();
                self.seen.record_diagnosis(Diagnosis { purpose: Purpose::ServerAuth, subject, problem: Problem::Other { detail } });
                Err(Error::InvalidCertificate(ce))
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.seen.record_signature(dss);
        verify_signature(message, cert, dss.scheme, dss.signature())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.seen.record_signature(dss);
        // TLS 1.3 forbids PKCS#1 v1.5 in handshake signatures (RFC 8446, 4.2.3).
        if matches!(dss.scheme, SignatureScheme::RSA_PKCS1_SHA256 | SignatureScheme::RSA_PKCS1_SHA384 | SignatureScheme::RSA_PKCS1_SHA512) {
            return Err(Error::PeerMisbehaved(rustls::PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme));
        }
        verify_signature(message, cert, dss.scheme, dss.signature())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        SCHEMES.to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};

    struct Made {
        der: CertificateDer<'static>,
        key: KeyPair,
    }

    /// A certificate named `cn`, CA or not, signed by `by` (self-signed when `None`).
    fn make(cn: &str, ca: bool, eku: &[ExtendedKeyUsagePurpose], by: Option<&Made>, days: (i64, i64)) -> Made {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.is_ca = if ca { IsCa::Ca(BasicConstraints::Unconstrained) } else { IsCa::NoCa };
        p.extended_key_usages = eku.to_vec();
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now + time::Duration::days(days.0);
        p.not_after = now + time::Duration::days(days.1);
        let cert = match by {
            None => p.self_signed(&key).unwrap(),
            Some(issuer) => p.signed_by(&key, &Issuer::from_ca_cert_der(&issuer.der, &issuer.key).unwrap()).unwrap(),
        };
        Made { der: cert.der().clone(), key }
    }

    const VALID: (i64, i64) = (-1, 30);

    fn verify(anchor: &Made, chain: &[&Made]) -> (Result<ServerCertVerified, Error>, Arc<Observation>) {
        let seen = Arc::new(Observation::default());
        let v = LegacyLeafVerifier::new(vec![anchor.der.clone()], seen.clone());
        let ders: Vec<CertificateDer<'static>> = chain.iter().map(|m| m.der.clone()).collect();
        let name = ServerName::try_from("127.0.0.1").unwrap();
        (v.verify_server_cert(&ders[0], &ders[1..], &name, &[], UnixTime::now()), seen)
    }

    #[test]
    fn a_leaf_without_names_marked_ca_is_accepted_when_signed_by_the_anchor() {
        let root = make("RootCA", true, &[], None, VALID);
        let leaf = make("*", true, &[ExtendedKeyUsagePurpose::ServerAuth], Some(&root), VALID);
        assert!(verify(&root, &[&leaf]).0.is_ok());
        let inter = make("Intermediate", true, &[], Some(&root), VALID);
        let leaf = make("*", false, &[], Some(&inter), VALID);
        assert!(verify(&root, &[&leaf, &inter]).0.is_ok());
    }

    #[test]
    fn another_ca_of_the_same_name_is_refused_and_explained() {
        let root = make("RootCA", true, &[], None, VALID);
        let other = make("RootCA", true, &[], None, VALID);
        let leaf = make("*", true, &[], Some(&other), VALID);
        let (result, seen) = verify(&root, &[&leaf]);
        assert_eq!(result.unwrap_err(), Error::InvalidCertificate(CertificateError::UnknownIssuer));
        assert!(seen.diagnosis().unwrap().what().contains("not the trusted CA of the same name"));
    }

    #[test]
    fn expired_and_future_certificates_are_refused() {
        let root = make("RootCA", true, &[], None, VALID);
        let old = make("*", false, &[], Some(&root), (-30, -1));
        assert_eq!(verify(&root, &[&old]).0.unwrap_err(), Error::InvalidCertificate(CertificateError::Expired));
        let early = make("*", false, &[], Some(&root), (1, 30));
        assert_eq!(verify(&root, &[&early]).0.unwrap_err(), Error::InvalidCertificate(CertificateError::NotValidYet));
    }

    #[test]
    fn a_client_certificate_cannot_act_as_server_or_as_issuer() {
        let root = make("RootCA", true, &[], None, VALID);
        let client = make("client", false, &[ExtendedKeyUsagePurpose::ClientAuth], Some(&root), VALID);
        assert_eq!(verify(&root, &[&client]).0.unwrap_err(), Error::InvalidCertificate(CertificateError::InvalidPurpose));
        let forged = make("*", false, &[], Some(&client), VALID);
        let (result, seen) = verify(&root, &[&forged, &client]);
        assert!(result.is_err());
        assert!(seen.diagnosis().unwrap().what().contains("which is not a CA"), "{:?}", seen.diagnosis());
    }

    #[test]
    fn handshake_signatures_are_checked_with_the_leaf_key() {
        let root = make("RootCA", true, &[], None, VALID);
        let leaf = make("*", false, &[], Some(&root), VALID);
        let message = b"handshake transcript";
        let signer = rustls::crypto::aws_lc_rs::sign::any_supported_type(
            &rustls::pki_types::PrivateKeyDer::try_from(leaf.key.serialize_der()).unwrap(),
        )
        .unwrap();
        let signature = signer.choose_scheme(&[SignatureScheme::ECDSA_NISTP256_SHA256]).unwrap().sign(message).unwrap();
        let scheme = SignatureScheme::ECDSA_NISTP256_SHA256;
        assert!(verify_signature(message, &leaf.der, scheme, &signature).is_ok());
        assert!(verify_signature(b"another transcript", &leaf.der, scheme, &signature).is_err());
        let other = make("*", false, &[], Some(&root), VALID);
        assert!(verify_signature(message, &other.der, scheme, &signature).is_err());
        assert!(verify_signature(message, &leaf.der, SignatureScheme::ED25519, &signature).is_err());
    }
}
