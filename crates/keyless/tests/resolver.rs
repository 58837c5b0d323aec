//! `Keyless`, the ClientHello gate and certificate resolver, against an
//! in-process keyd: unknown names, the chain cache, generation changes and
//! removals, and signing by key id.
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{FakeKeyd, Incoming, PROMPTLY};
use rcgen::{CertificateParams, KeyPair};
use rustls::server::{Acceptor, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{AlertDescription, SignatureScheme};
use sealtls_custody_proto::{ChainInfo, ErrorCode, KeyId, Request, Response, Scheme, Selector};
use sealtls_endpoint::gate::{HelloGate, Refusal};
use sealtls_keyless::{KeydClient, KeydEndpoint, KeydFleet, Keyless, KeylessLimits};

/// A P-256 key and a self-signed certificate for `name`.
struct Leaf {
    key: KeyPair,
    cert: Vec<u8>,
}

fn leaf(name: &str) -> Leaf {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = CertificateParams::new(vec![name.to_string()]).unwrap().self_signed(&key).unwrap().der().to_vec();
    Leaf { key, cert }
}

fn chain(domain: &str, leaf: &Leaf, key_id: u8, generation: u64) -> Response {
    Response::Chain(ChainInfo { domain: domain.into(), key_id: KeyId([key_id; 32]), generation, certs: vec![leaf.cert.clone()] })
}

/// A fleet of this one keyd, without health checks: the fake keyd sees
/// exactly the requests the resolver makes.
fn unwatched(client: Arc<KeydClient>) -> Arc<KeydFleet> {
    KeydFleet::new(vec![client], Duration::ZERO)
}

fn setup(dir: &tempfile::TempDir, refresh_after: Duration) -> (FakeKeyd, Arc<KeydClient>, Keyless) {
    let path = dir.path().join("keyd.sock");
    let keyd = FakeKeyd::start(&path);
    let client = KeydClient::new(KeydEndpoint::Unix(path), 1, Duration::from_secs(30));
    let keyless = Keyless::new(unwatched(client.clone()), refresh_after);
    (keyd, client, keyless)
}

/// Runs the gate for `name` on a task of its own.
fn check(keyless: &Keyless, name: Option<&str>) -> tokio::task::JoinHandle<Result<(), Refusal>> {
    let (keyless, name) = (keyless.clone(), name.map(str::to_owned));
    tokio::spawn(async move { keyless.check(name.as_deref()).await })
}

async fn finished<T>(task: tokio::task::JoinHandle<T>) -> T {
    tokio::time::timeout(PROMPTLY, task).await.expect("the gate did not finish promptly").unwrap()
}

/// The next request, which must be CHAIN for `name`.
async fn chain_request(keyd: &mut FakeKeyd, name: &str) -> Incoming {
    let r = keyd.next().await;
    assert_eq!(r.request, Request::Chain(Selector::Domain(name.into())));
    r
}

/// What the resolver gives rustls for a ClientHello naming `name`.
fn resolve(keyless: &Keyless, name: &str) -> Option<Arc<CertifiedKey>> {
    let config = rustls::ClientConfig::builder().with_root_certificates(rustls::RootCertStore::empty()).with_no_client_auth();
    let mut client = rustls::ClientConnection::new(Arc::new(config), name.to_string().try_into().unwrap()).unwrap();
    let mut hello = Vec::new();
    client.write_tls(&mut hello).unwrap();
    let mut acceptor = Acceptor::default();
    acceptor.read_tls(&mut hello.as_slice()).unwrap();
    let accepted = acceptor.accept().unwrap().expect("a whole ClientHello");
    keyless.resolve(accepted.client_hello())
}

fn served_cert(keyless: &Keyless, name: &str) -> Option<Vec<u8>> {
    resolve(keyless, name).map(|k| k.cert[0].to_vec())
}

/// The cache changes in a background task that sends nothing afterwards,
/// so there is no event to await: look again until it holds, for a bounded time.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < PROMPTLY, "{what} did not happen");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Proves the client sent nothing before now: the next request keyd sees is this PING.
async fn nothing_else_was_asked(keyd: &mut FakeKeyd, client: &Arc<KeydClient>) {
    let client = client.clone();
    let ping = tokio::spawn(async move { client.call(&Request::Ping(b"marker".to_vec())).await });
    let r = keyd.next().await;
    assert_eq!(r.request, Request::Ping(b"marker".to_vec()), "keyd was asked something else first");
    r.answer(Response::Pong(b"marker".to_vec()));
    finished(ping).await.unwrap();
}

#[tokio::test]
async fn names_keyd_does_not_know_are_refused_with_unrecognized_name() {
    let dir = tempfile::tempdir().unwrap();
    let (mut keyd, client, keyless) = setup(&dir, Duration::from_secs(3600));

    let gate = check(&keyless, Some("nope.example.com"));
    chain_request(&mut keyd, "nope.example.com").await.answer(Response::error(ErrorCode::KeyNotFound, "no key is installed"));
    let refusal = finished(gate).await.unwrap_err();
    assert_eq!(refusal.alert, AlertDescription::UnrecognisedName);
    assert!(refusal.reason.contains("no key"), "{}", refusal.reason);
    assert!(resolve(&keyless, "nope.example.com").is_none());

    // Other refusals from keyd are a handshake failure, not an unknown name.
    let gate = check(&keyless, Some("broken.example.com"));
    chain_request(&mut keyd, "broken.example.com").await.answer(Response::error(ErrorCode::KeyUnavailable, "token gone"));
    assert_eq!(finished(gate).await.unwrap_err().alert, AlertDescription::HandshakeFailure);

    // Without SNI keyd is not asked at all.
    assert_eq!(finished(check(&keyless, None)).await.unwrap_err().alert, AlertDescription::HandshakeFailure);
    nothing_else_was_asked(&mut keyd, &client).await;
}

#[tokio::test]
async fn a_fetched_chain_is_cached_and_served() {
    let dir = tempfile::tempdir().unwrap();
    let (mut keyd, client, keyless) = setup(&dir, Duration::from_secs(3600));
    let www = leaf("www.example.com");

    let gate = check(&keyless, Some("WWW.Example.com"));
    chain_request(&mut keyd, "www.example.com").await.answer(chain("www.example.com", &www, 1, 7));
    finished(gate).await.unwrap();
    assert_eq!(served_cert(&keyless, "www.example.com"), Some(www.cert.clone()));
    assert!(resolve(&keyless, "api.example.com").is_none(), "only names the gate let through are served");

    // Within refresh_after the gate answers from the cache.
    for _ in 0..3 {
        finished(check(&keyless, Some("www.example.com"))).await.unwrap();
    }
    nothing_else_was_asked(&mut keyd, &client).await;
}

#[tokio::test]
async fn a_new_generation_replaces_the_cached_chain_and_a_removed_key_drops_it() {
    let dir = tempfile::tempdir().unwrap();
    // Every cached chain is due for a check at once.
    let (mut keyd, _client, keyless) = setup(&dir, Duration::ZERO);
    let (old, new) = (leaf("www.example.com"), leaf("www.example.com"));

    let gate = check(&keyless, Some("www.example.com"));
    chain_request(&mut keyd, "www.example.com").await.answer(chain("www.example.com", &old, 1, 1));
    finished(gate).await.unwrap();
    assert_eq!(served_cert(&keyless, "www.example.com"), Some(old.cert.clone()));

    // The next handshake goes ahead with the cached chain while it is checked in the background.
    finished(check(&keyless, Some("www.example.com"))).await.unwrap();
    chain_request(&mut keyd, "www.example.com").await.answer(chain("www.example.com", &new, 2, 2));
    // Another generation: fetched again and replaced.
    chain_request(&mut keyd, "www.example.com").await.answer(chain("www.example.com", &new, 2, 2));
    eventually("serving the new chain", || served_cert(&keyless, "www.example.com") == Some(new.cert.clone())).await;

    // The key is removed from keyd: the name is no longer served. (The new
    // entry has no check under way, so this handshake starts one.)
    finished(check(&keyless, Some("www.example.com"))).await.unwrap();
    let r = chain_request(&mut keyd, "www.example.com").await;
    r.answer(Response::error(ErrorCode::KeyNotFound, "removed"));
    eventually("dropping the removed name", || resolve(&keyless, "www.example.com").is_none()).await;
    let gate = check(&keyless, Some("www.example.com"));
    chain_request(&mut keyd, "www.example.com").await.answer(Response::error(ErrorCode::KeyNotFound, "removed"));
    assert_eq!(finished(gate).await.unwrap_err().alert, AlertDescription::UnrecognisedName);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_resolved_key_signs_through_keyd_by_key_id() {
    let dir = tempfile::tempdir().unwrap();
    let (mut keyd, _client, keyless) = setup(&dir, Duration::from_secs(3600));
    let www = leaf("www.example.com");
    let gate = check(&keyless, Some("www.example.com"));
    chain_request(&mut keyd, "www.example.com").await.answer(chain("www.example.com", &www, 5, 1));
    finished(gate).await.unwrap();

    let certified = resolve(&keyless, "www.example.com").unwrap();
    assert_eq!(certified.key.public_key().unwrap().as_ref(), rcgen::PublicKeyData::subject_public_key_info(&www.key));
    assert!(certified.key.choose_scheme(&[SignatureScheme::RSA_PSS_SHA256]).is_none(), "a P-256 key makes only ECDSA P-256");
    let signer = certified.key.choose_scheme(&[SignatureScheme::RSA_PSS_SHA256, SignatureScheme::ECDSA_NISTP256_SHA256]).unwrap();
    assert_eq!(signer.scheme(), SignatureScheme::ECDSA_NISTP256_SHA256);
    // rustls signs from synchronous code on a worker thread.
    let signing = tokio::spawn(async move { signer.sign(b"transcript") });
    let r = keyd.next().await;
    assert_eq!(
        r.request,
        Request::Sign { key: Selector::KeyId(KeyId([5; 32])), scheme: Scheme::EcdsaP256Sha256, message: b"transcript".to_vec() }
    );
    r.answer(Response::Signature(b"signature bytes".to_vec()));
    assert_eq!(finished(signing).await.unwrap(), b"signature bytes");

    // A refusal from keyd fails the signature, naming the domain.
    let signer = certified.key.choose_scheme(&[SignatureScheme::ECDSA_NISTP256_SHA256]).unwrap();
    let signing = tokio::spawn(async move { signer.sign(b"again") });
    keyd.next().await.answer(Response::error(ErrorCode::SigningFailed, "token failed"));
    let err = finished(signing).await.unwrap_err().to_string();
    assert!(err.contains("www.example.com") && err.contains("token failed"), "{err}");
}

/// CHAIN requests the fake keyd was sent, by name.
type Asked = Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>;

/// A keyd that knows `good.example` and the wildcard `*.wild.example`
/// (one key), and no other name; it counts the CHAIN requests per name.
fn answering_keyd(mut keyd: FakeKeyd) -> (Asked, tokio::task::JoinHandle<()>) {
    let asked = Asked::default();
    let (good, wild) = (leaf("good.example"), leaf("*.wild.example"));
    let counts = asked.clone();
    let task = tokio::spawn(async move {
        while let Some(r) = keyd.recv().await {
            let Request::Chain(Selector::Domain(name)) = &r.request else { panic!("unexpected {:?}", r.request) };
            *counts.lock().unwrap().entry(name.clone()).or_default() += 1;
            if name == "good.example" {
                r.answer(chain("good.example", &good, 1, 1));
            } else if name.ends_with(".wild.example") {
                r.answer(chain("*.wild.example", &wild, 2, 1));
            } else {
                r.answer(Response::error(ErrorCode::KeyNotFound, "no key is installed"));
            }
        }
    });
    (asked, task)
}

fn limited(dir: &tempfile::TempDir, limits: KeylessLimits) -> (FakeKeyd, Arc<KeydClient>, Keyless) {
    let path = dir.path().join("keyd.sock");
    let keyd = FakeKeyd::start(&path);
    let client = KeydClient::new(KeydEndpoint::Unix(path), 1, Duration::from_secs(30));
    let keyless = Keyless::with_limits(unwatched(client.clone()), Duration::from_secs(3600), limits);
    (keyd, client, keyless)
}

/// Runs the gate for every name, `batch` at a time, and returns the outcomes.
async fn check_all(keyless: &Keyless, names: &[String], batch: usize) -> Vec<Result<(), Refusal>> {
    let mut outcomes = Vec::new();
    for chunk in names.chunks(batch) {
        let gates: Vec<_> = chunk.iter().map(|n| check(keyless, Some(n))).collect();
        for gate in gates {
            outcomes.push(finished(gate).await);
        }
    }
    outcomes
}

/// A deterministic stream of pseudo-random numbers.
fn randoms(seed: u64) -> impl FnMut() -> u64 {
    let mut x = seed;
    move || {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        x >> 33
    }
}

#[tokio::test]
async fn a_flood_of_unknown_names_asks_keyd_once_per_name_and_stays_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let limits = KeylessLimits { cache: 256, miss_ttl: Duration::from_secs(30), in_flight: 64, ..KeylessLimits::default() };
    let (keyd, _client, keyless) = limited(&dir, limits);
    let (asked, responder) = answering_keyd(keyd);

    // 2,000 hellos for 200 unknown names in random order: one CHAIN request per name.
    let mut next = randoms(7);
    let hellos: Vec<String> = (0..2000).map(|_| format!("n{}.unknown.example", next() % 200)).collect();
    for outcome in check_all(&keyless, &hellos, 50).await {
        assert_eq!(outcome.unwrap_err().alert, AlertDescription::UnrecognisedName);
    }
    {
        let asked = asked.lock().unwrap();
        assert_eq!(asked.len(), 200);
        assert!(asked.values().all(|&n| n == 1), "a miss was asked again within its TTL");
    }
    assert_eq!(keyless.remembered_misses(), 200);
    assert_eq!(keyless.cached_names(), 0);

    // After the miss TTL keyd is asked again.
    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(31)).await;
    tokio::time::resume();
    let again = "n1.unknown.example".to_string();
    check_all(&keyless, std::slice::from_ref(&again), 1).await;
    assert_eq!(asked.lock().unwrap()[&again], 2);

    // 2,000 distinct names: each asked once, and the misses kept stay within the bound.
    let distinct: Vec<String> = (0..2000).map(|i| format!("d{i}-{}.unknown.example", next())).collect();
    for outcome in check_all(&keyless, &distinct, 50).await {
        assert_eq!(outcome.unwrap_err().alert, AlertDescription::UnrecognisedName);
    }
    assert!(distinct.iter().all(|n| asked.lock().unwrap()[n] == 1));
    assert!(keyless.remembered_misses() <= 256, "{} misses kept", keyless.remembered_misses());
    responder.abort();
}

