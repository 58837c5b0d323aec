//! Custody: the installed keys in memory, and the answer to each request.
//! Transport-free, so the Unix and TLS listeners share it.
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer, PrivateSec1KeyDer};
use sealtls_custody_proto::{
    normalize_domain, ChainInfo, DigestSigning, DomainTable, ErrorCode, KeyEntry, KeyId, ListEntry, Op, Request, Response, Selector,
};
use sealtls_failure::Remedy;
use sealtls_pki::issue::KeyType;
use tracing::{info, warn};
use zeroize::Zeroizing;

use crate::authorize::{Decision, Grants, Peer};
use crate::backend::{Backend, Entry, Location, State};
use crate::error::StoreError;
use crate::keys::{MemoryKey, Sign, SignError};
use crate::metrics::KeydMetrics;
use crate::uri::Pkcs11Uri;

/// Who sent a request, as the listener established it.
#[derive(Clone, Debug)]
pub struct Caller {
    /// May provision keys.
    pub admin: bool,
    /// For logs: "uid 1000" or the certificate subject.
    pub who: String,
    /// Its identity, matched against `--authorize` grants.
    pub peer: Peer,
}

struct Installed {
    entry: Entry,
    generation: u64,
}

#[derive(Default)]
struct Table {
    domains: DomainTable<Arc<Installed>>,
    /// Usable entries by key id, in domain order; a key installed under two names has two.
    by_id: HashMap<KeyId, Vec<Arc<Installed>>>,
}

impl Table {
    /// Installs under the entry's domain, replacing what was there.
    fn insert(&mut self, installed: Arc<Installed>) {
        self.domains.insert(installed.entry.domain.clone(), installed);
        self.reindex();
    }

    fn remove(&mut self, domain: &str) {
        self.domains.remove(domain);
        self.reindex();
    }

    /// Key ids of usable entries; a key installed under two names is found by either.
    fn reindex(&mut self) {
        self.by_id.clear();
        for (_, e) in self.domains.sorted() {
            if matches!(e.entry.state, State::Ready(_)) {
                self.by_id.entry(e.entry.key.id).or_default().push(e.clone());
            }
        }
    }
}

/// The keys in custody and the rules for using them.
pub struct Custody {
    backend: Box<dyn Backend>,
    table: RwLock<Table>,
    generation: AtomicU64,
    /// Who may use which key; `None`: every caller, every key. Replaced
    /// whole on reload; each request reads it once.
    grants: RwLock<Option<Arc<Grants>>>,
    /// Requests refused because no grant allowed them.
    forbidden: AtomicU64,
    metrics: KeydMetrics,
    /// Held by PUT, GENERATE and REMOVE from their check of the table to
    /// their change of it, so that two admins writing one domain at once
    /// are served one after the other.
    writes: Mutex<()>,
}

fn error(code: ErrorCode, message: impl Into<String>) -> Response {
    Response::error(code, message)
}

fn store_error(e: &StoreError) -> Response {
    error(e.code(), e.with_fix())
}

/// Reads a private key in any of the DER forms the loaders accept.
fn parse_any_key(der: &[u8]) -> Result<Zeroizing<PrivateKeyDer<'static>>, StoreError> {
    let forms = [
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der.to_vec())),
        PrivateKeyDer::Sec1(PrivateSec1KeyDer::from(der.to_vec())),
        PrivateKeyDer::Pkcs1(PrivatePkcs1KeyDer::from(der.to_vec())),
    ];
    for form in forms {
        let form = Zeroizing::new(form);
        if MemoryKey::new(&form, "key").is_ok() {
            return Ok(form);
        }
    }
    Err(StoreError::refused(
        "the private key is not PKCS#8, SEC1 or PKCS#1 DER of a supported type",
        "give an ECDSA P-256/P-384, Ed25519 or RSA key",
    ))
}

