//! Certificates and signing keys picked by SNI from keyd. The ClientHello
//! gate fetches a name's chain asynchronously (cached, refreshed in the
//! background); rustls's resolver then finds it in the cache, and its
//! signer asks keyd for the one signature of the handshake.
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::{CertifiedKey, Signer, SigningKey};
use rustls::{AlertDescription, SignatureAlgorithm, SignatureScheme};
use rustls_pki_types::{CertificateDer, SubjectPublicKeyInfoDer};
use sealtls_custody_proto::{ChainInfo, ErrorCode, Family, KeyId, Request, Response, Scheme, Selector};
use sealtls_endpoint::gate::{HelloGate, Refusal};
use sealtls_pki::inspect::CertFacts;
use tracing::{info, warn};

use crate::client::{KeydClient, KeydError};

struct Cached {
    key: Arc<CertifiedKey>,
    generation: u64,
    fetched: Mutex<Instant>,
    refreshing: AtomicBool,
}

struct Inner {
    client: Arc<KeydClient>,
    by_name: RwLock<HashMap<String, Arc<Cached>>>,
    refresh_after: Duration,
}

/// Picks certificate chains and remote signing keys from keyd by SNI.
/// Install it both as the server's certificate resolver and as its
/// ClientHello gate.
#[derive(Clone)]
pub struct Keyless(Arc<Inner>);

impl std::fmt::Debug for Keyless {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keyless({})", self.0.client.endpoint())
    }
}

/// What rustls calls a key of this family.
fn algorithm(family: Family) -> SignatureAlgorithm {
    match family {
        Family::EcdsaP256 | Family::EcdsaP384 => SignatureAlgorithm::ECDSA,
        Family::Ed25519 => SignatureAlgorithm::ED25519,
        Family::Rsa => SignatureAlgorithm::RSA,
        Family::Other => SignatureAlgorithm::Unknown(0),
    }
}

fn refusal(alert: AlertDescription, reason: impl Into<String>) -> Refusal {
    Refusal { alert, reason: reason.into() }
}

impl Keyless {
    /// Serves what `client`'s keyd holds; a cached chain is checked again
    /// in the background once it is older than `refresh_after`.
    pub fn new(client: Arc<KeydClient>, refresh_after: Duration) -> Self {
        Self(Arc::new(Inner { client, by_name: RwLock::default(), refresh_after }))
    }

    fn certified(&self, info: &ChainInfo) -> Result<Arc<CertifiedKey>, String> {
        remote_certified(&self.0.client, info)
    }

    async fn fetch(&self, name: &str) -> Result<Arc<Cached>, Refusal> {
        let info = match self.0.client.call(&Request::Chain(Selector::Domain(name.to_string()))).await {
            Ok(Response::Chain(info)) => info,
            Ok(other) => return Err(refusal(AlertDescription::HandshakeFailure, format!("keyd answered CHAIN with {other:?}"))),
            Err(KeydError::Refused { code: ErrorCode::KeyNotFound, message }) => {
                return Err(refusal(AlertDescription::UnrecognisedName, format!("keyd has no key for this name: {message}")))
            }
            Err(e) => return Err(refusal(AlertDescription::HandshakeFailure, e.to_string())),
        };
        let key = self.certified(&info).map_err(|e| refusal(AlertDescription::HandshakeFailure, format!("{}: {e}", info.domain)))?;
        let cached =
            Arc::new(Cached { key, generation: info.generation, fetched: Mutex::new(Instant::now()), refreshing: AtomicBool::new(false) });
        self.0.by_name.write().expect("cache lock").insert(name.to_string(), cached.clone());
        Ok(cached)
    }

    /// Checks a cached name again: a new generation replaces it, a removed key drops it.
    fn refresh(&self, name: String, cached: Arc<Cached>) {
        let this = self.clone();
        tokio::spawn(async move {
            match this.0.client.call(&Request::Chain(Selector::Domain(name.clone()))).await {
                Ok(Response::Chain(info)) if info.generation == cached.generation => {
                    *cached.fetched.lock().expect("time lock") = Instant::now()
                }
                Ok(Response::Chain(_)) => match this.fetch(&name).await {
                    Ok(_) => info!(server_name = %name, "certificate chain changed in keyd; now serving the new one"),
                    Err(r) => warn!(server_name = %name, reason = %r.reason, "cannot load the changed chain; serving the old one"),
                },
                Err(KeydError::Refused { code: ErrorCode::KeyNotFound, .. }) => {
                    this.0.by_name.write().expect("cache lock").remove(&name);
                    info!(server_name = %name, "key removed from keyd; no longer served");
                }
                Ok(_) | Err(_) => {}
            }
            cached.refreshing.store(false, Ordering::Release);
        });
    }
}