#[tokio::test]
async fn many_names_under_a_wildcard_keep_the_cache_at_its_bound_and_share_one_chain() {
    let dir = tempfile::tempdir().unwrap();
    let limits = KeylessLimits { cache: 256, ..KeylessLimits::default() };
    let (keyd, _client, keyless) = limited(&dir, limits);
    let (asked, responder) = answering_keyd(keyd);

    let mut next = randoms(11);
    let names: Vec<String> = (0..2000).map(|i| format!("h{i}-{}.wild.example", next())).collect();
    for chunk in names.chunks(50) {
        for outcome in check_all(&keyless, chunk, 50).await {
            outcome.unwrap();
        }
        assert!(keyless.cached_names() <= 256, "{} names cached", keyless.cached_names());
        // A name in use keeps resolving, from the cache.
        finished(check(&keyless, Some("good.example"))).await.unwrap();
        assert!(resolve(&keyless, "good.example").is_some());
    }
    assert_eq!(keyless.cached_names(), 256);
    assert_eq!(asked.lock().unwrap()["good.example"], 1);
    assert!(names.iter().all(|n| asked.lock().unwrap()[n] == 1));

    // The names under the wildcard share one chain; the oldest ones were dropped.
    let (a, b) = (resolve(&keyless, &names[1999]).unwrap(), resolve(&keyless, &names[1990]).unwrap());
    assert!(Arc::ptr_eq(&a, &b), "each name holds its own copy of the chain");
    assert!(resolve(&keyless, &names[0]).is_none());
    responder.abort();
}