impl Custody {
    /// Loads every entry of `backend`. Unusable entries are kept (listed,
    /// refused with KEY_UNAVAILABLE); the rest are served.
    pub fn new(backend: Box<dyn Backend>) -> Result<Self, StoreError> {
        let custody = Self {
            backend,
            table: RwLock::new(Table::default()),
            generation: AtomicU64::new(Self::first_generation()),
            grants: RwLock::new(None),
            forbidden: AtomicU64::new(0),
            metrics: KeydMetrics::default(),
            writes: Mutex::new(()),
        };
        for entry in custody.backend.load()? {
            custody.install(entry);
        }
        Ok(custody)
    }

    /// Restricts SIGN, CHAIN and PUBLIC_KEY to what `grants` allow each caller.
    /// Without grants (none given, or a file with none) every caller may use every key.
    pub fn with_grants(self, grants: Grants) -> Self {
        self.replace_grants(grants);
        self
    }

    /// Puts `grants` in force for requests from now on (hot reload).
    pub fn replace_grants(&self, grants: Grants) {
        let grants = (!grants.grants.is_empty()).then(|| Arc::new(grants));
        *self.grants.write().unwrap_or_else(|e| e.into_inner()) = grants;
    }

    /// The grants in force, if any.
    pub fn grants(&self) -> Option<Arc<Grants>> {
        self.grants.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// How many requests were refused because no grant allowed them (for metrics).
    pub fn forbidden_count(&self) -> u64 {
        self.forbidden.load(Ordering::Relaxed)
    }

    /// Generations start from the clock so that a restarted daemon never reuses one.
    fn first_generation() -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_micros() as u64)
    }

    fn install(&self, entry: Entry) {
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        self.table.write().expect("table lock").insert(Arc::new(Installed { entry, generation }));
    }

    /// What this keyd counts.
    pub fn metrics(&self) -> &KeydMetrics {
        &self.metrics
    }

    /// The kind of store: `sealed-file`, `tpm` or `pkcs11`.
    pub fn store_kind(&self) -> &'static str {
        self.backend.kind()
    }

    /// Each domain with a certificate, and its leaf's notAfter (Unix seconds).
    pub fn expiries(&self) -> Vec<(String, i64)> {
        let table = self.table.read().expect("table lock");
        table.domains.sorted().into_iter().filter_map(|(_, e)| Some((e.entry.domain.clone(), e.entry.not_after?))).collect()
    }

    /// What backs the keys, for logs.
    pub fn describe(&self) -> String {
        self.backend.describe()
    }

    /// How many entries are usable and how many are not.
    pub fn counts(&self) -> (usize, usize) {
        let table = self.table.read().expect("table lock");
        let ready = table.domains.sorted().iter().filter(|(_, e)| matches!(e.entry.state, State::Ready(_))).count();
        (ready, table.domains.len() - ready)
    }

    fn select(&self, selector: &Selector) -> Result<Arc<Installed>, Response> {
        let table = self.table.read().expect("table lock");
        let found = match selector {
            Selector::Domain(name) => table.domains.lookup(name).map(|(_, e)| e.clone()),
            Selector::KeyId(id) => table.by_id.get(id).and_then(|all| all.last()).cloned(),
            Selector::Pkcs11Uri(text) => {
                let uri =
                    Pkcs11Uri::parse(text).map_err(|e| error(ErrorCode::BadRequest, format!("PKCS#11 URI {text:?}: {}", e.with_fix())))?;
                table.domains.sorted().into_iter().map(|(_, e)| e).find(|e| uri.matches(&e.entry.location)).cloned()
            }
        };
        found.ok_or_else(|| error(ErrorCode::KeyNotFound, format!("no key is installed for {}", describe_selector(selector))))
    }

    /// Whether answering `request` is quick enough for an async task;
    /// otherwise run [`Custody::handle`] on a blocking thread.
    pub fn is_quick(&self, request: &Request) -> bool {
        match request {
            Request::Sign { key, .. } | Request::SignDigest { key, .. } => match self.select(key) {
                Ok(e) => match &e.entry.state {
                    State::Ready(signer) => !signer.is_slow(),
                    State::Unavailable(_) => true,
                },
                Err(_) => true,
            },
            Request::Put { .. } | Request::Generate { .. } | Request::Remove(_) => false,
            _ => true,
        }
    }

    /// Answers one request.
    pub fn handle(&self, request: Request, caller: &Caller) -> Response {
        let op = request.op();
        let response = self.answer(request, caller);
        self.metrics.answered(op, &response);
        response
    }

    fn answer(&self, request: Request, caller: &Caller) -> Response {
        let op = request.op();
        if op.is_admin() && !caller.admin {
            warn!(op = op.name(), caller = %caller.who, "refused: not an admin");
            return error(
                ErrorCode::Forbidden,
                format!("{} provisions keys and {} may only sign. Over TLS use a certificate issued by keyd's --admin-ca; over the Unix socket run as root or as keyd's own user", op.name(), caller.who),
            );
        }
        if let Err(refused) = self.authorize(&request, caller) {
            return refused;
        }
        let response = match request {
            Request::Ping(payload) => Response::Pong(payload),
            Request::Sign { key, scheme, message } => self.sign(&key, |signer| signer.sign(scheme, &message).map(Response::Signature)),
            Request::SignDigest { key, how, digest } => self.sign(&key, |signer| sign_digest(signer, how, &digest)),
            Request::Keys => self.keys(caller),
            Request::PublicKey(selector) => match self.select(&selector) {
                Ok(e) if !e.entry.key.spki.is_empty() => Response::PublicKey { key_id: e.entry.key.id, spki: e.entry.key.spki.clone() },
                Ok(e) => unavailable(&e.entry),
                Err(r) => r,
            },
            Request::Chain(selector) => self.chain(&selector),
            Request::Put { domain, key, chain } => self.put(&domain, &key, chain),
            Request::Has(domain) => Response::Found(self.exact(&domain).is_some()),
            Request::Remove(domain) => self.remove(&domain),
            Request::Generate { domain, key_type } => self.generate(&domain, &key_type),
            Request::List => self.list(),
        };
        if op.is_admin() && op != Op::List && op != Op::Has {
            match &response {
                Response::Error { code, message } => {
                    warn!(op = op.name(), caller = %caller.who, code = %code, "admin operation failed: {message}")
                }
                _ => info!(op = op.name(), caller = %caller.who, "admin operation done"),
            }
        } else if op.is_admin() {
            info!(op = op.name(), caller = %caller.who, "admin query");
        }
        response
    }

    /// Whether the grants let `caller` use the key `request` names. A key is
    /// judged by the name it is installed under; one found by key id under
    /// several names is allowed if any of them is.
    fn authorize(&self, request: &Request, caller: &Caller) -> Result<(), Response> {
        let Some(grants) = self.grants() else { return Ok(()) };
        let (Request::Sign { key: selector, .. }
        | Request::SignDigest { key: selector, .. }
        | Request::PublicKey(selector)
        | Request::Chain(selector)) = request
        else {
            return Ok(());
        };
        let names: Vec<String> = match selector {
            Selector::KeyId(id) => {
                let table = self.table.read().expect("table lock");
                table.by_id.get(id).map(|all| all.iter().map(|e| e.entry.domain.clone()).collect()).unwrap_or_default()
            }
            _ => match self.select(selector) {
                Ok(e) => vec![e.entry.domain.clone()],
                // Unknown names are refused like known ones, so that callers cannot probe for keys.
                Err(_) => match selector {
                    Selector::Domain(name) => vec![normalize_domain(name).unwrap_or_else(|_| name.clone())],
                    _ => Vec::new(),
                },
            },
        };
        if names.is_empty() {
            // Nothing installed answers the selector: the request itself reports it.
            return Ok(());
        }
        let mut refused_by = Vec::new();
        for name in &names {
            match grants.decide(&caller.peer, name) {
                Decision::Allowed(_) => return Ok(()),
                Decision::Refused(rules) => refused_by = rules,
            }
        }
        self.forbidden.fetch_add(1, Ordering::Relaxed);
        let domain = names.join(", ");
        let rules = if refused_by.is_empty() { "none names this caller".to_string() } else { refused_by.join("; ") };
        warn!(op = request.op().name(), caller = %caller.who, %domain, caller_grants = %rules, "refused (FORBIDDEN): no rule allows this caller to use this domain");
        Err(Response::refusal(
            ErrorCode::Forbidden,
            &format!("{} may not use the key for {domain}: no grant in {} allows it", caller.who, grants.origin),
            &format!("add a [[grant]] naming this caller with {domain} in its domains to {}, and reload keyd (SIGHUP)", grants.origin),
        ))
    }

    fn exact(&self, domain: &str) -> Option<Arc<Installed>> {
        let name = normalize_domain(domain).ok()?;
        self.table.read().expect("table lock").domains.get_exact(&name).cloned()
    }

    /// Signs with the selected key: SIGN and SIGN_DIGEST differ only in `how`.
    fn sign(&self, selector: &Selector, how: impl FnOnce(&dyn Sign) -> Result<Response, SignError>) -> Response {
        let installed = match self.select(selector) {
            Ok(e) => e,
            Err(r) => return r,
        };
        let State::Ready(signer) = &installed.entry.state else { return unavailable(&installed.entry) };
        let started = std::time::Instant::now();
        match how(signer.as_ref()) {
            Ok(signature) => {
                self.metrics.signed(&installed.entry.key.description, started.elapsed());
                signature
            }
            Err(e @ (SignError::SchemeMismatch { .. } | SignError::DigestMismatch(_))) => {
                error(ErrorCode::SchemeMismatch, format!("{}: {e}", installed.entry.domain))
            }
            Err(SignError::Failed(why)) => {
                warn!(domain = %installed.entry.domain, "signing failed: {why}");
                error(ErrorCode::SigningFailed, format!("{}: signing failed: {why}", installed.entry.domain))
            }
        }
    }

    /// The usable keys `caller` may use, for a client that offers them as
    /// objects (the PKCS#11 module); without grants, every usable key.
    fn keys(&self, caller: &Caller) -> Response {
        let grants = self.grants();
        let table = self.table.read().expect("table lock");
        let entries = table
            .domains
            .sorted()
            .into_iter()
            .filter(|(_, e)| matches!(e.entry.state, State::Ready(_)))
            .filter(|(name, _)| grants.as_ref().is_none_or(|g| matches!(g.decide(&caller.peer, name), Decision::Allowed(_))))
            .map(|(_, e)| KeyEntry {
                domain: e.entry.domain.clone(),
                key_id: e.entry.key.id,
                spki: e.entry.key.spki.clone(),
                leaf: e.entry.chain.first().map(|c| c.to_vec()).unwrap_or_default(),
            })
            .collect();
        Response::Keys(entries)
    }

    fn chain(&self, selector: &Selector) -> Response {
        let installed = match self.select(selector) {
            Ok(e) => e,
            Err(r) => return r,
        };
        let entry = &installed.entry;
        if let State::Unavailable(_) = entry.state {
            return unavailable(entry);
        }
        if entry.chain.is_empty() {
            return error(
                ErrorCode::KeyNotFound,
                format!("{} has a key but no certificate yet: have the CSR from `sealtls key gen` signed, then `sealtls key put {} --cert CHAIN.pem`", entry.domain, entry.domain),
            );
        }
        Response::Chain(ChainInfo {
            domain: entry.domain.clone(),
            key_id: entry.key.id,
            generation: installed.generation,
            certs: entry.chain.iter().map(|c| c.to_vec()).collect(),
        })
    }

    fn put(&self, domain: &str, key: &[u8], chain: Vec<Vec<u8>>) -> Response {
        let _one_writer = self.writes.lock().unwrap_or_else(|e| e.into_inner());
        let domain = match normalize_domain(domain) {
            Ok(d) => d,
            Err(e) => return error(ErrorCode::InvalidInput, format!("{domain:?}: {e}")),
        };
        let chain: Vec<CertificateDer<'static>> = chain.into_iter().map(CertificateDer::from).collect();
        let stored = if key.is_empty() {
            let Some(existing) = self.exact(&domain) else {
                return Response::refusal(
                    ErrorCode::KeyNotFound,
                    &format!("{domain} has no key to attach a chain to"),
                    &format!("give the key file too, or make one with `sealtls key gen {domain}`"),
                );
            };
            if chain.is_empty() {
                return error(ErrorCode::InvalidInput, "neither a key nor a certificate chain was given");
            }
            self.backend.put_chain(&existing.entry, &chain)
        } else {
            if chain.is_empty() {
                return Response::refusal(
                    ErrorCode::InvalidInput,
                    &format!("{domain}: a key was given without its certificate chain, which servers need to present"),
                    "give it with --cert CHAIN.pem",
                );
            }
            match parse_any_key(key) {
                Ok(k) => self.backend.put(&domain, &k, &chain),
                Err(e) => Err(e),
            }
        };
        match stored {
            Ok(entry) => {
                let id = entry.key.id;
                self.install(entry);
                Response::Stored(id)
            }
            Err(e) => store_error(&e),
        }
    }

    fn generate(&self, domain: &str, key_type: &str) -> Response {
        let _one_writer = self.writes.lock().unwrap_or_else(|e| e.into_inner());
        let domain = match normalize_domain(domain) {
            Ok(d) => d,
            Err(e) => return error(ErrorCode::InvalidInput, format!("{domain:?}: {e}")),
        };
        let Some(key_type) = KeyType::ALL.into_iter().find(|t| t.name() == key_type) else {
            let names: Vec<_> = KeyType::ALL.iter().map(|t| t.name()).collect();
            return Response::refusal(
                ErrorCode::InvalidInput,
                &format!("unknown key type {key_type:?}"),
                &format!("use one of {}", names.join(", ")),
            );
        };
        if self.exact(&domain).is_some() {
            return Response::refusal(
                ErrorCode::InvalidInput,
                &format!("{domain} already has a key"),
                &format!("remove it first with `sealtls key rm {domain}` (a new key needs a new certificate)"),
            );
        }
        match self.backend.generate(&domain, key_type) {
            Ok((entry, csr)) => {
                self.install(entry);
                Response::Csr(csr)
            }
            Err(e) => store_error(&e),
        }
    }

    fn remove(&self, domain: &str) -> Response {
        let _one_writer = self.writes.lock().unwrap_or_else(|e| e.into_inner());
        let Some(existing) = self.exact(domain) else { return error(ErrorCode::KeyNotFound, format!("no key is installed for {domain}")) };
        if let Err(e) = self.backend.remove(&existing.entry) {
            return store_error(&e);
        }
        self.table.write().expect("table lock").remove(&existing.entry.domain);
        Response::Removed
    }

    fn list(&self) -> Response {
        let table = self.table.read().expect("table lock");
        let entries = table
            .domains
            .sorted()
            .into_iter()
            .map(|(_, e)| {
                let entry = &e.entry;
                let status = match &entry.state {
                    State::Unavailable(why) => format!("unavailable: {why}"),
                    State::Ready(_) if entry.chain.is_empty() => "waiting for a certificate".into(),
                    State::Ready(_) => "ok".into(),
                };
                ListEntry {
                    domain: entry.domain.clone(),
                    key_type: entry.key.description.clone(),
                    key_id: entry.key.id,
                    not_after: entry.not_after,
                    location: entry.location.to_string(),
                    status,
                }
            })
            .collect();
        Response::List(entries)
    }
}

fn sign_digest(signer: &dyn Sign, how: DigestSigning, digest: &[u8]) -> Result<Response, SignError> {
    signer.sign_digest(how, digest).map(Response::DigestSignature)
}

fn unavailable(entry: &Entry) -> Response {
    let why = match &entry.state {
        State::Unavailable(why) => why.as_str(),
        State::Ready(_) => "its public key is unknown",
    };
    let hint = match entry.location {
        Location::SealedFile(_) => format!("remove it with `sealtls key rm {}` and install the key again", entry.domain),
        Location::Token { .. } => "check that the token is present and the object was not deleted".into(),
    };
    Response::refusal(ErrorCode::KeyUnavailable, &format!("the key for {} cannot be used: {why}", entry.domain), &hint)
}

fn describe_selector(s: &Selector) -> String {
    match s {
        Selector::Domain(d) => format!("domain {d}"),
        Selector::KeyId(id) => format!("key id {id}"),
        Selector::Pkcs11Uri(u) => u.clone(),
    }
}

#[cfg(test)]
mod tests;
