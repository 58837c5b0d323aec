//! The relaxed server-certificate check of BitVisor's TLS client, for
//! `legacy_v1_leaf = true`: the chain must still be signed by a trusted CA
//! and be within its validity period, but the leaf may be X.509 version 1,
//! lack subjectAltName, be marked CA:TRUE, and its names are not compared
//! with the address connected to. webpki refuses version 1 certificates
//! outright, so both the chain and the handshake signature are checked here
//! with x509-parser and aws-lc-rs.
use std::sync::Arc;

use aws_lc_rs::signature::{self as sig, VerificationAlgorithm};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, Error, SignatureScheme};
use sealtls_pki::Purpose;
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

impl LegacyLeafVerifier {
    fn check_chain(&self, chain: &[CertificateDer<'_>], now: UnixTime) -> Result<(), CertificateError> {
        let certs = chain.iter().take(MAX_CHAIN).map(|c| parse(c)).collect::<Result<Vec<_>, _>>()?;
        let anchors: Vec<X509Certificate<'_>> = self.anchors.iter().filter_map(|a| parse(a).ok()).collect();
        let at = ASN1Time::from_timestamp(now.as_secs() as i64).map_err(|_| CertificateError::BadEncoding)?;
        for (i, cert) in certs.iter().enumerate() {
            if at < cert.validity().not_before {
                return Err(CertificateError::NotValidYet);
            }
            if at > cert.validity().not_after {
                return Err(CertificateError::Expired);
            }
            let signed_by = |issuer: &X509Certificate<'_>| {
                issuer.subject() == cert.issuer() && cert.verify_signature(Some(issuer.public_key())).is_ok()
            };
            if anchors.iter().any(signed_by) {
                return Ok(());
            }
            match certs.get(i + 1) {
                Some(next) if signed_by(next) => {}
                _ => return Err(CertificateError::UnknownIssuer),
            }
        }
        Err(CertificateError::UnknownIssuer)
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
fn verify_signature(message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, Error> {
    let alg = algorithm(dss.scheme).ok_or(Error::PeerMisbehaved(rustls::PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme))?;
    let (_, leaf) = X509Certificate::from_der(cert).map_err(|_| Error::InvalidCertificate(CertificateError::BadEncoding))?;
    let key = sig::UnparsedPublicKey::new(alg, leaf.public_key().subject_public_key.data.as_ref());
    key.verify(message, dss.signature()).map_err(|_| Error::InvalidCertificate(CertificateError::BadSignature))?;
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
            Err(ce) => {
                let err = Error::InvalidCertificate(ce);
                self.seen.record_refusal(&err, &chain, &self.anchors, Some(&server_name.to_str()), Purpose::ServerAuth);
                Err(err)
            }
        }
    }

    fn verify_tls12_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, Error> {
        self.seen.record_signature(dss);
        verify_signature(message, cert, dss)
    }

    fn verify_tls13_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, Error> {
        self.seen.record_signature(dss);
        // TLS 1.3 forbids PKCS#1 v1.5 in handshake signatures (RFC 8446, 4.2.3).
        if matches!(dss.scheme, SignatureScheme::RSA_PKCS1_SHA256 | SignatureScheme::RSA_PKCS1_SHA384 | SignatureScheme::RSA_PKCS1_SHA512) {
            return Err(Error::PeerMisbehaved(rustls::PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme));
        }
        verify_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        SCHEMES.to_vec()
    }
}
