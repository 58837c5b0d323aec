//! What an endpoint is configured with, and the rustls configurations built
//! from it.
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use rustls::client::danger::ServerCertVerifier;
use rustls::client::{ResolvesClientCert, Resumption};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{ClientConfig, RootCertStore, ServerConfig, SignatureScheme, SupportedProtocolVersion};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sealtls_failure::{Problem, Remedy};

use crate::crypto::provider;
use crate::gate::HelloInfo;
use crate::identity::Rules;
use crate::legacy::LegacyLeafVerifier;
use crate::signing::SigningThreads;
use crate::tls12_ecdsa::{needs_other_hash, Tls12EcdsaKey};
use crate::verify::{ExplainingClientVerifier, ExplainingServerVerifier, Observation, RecordingClientCert, TicketWatch};

/// Which TLS versions an endpoint speaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TlsVersions {
    /// TLS 1.2 only.
    V12,
    /// TLS 1.3 only.
    V13,
    /// TLS 1.3 and 1.2.
    #[default]
    Any,
}

impl TlsVersions {
    /// The rustls protocol versions.
    pub fn rustls(self) -> &'static [&'static SupportedProtocolVersion] {
        static V12: [&SupportedProtocolVersion; 1] = [&rustls::version::TLS12];
        static V13: [&SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
        static ANY: [&SupportedProtocolVersion; 2] = [&rustls::version::TLS13, &rustls::version::TLS12];
        match self {
            Self::V12 => &V12,
            Self::V13 => &V13,
            Self::Any => &ANY,
        }
    }
}

impl TlsVersions {
    /// Parses `1.2`, `1.3` or `any`; anything else is refused with the choices as the fix.
    pub fn parse(s: &str) -> Result<Self, Problem> {
        match s {
            "1.2" => Ok(Self::V12),
            "1.3" => Ok(Self::V13),
            "any" => Ok(Self::Any),
            _ => Err(Problem::new(format!("unknown TLS version `{s}`"), "choose 1.2, 1.3 or any")),
        }
    }
}

/// For clap: the refusal in one line, fix included.
impl FromStr for TlsVersions {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::parse(s).map_err(|e| e.with_fix())
    }
}

impl fmt::Display for TlsVersions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::V12 => "1.2",
            Self::V13 => "1.3",
            Self::Any => "any",
        })
    }
}

/// Whether a server asks clients for certificates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuthMode {
    /// Never ask.
    None,
    /// Ask; accept clients without one, verify those that send one.
    Optional,
    /// Ask and refuse clients without a valid certificate.
    Required,
}

impl ClientAuthMode {
    /// Parses `none`, `optional` or `required`; anything else is refused with the choices as the fix.
    pub fn parse(s: &str) -> Result<Self, Problem> {
        match s {
            "none" => Ok(Self::None),
            "optional" => Ok(Self::Optional),
            "required" => Ok(Self::Required),
            _ => Err(Problem::new(format!("unknown client-auth mode `{s}`"), "choose none, optional or required")),
        }
    }
}

/// For clap: the refusal in one line, fix included.
impl FromStr for ClientAuthMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::parse(s).map_err(|e| e.with_fix())
    }
}

