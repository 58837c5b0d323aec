//! Certificates and signing keys picked by SNI from keyd. The ClientHello
//! gate fetches a name's chain asynchronously (cached, refreshed in the
//! background); rustls's resolver then finds it in the cache, and its
//! signer asks keyd for the one signature of the handshake.
//!
//! A client that sends many distinct names cannot exhaust the resolver:
//! the name cache holds at most [`KeylessLimits::cache`] names (the least
//! recently used is dropped), a name keyd does not know is remembered for
//! [`KeylessLimits::miss_ttl`] (answered `unrecognized_name` without asking
//! keyd again), each name has at most one CHAIN request under way, and at
//! most [`KeylessLimits::in_flight`] names are looked up at once (more are
//! refused with `handshake_failure`). Names that keyd resolves to the same
//! key and generation (a wildcard) share one copy of the chain.
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::{CertifiedKey, Signer, SigningKey};
use rustls::{AlertDescription, SignatureAlgorithm, SignatureScheme};
use rustls_pki_types::{CertificateDer, SubjectPublicKeyInfoDer};
use sealtls_custody_proto::{ChainInfo, ErrorCode, Family, KeyId, Request, Response, Scheme, Selector};
use sealtls_endpoint::gate::{HelloGate, Refusal};
use sealtls_pki::inspect::CertFacts;
use tokio::sync::{watch, Semaphore};
use tracing::{info, warn};

use crate::client::KeydError;
use crate::fleet::KeydFleet;

/// How much the resolver keeps and asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeylessLimits {
    /// Server names whose chains are cached; the least recently used is
    /// dropped beyond it. The same number of misses is remembered.
    pub cache: usize,
    /// How long a name keyd does not know is answered `unrecognized_name`
    /// without asking keyd again.
    pub miss_ttl: Duration,
    /// Names looked up in keyd at once; a new name beyond it is refused with
    /// `handshake_failure`.
    pub in_flight: usize,
    /// Handshakes whose signature is awaited at once: each holds a blocking
    /// thread while keyd signs (see `ServerTls::with_signing_threads`).
    pub signing_threads: usize,
}

impl Default for KeylessLimits {
    fn default() -> Self {
        Self { cache: 10_000, miss_ttl: Duration::from_secs(30), in_flight: 64, signing_threads: 32 }
    }
}

/// A map that holds at most `capacity` entries, dropping the least recently used.
struct Lru<K, V> {
    capacity: usize,
    tick: u64,
    entries: HashMap<K, (V, u64)>,
    order: BTreeMap<u64, K>,
}

impl<K: Hash + Eq + Clone, V: Clone> Lru<K, V> {
    fn new(capacity: usize) -> Self {
        Self { capacity: capacity.max(1), tick: 0, entries: HashMap::new(), order: BTreeMap::new() }
    }

    /// The value, now the most recently used.
    fn get(&mut self, key: &K) -> Option<V> {
        self.tick += 1;
        let (value, used) = self.entries.get_mut(key)?;
        self.order.remove(used);
        *used = self.tick;
        self.order.insert(self.tick, key.clone());
        Some(value.clone())
    }

    fn insert(&mut self, key: K, value: V) {
        self.remove(&key);
        while self.entries.len() >= self.capacity {
            let Some((_, oldest)) = self.order.pop_first() else { break };
            self.entries.remove(&oldest);
        }
        self.tick += 1;
        self.order.insert(self.tick, key.clone());
        self.entries.insert(key, (value, self.tick));
    }

    fn remove(&mut self, key: &K) -> Option<V> {
        let (value, used) = self.entries.remove(key)?;
        self.order.remove(&used);
        Some(value)
    }

    fn len(&self) -> usize {
        self.entries.len()
    }
    fn values(&self) -> impl Iterator<Item = &V> {
        self.entries.values().map(|(v, _)| v)
    }
}

struct Cached {
    key: Arc<CertifiedKey>,
    generation: u64,
    fetched: Mutex<Instant>,
    refreshing: AtomicBool,
}