/// A chain from keyd with a signing key that stays there.
fn remote_certified(client: &Arc<KeydClient>, info: &ChainInfo) -> Result<Arc<CertifiedKey>, String> {
    let certs: Vec<CertificateDer<'static>> = info.certs.iter().map(|c| CertificateDer::from(c.clone())).collect();
    let facts = certs.first().and_then(|c| CertFacts::from_der(c).ok()).ok_or("keyd sent a chain whose leaf does not parse")?;
    let family = Family::from_description(&facts.key);
    let (algorithm, schemes) = (algorithm(family), family.schemes());
    if schemes.is_empty() {
        return Err(format!("keyd holds a {} key, which TLS cannot sign with", facts.key));
    }
    let key = RemoteKey { client: client.clone(), key_id: info.key_id, algorithm, schemes, spki: facts.spki, domain: info.domain.clone() };
    Ok(Arc::new(CertifiedKey::new(certs, Arc::new(key))))
}

/// A client identity whose key stays in keyd: the chain keyd holds under
/// `name`, with a signer that asks keyd for the handshake's one signature
/// (as the server side's does). Offer it as a client's certificate, e.g.
/// through the endpoint's `ClientSettings::identity`; signing needs a
/// multi-thread tokio runtime.
pub async fn client_identity(client: Arc<KeydClient>, name: &str) -> Result<Arc<CertifiedKey>, String> {
    match client.call(&Request::Chain(Selector::Domain(name.to_string()))).await {
        Ok(Response::Chain(info)) => remote_certified(&client, &info).map_err(|e| format!("{name}: {e}")),
        Ok(other) => Err(format!("keyd answered CHAIN with {other:?}")),
        Err(KeydError::Refused { code: ErrorCode::KeyNotFound, message }) => Err(format!("keyd has no key named {name}: {message}")),
        Err(e) => Err(e.to_string()),
    }
}

impl HelloGate for Keyless {
    fn check<'a>(&'a self, server_name: Option<&'a str>) -> Pin<Box<dyn Future<Output = Result<(), Refusal>> + Send + 'a>> {
        Box::pin(async move {
            let Some(name) = server_name else {
                return Err(refusal(AlertDescription::HandshakeFailure, "the client sent no server name (SNI); keys are picked by name, so the client must send one (openssl s_client -servername NAME)"));
            };
            let name = name.to_ascii_lowercase();
            let cached = self.0.by_name.read().expect("cache lock").get(&name).cloned();
            match cached {
                Some(c) => {
                    let stale = c.fetched.lock().expect("time lock").elapsed() > self.0.refresh_after;
                    if stale && !c.refreshing.swap(true, Ordering::AcqRel) {
                        self.refresh(name, c);
                    }
                    Ok(())
                }
                None => self.fetch(&name).await.map(|_| ()),
            }
        })
    }
}

impl ResolvesServerCert for Keyless {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name()?.to_ascii_lowercase();
        self.0.by_name.read().expect("cache lock").get(&name).map(|c| c.key.clone())
    }
}

/// A key that stays in keyd.
struct RemoteKey {
    client: Arc<KeydClient>,
    key_id: KeyId,
    algorithm: SignatureAlgorithm,
    schemes: &'static [Scheme],
    spki: Vec<u8>,
    domain: String,
}

impl std::fmt::Debug for RemoteKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RemoteKey({}, {})", self.domain, self.key_id)
    }
}

impl SigningKey for RemoteKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        let scheme = self.schemes.iter().copied().find(|s| offered.contains(&SignatureScheme::from(*s as u16)))?;
        Some(Box::new(RemoteSigner { client: self.client.clone(), key_id: self.key_id, scheme, domain: self.domain.clone() }))
    }

    fn public_key(&self) -> Option<SubjectPublicKeyInfoDer<'_>> {
        Some(SubjectPublicKeyInfoDer::from(self.spki.as_slice()))
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        self.algorithm
    }
}

struct RemoteSigner {
    client: Arc<KeydClient>,
    key_id: KeyId,
    scheme: Scheme,
    domain: String,
}

impl std::fmt::Debug for RemoteSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RemoteSigner({}, {:?})", self.domain, self.scheme)
    }
}

impl Signer for RemoteSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        let request = Request::Sign { key: Selector::KeyId(self.key_id), scheme: self.scheme, message: message.to_vec() };
        match self.client.call_blocking(&request) {
            Ok(Response::Signature(sig)) => Ok(sig),
            Ok(other) => Err(rustls::Error::General(format!("keyd answered SIGN with {other:?}"))),
            Err(e) => {
                warn!(domain = %self.domain, error = %e, "keyd did not sign");
                Err(rustls::Error::General(format!("keyd did not sign for {}: {e}", self.domain)))
            }
        }
    }

    fn scheme(&self) -> SignatureScheme {
        SignatureScheme::from(self.scheme as u16)
    }
}