#[tokio::test]
async fn concurrent_hellos_for_one_name_make_one_chain_request() {
    let dir = tempfile::tempdir().unwrap();
    let (mut keyd, client, keyless) = setup(&dir, Duration::from_secs(3600));
    let www = leaf("www.example.com");

    let gates: Vec<_> = (0..20).map(|_| check(&keyless, Some("www.example.com"))).collect();
    let r = chain_request(&mut keyd, "www.example.com").await;
    // Every hello has reached the gate before keyd answers.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    r.answer(chain("www.example.com", &www, 1, 1));
    for gate in gates {
        finished(gate).await.unwrap();
    }
    nothing_else_was_asked(&mut keyd, &client).await;

    // The same for a name keyd does not know.
    let gates: Vec<_> = (0..20).map(|_| check(&keyless, Some("nope.example.com"))).collect();
    chain_request(&mut keyd, "nope.example.com").await.answer(Response::error(ErrorCode::KeyNotFound, "no key"));
    for gate in gates {
        assert_eq!(finished(gate).await.unwrap_err().alert, AlertDescription::UnrecognisedName);
    }
    nothing_else_was_asked(&mut keyd, &client).await;
}

#[tokio::test]
async fn names_beyond_the_lookup_limit_are_refused_with_handshake_failure() {
    let dir = tempfile::tempdir().unwrap();
    let limits = KeylessLimits { in_flight: 2, ..KeylessLimits::default() };
    let (mut keyd, client, keyless) = limited(&dir, limits);
    let www = leaf("www.example.com");

    let (a, b) = (check(&keyless, Some("a.example.com")), check(&keyless, Some("b.example.com")));
    let (ra, rb) = (keyd.next().await, keyd.next().await);
    // Two lookups are under way: a third name is refused at once, without asking keyd.
    let refusal = finished(check(&keyless, Some("c.example.com"))).await.unwrap_err();
    assert_eq!(refusal.alert, AlertDescription::HandshakeFailure);
    assert!(refusal.reason.contains("already being looked up"), "{}", refusal.reason);
    // A hello for a name under way waits for its lookup instead.
    let a2 = check(&keyless, Some("a.example.com"));
    nothing_else_was_asked(&mut keyd, &client).await;

    ra.answer(chain("a.example.com", &www, 1, 1));
    rb.answer(Response::error(ErrorCode::KeyNotFound, "no key"));
    finished(a).await.unwrap();
    finished(a2).await.unwrap();
    assert_eq!(finished(b).await.unwrap_err().alert, AlertDescription::UnrecognisedName);

    // With the lookups done, the refused name is looked up.
    let c = check(&keyless, Some("c.example.com"));
    chain_request(&mut keyd, "c.example.com").await.answer(chain("c.example.com", &www, 1, 1));
    finished(c).await.unwrap();
}