/// The outcome of a lookup under way, for the hellos that wait for it.
type Pending = watch::Receiver<Option<Result<(), Refusal>>>;

struct Inner {
    keyds: Arc<KeydFleet>,
    refresh_after: Duration,
    limits: KeylessLimits,
    by_name: Mutex<Lru<String, Arc<Cached>>>,
    /// Names keyd does not know, until when they are answered from here.
    misses: Mutex<Lru<String, (tokio::time::Instant, Refusal)>>,
    /// One lookup per name at a time.
    pending: Mutex<HashMap<String, Pending>>,
    lookups: Arc<Semaphore>,
    /// Chains by key and generation, so that names under one wildcard share one.
    shared: Mutex<HashMap<(KeyId, u64), Weak<CertifiedKey>>>,
}

/// Picks certificate chains and remote signing keys from keyd by SNI.
/// Install it both as the server's certificate resolver and as its
/// ClientHello gate.
#[derive(Clone)]
pub struct Keyless(Arc<Inner>);

impl std::fmt::Debug for Keyless {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keyless({})", self.0.keyds.endpoints())
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
    /// Serves what `client`'s keyd holds, with the default [`KeylessLimits`];
    /// a cached chain is checked again in the background once it is older
    /// than `refresh_after`.
    pub fn new(keyds: Arc<KeydFleet>, refresh_after: Duration) -> Self {
        Self::with_limits(keyds, refresh_after, KeylessLimits::default())
    }

    /// As [`Keyless::new`], with these limits.
    pub fn with_limits(keyds: Arc<KeydFleet>, refresh_after: Duration, limits: KeylessLimits) -> Self {
        Self(Arc::new(Inner {
            keyds,
            refresh_after,
            limits,
            by_name: Mutex::new(Lru::new(limits.cache)),
            misses: Mutex::new(Lru::new(limits.cache)),
            pending: Mutex::default(),
            lookups: Arc::new(Semaphore::new(limits.in_flight)),
            shared: Mutex::default(),
        }))
    }

    /// The keyds it asks.
    pub fn keyds(&self) -> &Arc<KeydFleet> {
        &self.0.keyds
    }

    /// The limits it keeps.
    pub fn limits(&self) -> KeylessLimits {
        self.0.limits
    }

    /// How many server names have a cached chain.
    pub fn cached_names(&self) -> usize {
        self.0.by_name.lock().expect("cache lock").len()
    }

