//! Certificate verifiers that keep rustls's verdict (and its TLS alert) but
//! record an explanation of every refusal, plus small observers of the
//! handshake that the explanations need.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ClientSessionStore, ResolvesClientCert, WebPkiServerVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, Error, NamedGroup, RootCertStore, SignatureScheme};
use sealtls_pki::{diagnose, Diagnosis, Purpose};

use crate::crypto::provider;
use crate::identity::{Mismatch, Rules};

/// What one handshake showed, filled in by the verifiers and resolvers.
#[derive(Debug, Default)]
pub struct Observation {
    diagnosis: Mutex<Option<Diagnosis>>,
    mismatch: Mutex<Option<Mismatch>>,
    peer_signature: Mutex<Option<SignatureScheme>>,
    cert_requested: AtomicBool,
    cert_sent: AtomicBool,
    ticket_received: AtomicBool,
}

impl Observation {
    /// The explanation of a refused peer certificate, if one was refused.
    pub fn diagnosis(&self) -> Option<Diagnosis> {
        self.diagnosis.lock().expect("not poisoned").clone()
    }
    /// A verified peer that no identity rule allows, if one was refused so.
    pub fn mismatch(&self) -> Option<Mismatch> {
        self.mismatch.lock().expect("not poisoned").clone()
    }
    /// The signature scheme the peer signed the handshake with.
    pub fn peer_signature(&self) -> Option<SignatureScheme> {
        *self.peer_signature.lock().expect("not poisoned")
    }
    /// Whether the server asked us for a certificate.
    pub fn cert_requested(&self) -> bool {
        self.cert_requested.load(Ordering::Relaxed)
    }
    /// Whether we sent a certificate.
    pub fn cert_sent(&self) -> bool {
        self.cert_sent.load(Ordering::Relaxed)
    }
    /// Whether a TLS 1.3 session ticket arrived: the server accepted our Finished.
    pub fn ticket_received(&self) -> bool {
        self.ticket_received.load(Ordering::Relaxed)
    }
    pub(crate) fn record_refusal(
        &self,
        err: &Error,
        chain: &[CertificateDer<'_>],
        anchors: &[CertificateDer<'_>],
        name: Option<&str>,
        purpose: Purpose,
    ) {
        if let Error::InvalidCertificate(ce) = err {
            *self.diagnosis.lock().expect("not poisoned") = Some(diagnose(chain, anchors, name, purpose, ce));
        }
    }
    pub(crate) fn record_diagnosis(&self, diagnosis: Diagnosis) {
        *self.diagnosis.lock().expect("not poisoned") = Some(diagnosis);
    }
    /// Checks a verified leaf against `rules`; a refusal is recorded and
    /// becomes `ApplicationVerificationFailure`, which rustls sends as the
    /// access_denied alert.
    fn check_rules(&self, rules: Option<&Rules>, leaf: &CertificateDer<'_>) -> Result<(), Error> {
        let Some(rules) = rules else { return Ok(()) };
        rules.matches(leaf).map_err(|m| {
            *self.mismatch.lock().expect("not poisoned") = Some(m);
            Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)
        })
    }
    pub(crate) fn record_signature(&self, dss: &DigitallySignedStruct) {
        *self.peer_signature.lock().expect("not poisoned") = Some(dss.scheme);
    }
}

fn full_chain<'a>(end_entity: &CertificateDer<'a>, intermediates: &[CertificateDer<'a>]) -> Vec<CertificateDer<'a>> {
    std::iter::once(end_entity.clone()).chain(intermediates.iter().cloned()).collect()
}

/// Verifies servers with webpki and records why one was refused.
#[derive(Debug)]
pub struct ExplainingServerVerifier {
    inner: Arc<WebPkiServerVerifier>,
    anchors: Vec<CertificateDer<'static>>,
    name_check: bool,
    rules: Option<Arc<Rules>>,
    seen: Arc<Observation>,
}

impl ExplainingServerVerifier {
    /// A verifier trusting `roots`; `anchors` are the same certificates, kept
    /// for explanations. Without `name_check` a certificate valid for
    /// another name is accepted (the chain is still verified in full).
    pub fn new(
        roots: RootCertStore,
        anchors: Vec<CertificateDer<'static>>,
        name_check: bool,
        seen: Arc<Observation>,
    ) -> Result<Self, Error> {
        let inner =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider()).build().map_err(|e| Error::General(e.to_string()))?;
        Ok(Self { inner, anchors, name_check, rules: None, seen })
    }

    /// Also requires a verified server to match one of `rules`.
    pub fn with_rules(mut self, rules: Option<Arc<Rules>>) -> Self {
        self.rules = rules;
        self
    }
}

impl ServerCertVerifier for ExplainingServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let mut result = self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now);
        // webpki checks the name only after the chain, so a name error
        // means the chain itself was accepted.
        if !self.name_check
            && matches!(
                result,
                Err(Error::InvalidCertificate(CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }))
            )
        {
            result = Ok(ServerCertVerified::assertion());
        }
        if let Err(e) = &result {
            let name = server_name.to_str();
            self.seen.record_refusal(e, &full_chain(end_entity, intermediates), &self.anchors, Some(&name), Purpose::ServerAuth);
        }
        let verified = result?;
        self.seen.check_rules(self.rules.as_deref(), end_entity)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.seen.record_signature(dss);
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.seen.record_signature(dss);
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Verifies client certificates and records why one was refused.
#[derive(Debug)]
pub struct ExplainingClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    anchors: Arc<Vec<CertificateDer<'static>>>,
    rules: Option<Arc<Rules>>,
    seen: Arc<Observation>,
}

