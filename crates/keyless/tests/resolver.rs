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
use sealtls_keyless::{KeydClient, KeydEndpoint, Keyless};

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

fn setup(dir: &tempfile::TempDir, refresh_after: Duration) -> (FakeKeyd, Arc<KeydClient>, Keyless) {
    let path = dir.path().join("keyd.sock");
    let keyd = FakeKeyd::start(&path);
    let client = KeydClient::new(KeydEndpoint::Unix(path), 1, Duration::from_secs(30));
    let keyless = Keyless::new(client.clone(), refresh_after);
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