    /// The leaf certificates of the cached chains, each once (names under
    /// one wildcard share a chain).
    pub fn cached_leaves(&self) -> Vec<rustls_pki_types::CertificateDer<'static>> {
        let cache = self.0.by_name.lock().expect("cache lock");
        let mut leaves: Vec<_> = cache.values().filter_map(|c| c.key.cert.first().cloned()).collect();
        leaves.sort_by(|a, b| a.as_ref().cmp(b.as_ref()));
        leaves.dedup();
        leaves
    }

    /// How many names keyd does not know are remembered (expired ones
    /// included until they are asked for again or pushed out).
    pub fn remembered_misses(&self) -> usize {
        self.0.misses.lock().expect("miss lock").len()
    }

    /// The chain for this key and generation, shared with every name that has it.
    fn certified(&self, info: &ChainInfo) -> Result<Arc<CertifiedKey>, String> {
        let id = (info.key_id, info.generation);
        if let Some(key) = self.0.shared.lock().expect("share lock").get(&id).and_then(Weak::upgrade) {
            return Ok(key);
        }
        let key = remote_certified(&self.0.keyds, info)?;
        let mut shared = self.0.shared.lock().expect("share lock");
        shared.insert(id, Arc::downgrade(&key));
        // Live chains are at most one per cached name; forget the others now and then.
        if shared.len() > 2 * self.0.limits.cache.max(1) {
            shared.retain(|_, k| k.strong_count() > 0);
        }
        Ok(key)
    }

    /// Asks keyd for `name`'s chain.
    async fn fetch(&self, name: &str) -> Result<Arc<Cached>, Refusal> {
        let info = match self.0.keyds.call(&Request::Chain(Selector::Domain(name.to_string()))).await {
            Ok(Response::Chain(info)) => info,
            Ok(other) => return Err(refusal(AlertDescription::HandshakeFailure, format!("keyd answered CHAIN with {other:?}"))),
            Err(KeydError::Refused { code: ErrorCode::KeyNotFound, message }) => {
                return Err(refusal(AlertDescription::UnrecognisedName, format!("keyd has no key for this name: {message}")))
            }
            Err(e) => return Err(refusal(AlertDescription::HandshakeFailure, e.to_string())),
        };
        let key = self.certified(&info).map_err(|e| refusal(AlertDescription::HandshakeFailure, format!("{}: {e}", info.domain)))?;
        Ok(Arc::new(Cached { key, generation: info.generation, fetched: Mutex::new(Instant::now()), refreshing: AtomicBool::new(false) }))
    }

    /// Looks `name` up and keeps the outcome: its chain, or that keyd does not know it.
    async fn lookup(&self, name: &str) -> Result<(), Refusal> {
        match self.fetch(name).await {
            Ok(cached) => {
                self.0.by_name.lock().expect("cache lock").insert(name.to_string(), cached);
                Ok(())
            }
            Err(r) => {
                if r.alert == AlertDescription::UnrecognisedName {
                    let until = tokio::time::Instant::now() + self.0.limits.miss_ttl;
                    self.0.misses.lock().expect("miss lock").insert(name.to_string(), (until, r.clone()));
                }
                Err(r)
            }
        }
    }

    /// The cached answer for `name`, if there is one: its chain (checked
    /// again in the background when stale) or a remembered miss.
    fn known(&self, name: &str) -> Option<Result<(), Refusal>> {
        let cached = self.0.by_name.lock().expect("cache lock").get(&name.to_string());
        if let Some(c) = cached {
            let stale = c.fetched.lock().expect("time lock").elapsed() > self.0.refresh_after;
            if stale && !c.refreshing.swap(true, Ordering::AcqRel) {
                self.refresh(name.to_string(), c);
            }
            return Some(Ok(()));
        }
        let mut misses = self.0.misses.lock().expect("miss lock");
        match misses.get(&name.to_string()) {
            Some((until, r)) if tokio::time::Instant::now() < until => Some(Err(r)),
            Some(_) => {
                misses.remove(&name.to_string());
                None
            }
            None => None,
        }
    }

    /// Answers from the cache, or joins the lookup of `name` under way, or starts one.
    async fn resolve_name(&self, name: String) -> Result<(), Refusal> {
        if let Some(answer) = self.known(&name) {
            return answer;
        }
        let mut pending = {
            let mut pending = self.0.pending.lock().expect("pending lock");
            // A lookup keeps its outcome before it leaves `pending`, so looking again here misses none.
            if let Some(answer) = self.known(&name) {
                return answer;
            }
            match pending.get(&name) {
                Some(rx) => rx.clone(),
                None => {
                    let Ok(permit) = self.0.lookups.clone().try_acquire_owned() else {
                        warn!(server_name = %name, limit = self.0.limits.in_flight, "too many names are being looked up in keyd at once; refusing this handshake");
                        return Err(refusal(
                            AlertDescription::HandshakeFailure,
                            format!("{} names are already being looked up in keyd", self.0.limits.in_flight),
                        ));
                    };
                    let (tx, rx) = watch::channel(None);
                    pending.insert(name.clone(), rx.clone());
                    // On a task of its own, so that a handshake that goes away does not end the lookup others wait for.
                    let this = self.clone();
                    tokio::spawn(async move {
                        let outcome = this.lookup(&name).await;
                        this.0.pending.lock().expect("pending lock").remove(&name);
                        let _ = tx.send(Some(outcome));
                        drop(permit);
                    });
                    rx
                }
            }
        };
        let outcome = match pending.wait_for(Option::is_some).await {
            Ok(outcome) => outcome.clone().expect("waited for an outcome"),
            Err(_) => Err(refusal(AlertDescription::HandshakeFailure, "the lookup in keyd was abandoned")),
        };
        outcome
    }

    /// Checks a cached name again: a new generation replaces it, a removed key drops it.
    fn refresh(&self, name: String, cached: Arc<Cached>) {
        let this = self.clone();
        tokio::spawn(async move {
            match this.0.keyds.call(&Request::Chain(Selector::Domain(name.clone()))).await {
                Ok(Response::Chain(info)) if info.generation == cached.generation => {
                    *cached.fetched.lock().expect("time lock") = Instant::now()
                }
                Ok(Response::Chain(_)) => match this.fetch(&name).await {
                    Ok(new) => {
                        this.0.by_name.lock().expect("cache lock").insert(name.clone(), new);
                        info!(server_name = %name, "certificate chain changed in keyd; now serving the new one")
                    }
                    Err(r) => warn!(server_name = %name, reason = %r.reason, "cannot load the changed chain; serving the old one"),
                },
                Err(KeydError::Refused { code: ErrorCode::KeyNotFound, .. }) => {
                    this.0.by_name.lock().expect("cache lock").remove(&name);
                    info!(server_name = %name, "key removed from keyd; no longer served");
                }
                Ok(_) | Err(_) => {}
            }
            cached.refreshing.store(false, Ordering::Release);
        });
    }
}