impl ExplainingClientVerifier {
    /// Wraps `inner`, explaining its refusals into `seen`.
    pub fn new(inner: Arc<dyn ClientCertVerifier>, anchors: Arc<Vec<CertificateDer<'static>>>, seen: Arc<Observation>) -> Self {
        Self { inner, anchors, rules: None, seen }
    }

    /// Also requires a verified client certificate to match one of `rules`
    /// (a client that sends none, where that is allowed, is not checked).
    pub fn with_rules(mut self, rules: Option<Arc<Rules>>) -> Self {
        self.rules = rules;
        self
    }
}

impl ClientCertVerifier for ExplainingClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }
    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let result = self.inner.verify_client_cert(end_entity, intermediates, now);
        if let Err(e) = &result {
            self.seen.record_refusal(e, &full_chain(end_entity, intermediates), &self.anchors, None, Purpose::ClientAuth);
        }
        let verified = result?;
        self.seen.check_rules(self.rules.as_deref(), end_entity)?;
        Ok(verified)
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.seen.record_signature(dss);
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.seen.record_signature(dss);
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Offers our client certificate (if any) and records that the server asked.
#[derive(Debug)]
pub struct RecordingClientCert {
    key: Option<Arc<CertifiedKey>>,
    seen: Arc<Observation>,
}

impl RecordingClientCert {
    /// Offers `key` when the server asks for a certificate.
    pub fn new(key: Option<Arc<CertifiedKey>>, seen: Arc<Observation>) -> Self {
        Self { key, seen }
    }
}

impl ResolvesClientCert for RecordingClientCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.seen.cert_requested.store(true, Ordering::Relaxed);
        self.seen.cert_sent.store(self.key.is_some(), Ordering::Relaxed);
        self.key.clone()
    }
    fn has_certs(&self) -> bool {
        true
    }
}

/// A session store that keeps nothing (each connection is a full
/// handshake) but notes that the server sent a ticket, which a TLS 1.3
/// server does only after accepting our Finished (and our certificate).
#[derive(Debug)]
pub struct TicketWatch {
    seen: Arc<Observation>,
}

impl TicketWatch {
    /// Records tickets into `seen`.
    pub fn new(seen: Arc<Observation>) -> Self {
        Self { seen }
    }
}

impl ClientSessionStore for TicketWatch {
    fn set_kx_hint(&self, _: ServerName<'static>, _: NamedGroup) {}
    fn kx_hint(&self, _: &ServerName<'_>) -> Option<NamedGroup> {
        None
    }
    fn set_tls12_session(&self, _: ServerName<'static>, _: rustls::client::Tls12ClientSessionValue) {}
    fn tls12_session(&self, _: &ServerName<'_>) -> Option<rustls::client::Tls12ClientSessionValue> {
        None
    }
    fn remove_tls12_session(&self, _: &ServerName<'static>) {}
    fn insert_tls13_ticket(&self, _: ServerName<'static>, _: rustls::client::Tls13ClientSessionValue) {
        self.seen.ticket_received.store(true, Ordering::Relaxed);
    }
    fn take_tls13_ticket(&self, _: &ServerName<'static>) -> Option<rustls::client::Tls13ClientSessionValue> {
        None
    }
}