/// Why an endpoint could not be configured.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The private key does not belong to the certificate.
    #[error("{key}: this private key does not belong to the certificate in {cert}")]
    KeyMismatch {
        /// Certificate origin.
        cert: String,
        /// Key origin.
        key: String,
    },
    /// Client authentication was asked for without a CA to check clients against.
    #[error("--client-auth {0} needs --ca FILE: the CA whose client certificates are accepted")]
    ClientAuthWithoutCa(&'static str),
    /// Identity rules for clients were given, but client certificates are not required.
    #[error("client identity rules (--allow-*) need client certificates to be required")]
    RulesWithoutClientAuth,
    /// A trust anchor that rustls cannot use.
    #[error("{origin}: certificate #{index} cannot be used as a trust anchor: {detail}")]
    BadAnchor {
        /// Where the anchors came from.
        origin: String,
        /// Position, from 1.
        index: usize,
        /// What rustls said.
        detail: String,
    },
    /// The system trust store could not be read.
    #[error("cannot load the system's trusted CAs: {0}")]
    SystemRoots(String),
    /// rustls refused the configuration.
    #[error("TLS configuration refused: {0}")]
    Rustls(#[from] rustls::Error),
    /// A certificate or key could not be loaded.
    #[error(transparent)]
    Load(#[from] sealtls_pki::LoadError),
}

impl Remedy for SetupError {
    fn fix(&self) -> Option<String> {
        match self {
            Self::KeyMismatch { .. } => Some("give the key that was used to request that certificate".into()),
            Self::SystemRoots(_) => Some("pass --ca FILE instead".into()),
            Self::Load(e) => e.fix(),
            Self::RulesWithoutClientAuth => Some(
                "give --ca FILE, the CA whose client certificates are checked against the rules, and leave --client-auth at required"
                    .into(),
            ),
            Self::ClientAuthWithoutCa(_) | Self::BadAnchor { .. } | Self::Rustls(_) => None,
        }
    }
}

/// Certificates to trust, and where they came from (for messages).
#[derive(Clone, Debug)]
pub struct Anchors {
    /// Where the certificates came from.
    pub origin: String,
    /// The CA certificates.
    pub certs: Vec<CertificateDer<'static>>,
}

impl Anchors {
    /// The certificates as a rustls root store, naming the one that is refused.
    pub fn root_store(&self) -> Result<RootCertStore, SetupError> {
        let mut store = RootCertStore::empty();
        for (i, cert) in self.certs.iter().enumerate() {
            store.add(cert.clone()).map_err(|e| SetupError::BadAnchor {
                origin: self.origin.clone(),
                index: i + 1,
                detail: e.to_string(),
            })?;
        }
        Ok(store)
    }

    /// The operating system's trusted CAs.
    pub fn system() -> Result<Self, SetupError> {
        let found = rustls_native_certs::load_native_certs();
        if found.certs.is_empty() {
            let why = found.errors.first().map_or("no certificates found".to_owned(), |e| e.to_string());
            return Err(SetupError::SystemRoots(why));
        }
        Ok(Self { origin: "system trust store".into(), certs: found.certs })
    }
}

/// A certificate chain with its private key, checked to belong together.
/// The public keys are compared directly, so that a certificate webpki
/// would refuse (version 1, say) can still be served and explained.
pub fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    key: &PrivateKeyDer<'_>,
    cert_origin: &str,
    key_origin: &str,
) -> Result<Arc<CertifiedKey>, SetupError> {
    let signer = sealtls_pki::load::signing_key(key, key_origin)?;
    let leaf_spki = chain.first().and_then(|c| sealtls_pki::inspect::CertFacts::from_der(c).ok()).map(|f| f.spki);
    let key_spki = signer.public_key().map(|k| k.as_ref().to_vec());
    if leaf_spki.is_none() || key_spki.is_some_and(|k| Some(k) != leaf_spki) {
        return Err(SetupError::KeyMismatch { cert: cert_origin.into(), key: key_origin.into() });
    }
    Ok(Arc::new(CertifiedKey::new(chain, signer)))
}

/// How a server is configured.
pub struct ServerSettings {
    /// Picks the certificate and signing key for each handshake.
    pub identity: Arc<dyn ResolvesServerCert>,
    /// CAs whose client certificates are accepted.
    pub client_ca: Option<Anchors>,
    /// Whether clients are asked for certificates.
    pub client_auth: ClientAuthMode,
    /// TLS versions offered.
    pub versions: TlsVersions,
}

/// The client verifier and the anchors it explains refusals with.
type ClientVerification = (Arc<dyn ClientCertVerifier>, Arc<Vec<CertificateDer<'static>>>);

/// A server's TLS configuration, ready to hand out per connection.
pub struct ServerTls {
    base: Arc<ServerConfig>,
    versions: TlsVersions,
    identity: Arc<dyn ResolvesServerCert>,
    client_verifier: Option<ClientVerification>,
    client_auth: ClientAuthMode,
    client_rules: Option<Arc<Rules>>,
    gate: Option<Arc<dyn crate::gate::HelloGate>>,
    /// A key for TLS 1.2 clients whose ECDSA schemes name another hash, and
    /// the scheme of the key's own hash.
    tls12_ecdsa: Option<(Arc<CertifiedKey>, SignatureScheme)>,
    /// The threads that make first flights for a key that waits to sign.
    signing_threads: Option<Arc<SigningThreads>>,
}

impl ServerTls {
    /// Builds the configuration.
    pub fn new(settings: ServerSettings) -> Result<Self, SetupError> {
        let builder = ServerConfig::builder_with_provider(provider()).with_protocol_versions(settings.versions.rustls())?;
        let (builder, client_verifier) = match (settings.client_auth, &settings.client_ca) {
            (ClientAuthMode::None, _) => (builder.with_no_client_auth(), None),
            (mode, None) => {
                return Err(SetupError::ClientAuthWithoutCa(if mode == ClientAuthMode::Required { "required" } else { "optional" }))
            }
            (mode, Some(anchors)) => {
                let mut vb = WebPkiClientVerifier::builder_with_provider(Arc::new(anchors.root_store()?), provider());
                if mode == ClientAuthMode::Optional {
                    vb = vb.allow_unauthenticated();
                }
                let verifier = vb.build().map_err(|e| rustls::Error::General(e.to_string()))?;
                let b = builder.with_client_cert_verifier(verifier.clone());
                (b, Some((verifier, Arc::new(anchors.certs.clone()))))
            }
        };
        let mut config = builder.with_cert_resolver(settings.identity.clone());
        // TLS 1.2: the server's suite order (AEAD, forward secrecy first), not the client's.
        config.ignore_client_order = true;
        Ok(Self {
            base: Arc::new(config),
            versions: settings.versions,
            identity: settings.identity,
            client_verifier,
            client_auth: if settings.client_ca.is_some() { settings.client_auth } else { ClientAuthMode::None },
            client_rules: None,
            gate: None,
            tls12_ecdsa: None,
            signing_threads: None,
        })
    }

    /// Whether clients are asked for certificates.
    pub fn client_auth(&self) -> ClientAuthMode {
        self.client_auth
    }

    /// Lets in only clients whose verified certificate matches one of
    /// `rules`; others are refused in the handshake with access_denied.
    /// Empty rules change nothing (any certificate the CA issued is
    /// accepted). Rules need client certificates to be required.
    pub fn with_client_rules(mut self, rules: Rules) -> Result<Self, SetupError> {
        if rules.is_empty() {
            return Ok(self);
        }
        if self.client_auth != ClientAuthMode::Required {
            return Err(SetupError::RulesWithoutClientAuth);
        }
        self.client_rules = Some(Arc::new(rules));
        Ok(self)
    }

    /// Has every ClientHello checked by `gate` before the handshake goes on.
    pub fn with_gate(mut self, gate: Arc<dyn crate::gate::HelloGate>) -> Self {
        self.gate = Some(gate);
        self
    }

    /// Offers these application protocols (ALPN), most preferred first, on
    /// every connection; a client that offers others is refused.
    pub fn with_alpn(mut self, protocols: Vec<Vec<u8>>) -> Self {
        Arc::make_mut(&mut self.base).alpn_protocols = protocols;
        self
    }

    /// For keys that block while they sign (keyd answers over a socket):
    /// the server flight that carries the signature is made on one of at
    /// most `threads` blocking threads instead of a runtime worker, so a
    /// burst of handshakes neither stalls the workers nor starts a thread
    /// each. Needs a gate, which reads the ClientHello first.
    pub fn with_signing_threads(mut self, threads: usize) -> Self {
        self.signing_threads = Some(Arc::new(SigningThreads::new(threads)));
        self
    }

    /// The threads set by [`Self::with_signing_threads`].
    pub fn signing_threads(&self) -> Option<&Arc<SigningThreads>> {
        self.signing_threads.as_ref()
    }

    /// The ClientHello check, if any.
    pub fn gate(&self) -> Option<&Arc<dyn crate::gate::HelloGate>> {
        self.gate.as_ref()
    }

    /// Also serves TLS 1.2 clients that offer only ECDSA schemes of another
    /// hash than `key`'s own (see [`crate::tls12_ecdsa`]), with `chain`. A
    /// key that is not P-256 or P-384 ECDSA changes nothing.
    pub fn with_tls12_ecdsa(mut self, chain: Vec<CertificateDer<'static>>, key: &PrivateKeyDer<'_>) -> Self {
        if let Some(ecdsa) = Tls12EcdsaKey::new(key) {
            let native = ecdsa.native();
            self.tls12_ecdsa = Some((Arc::new(CertifiedKey::new(chain, Arc::new(ecdsa))), native));
        }
        self
    }

    /// Whether connections need their ClientHello read before the handshake.
    pub fn reads_hello(&self) -> bool {
        self.gate.is_some() || self.tls12_ecdsa.is_some()
    }

    /// The configuration for one connection, given its ClientHello when it
    /// was read. With client authentication the verifier is wrapped so that a
    /// refusal is explained in `seen`, this connection's observation; a hello
    /// that only the TLS 1.2 ECDSA key can serve gets a TLS 1.2 configuration
    /// with that key. Otherwise every connection shares the base configuration.
    pub fn for_connection(&self, seen: &Arc<Observation>, hello: Option<&HelloInfo>) -> Arc<ServerConfig> {
        let other_hash = match (&self.tls12_ecdsa, hello) {
            (Some((key, native)), Some(hello)) if self.versions != TlsVersions::V13 => {
                needs_other_hash(*native, &hello.signature_schemes, &hello.cipher_suites).then(|| key.clone())
            }
            _ => None,
        };
        if other_hash.is_none() && self.client_verifier.is_none() {
            return self.base.clone();
        }
        let versions = if other_hash.is_some() { TlsVersions::V12 } else { self.versions };
        let builder =
            ServerConfig::builder_with_provider(provider()).with_protocol_versions(versions.rustls()).expect("versions rustls supports");
        let builder = match &self.client_verifier {
            None => builder.with_no_client_auth(),
            Some((inner, anchors)) => {
                let verifier =
                    ExplainingClientVerifier::new(inner.clone(), anchors.clone(), seen.clone()).with_rules(self.client_rules.clone());
                builder.with_client_cert_verifier(Arc::new(verifier))
            }
        };
        let mut config = match other_hash {
            Some(key) => builder.with_cert_resolver(Arc::new(SingleCertAndKey::from(Arc::unwrap_or_clone(key)))),
            None => builder.with_cert_resolver(self.identity.clone()),
        };
        // Sessions resumed on one connection were stored by another.
        config.session_storage = self.base.session_storage.clone();
        config.ticketer = self.base.ticketer.clone();
        config.ignore_client_order = self.base.ignore_client_order;
        config.alpn_protocols = self.base.alpn_protocols.clone();
        Arc::new(config)
    }
}

/// How a client is configured.
#[derive(Clone)]
pub struct ClientSettings {
    /// Whom to trust.
    pub trust: Anchors,
    /// Our certificate chain and key, when we have one.
    pub identity: Option<Arc<CertifiedKey>>,
    /// TLS versions offered.
    pub versions: TlsVersions,
    /// Accept a server leaf the way BitVisor's client does: signature chain
    /// and validity only (see [`crate::legacy`]).
    pub legacy_v1_leaf: bool,
    /// Check the server's certificate against the name connected to. Off
    /// only for deployments that must behave like TRENTOS TlsServer, which
    /// checks the chain alone.
    pub name_check: bool,
}

impl ClientSettings {
    /// A configuration for one connection, with the observation its
    /// verifier and certificate resolver fill in.
    pub fn config(&self) -> Result<(Arc<ClientConfig>, Arc<Observation>), SetupError> {
        self.config_with_rules(None)
    }

    /// [`ClientSettings::config`], also requiring the verified server to
    /// match one of `server_rules` (refused with access_denied otherwise;
    /// the mismatch is recorded in the observation). Not with `legacy_v1_leaf`.
    pub fn config_with_rules(&self, server_rules: Option<Arc<Rules>>) -> Result<(Arc<ClientConfig>, Arc<Observation>), SetupError> {
        let seen = Arc::new(Observation::default());
        let verifier: Arc<dyn ServerCertVerifier> = if self.legacy_v1_leaf {
            Arc::new(LegacyLeafVerifier::new(self.trust.certs.clone(), seen.clone()))
        } else {
            let explaining =
                ExplainingServerVerifier::new(self.trust.root_store()?, self.trust.certs.clone(), self.name_check, seen.clone())?;
            Arc::new(explaining.with_rules(server_rules))
        };
        let resolver: Arc<dyn ResolvesClientCert> = Arc::new(RecordingClientCert::new(self.identity.clone(), seen.clone()));
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(self.versions.rustls())?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_cert_resolver(resolver);
        config.resumption =
            Resumption::store(Arc::new(TicketWatch::new(seen.clone()))).tls12_resumption(rustls::client::Tls12Resumption::Disabled);
        Ok((Arc::new(config), seen))
    }
}