/// A chain from keyd with a signing key that stays there.
fn remote_certified(keyds: &Arc<KeydFleet>, info: &ChainInfo) -> Result<Arc<CertifiedKey>, String> {
    let certs: Vec<CertificateDer<'static>> = info.certs.iter().map(|c| CertificateDer::from(c.clone())).collect();
    let facts = certs.first().and_then(|c| CertFacts::from_der(c).ok()).ok_or("keyd sent a chain whose leaf does not parse")?;
    let family = Family::from_description(&facts.key);
    let (algorithm, schemes) = (algorithm(family), family.schemes());
    if schemes.is_empty() {
        return Err(format!("keyd holds a {} key, which TLS cannot sign with", facts.key));
    }
    let key = RemoteKey { keyds: keyds.clone(), key_id: info.key_id, algorithm, schemes, spki: facts.spki, domain: info.domain.clone() };
    Ok(Arc::new(CertifiedKey::new(certs, Arc::new(key))))
}

/// A client identity whose key stays in keyd: the chain keyd holds under
/// `name`, with a signer that asks keyd for the handshake's one signature
/// (as the server side's does). Offer it as a client's certificate, e.g.
/// through the endpoint's `ClientSettings::identity`; signing needs a
/// multi-thread tokio runtime.
pub async fn client_identity(keyds: Arc<KeydFleet>, name: &str) -> Result<Arc<CertifiedKey>, String> {
    match keyds.call(&Request::Chain(Selector::Domain(name.to_string()))).await {
        Ok(Response::Chain(info)) => remote_certified(&keyds, &info).map_err(|e| format!("{name}: {e}")),
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
            // A handshake that could not be signed would end without an alert
            // (rustls sends none for a signer's error): refuse it now.
            if let Some(down) = self.0.keyds.all_down() {
                return Err(refusal(AlertDescription::HandshakeFailure, down.to_string()));
            }
            self.resolve_name(name.to_ascii_lowercase()).await
        })
    }
}

impl ResolvesServerCert for Keyless {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name()?.to_ascii_lowercase();
        self.0.by_name.lock().expect("cache lock").get(&name).map(|c| c.key.clone())
    }
}

/// A key that stays in keyd.
struct RemoteKey {
    keyds: Arc<KeydFleet>,
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
        Some(Box::new(RemoteSigner { keyds: self.keyds.clone(), key_id: self.key_id, scheme, domain: self.domain.clone() }))
    }

    fn public_key(&self) -> Option<SubjectPublicKeyInfoDer<'_>> {
        Some(SubjectPublicKeyInfoDer::from(self.spki.as_slice()))
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        self.algorithm
    }
}

struct RemoteSigner {
    keyds: Arc<KeydFleet>,
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
        match self.keyds.call_blocking(&request) {
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
