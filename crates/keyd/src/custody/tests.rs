//! `Custody` over the sealed-file backend in a temporary directory: who may
//! do what, which key a selector finds, and how generations move.
use aws_lc_rs::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_ASN1};
use rcgen::{CertificateParams, CertificateSigningRequestParams, Issuer, KeyPair};
use rustls_pki_types::CertificateSigningRequestDer;
use zeroize::Zeroizing;

use sealtls_custody_proto::Scheme;

use super::*;
use crate::sealed::SealedFiles;

struct Fixture {
    custody: Custody,
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let custody = open(&dir);
        Self { custody, dir }
    }

    /// The same store, as a restarted daemon sees it.
    fn restart(&mut self) {
        self.custody = open(&self.dir);
    }

    fn admin(&self, request: Request) -> Response {
        self.custody.handle(request, &admin())
    }

    fn edge(&self, request: Request) -> Response {
        self.custody.handle(request, &edge())
    }

    fn put(&self, domain: &str, leaf: &Leaf) -> KeyId {
        match self.admin(leaf.put(domain)) {
            Response::Stored(id) => id,
            other => panic!("PUT {domain}: {other:?}"),
        }
    }

    fn chain(&self, name: &str) -> ChainInfo {
        match self.edge(Request::Chain(Selector::Domain(name.into()))) {
            Response::Chain(info) => info,
            other => panic!("CHAIN {name}: {other:?}"),
        }
    }
}

/// The device secret lives in the temporary directory, outside the data directory.
fn open(dir: &tempfile::TempDir) -> Custody {
    let store = SealedFiles::open(&dir.path().join("data"), &dir.path().join("device.key")).unwrap();
    Custody::new(Box::new(store)).unwrap()
}

fn admin() -> Caller {
    Caller { admin: true, who: "uid 0".into(), peer: Peer::Local { uid: 0, gid: 0 } }
}

fn edge() -> Caller {
    Caller { admin: false, who: "uid 1000".into(), peer: Peer::Local { uid: 1000, gid: 1000 } }
}

/// An ECDSA P-256 key and a self-signed certificate naming `sans`.
struct Leaf {
    key: KeyPair,
    cert: Vec<u8>,
}

impl Leaf {
    fn new(sans: &[&str]) -> Self {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let params = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        let cert = params.self_signed(&key).unwrap().der().to_vec();
        Self { key, cert }
    }

    fn put(&self, domain: &str) -> Request {
        Request::Put { domain: domain.into(), key: Zeroizing::new(self.key.serialize_der()), chain: vec![self.cert.clone()] }
    }

    fn id(&self) -> KeyId {
        crate::keys::key_id(&rcgen::PublicKeyData::subject_public_key_info(&self.key))
    }
}

fn code(response: Response) -> ErrorCode {
    match response {
        Response::Error { code, .. } => code,
        other => panic!("expected an error, got {other:?}"),
    }
}

fn sign(name: &str) -> Request {
    Request::Sign { key: Selector::Domain(name.into()), scheme: Scheme::EcdsaP256Sha256, message: b"handshake transcript".to_vec() }
}

#[test]
fn edge_callers_sign_and_read_chains_but_never_provision() {
    let f = Fixture::new();
    let leaf = Leaf::new(&["www.example.com"]);
    let id = f.put("www.example.com", &leaf);
    assert_eq!(id, leaf.id());

    assert_eq!(f.edge(Request::Ping(b"hi".to_vec())), Response::Pong(b"hi".to_vec()));
    let info = f.chain("www.example.com");
    assert_eq!((info.domain.as_str(), info.key_id, info.certs.clone()), ("www.example.com", id, vec![leaf.cert.clone()]));
    match f.edge(Request::PublicKey(Selector::Domain("www.example.com".into()))) {
        Response::PublicKey { key_id, spki } => {
            assert_eq!(key_id, id);
            assert_eq!(spki, rcgen::PublicKeyData::subject_public_key_info(&leaf.key));
        }
        other => panic!("PUBLIC_KEY: {other:?}"),
    }
    let Response::Signature(sig) = f.edge(sign("www.example.com")) else { panic!("SIGN refused") };
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, leaf.key.public_key_raw()).verify(b"handshake transcript", &sig).unwrap();

    let other = Leaf::new(&["www.example.com"]);
    let refused = [
        other.put("www.example.com"),
        Request::Has("www.example.com".into()),
        Request::Remove("www.example.com".into()),
        Request::Generate { domain: "new.example.com".into(), key_type: "ecdsa-p256".into() },
        Request::List,
    ];
    for request in refused {
        let op = request.op();
        match f.edge(request) {
            Response::Error { code: ErrorCode::Forbidden, message } => assert!(message.contains(op.name()), "{message}"),
            other => panic!("{} from an edge caller: {other:?}", op.name()),
        }
    }
    // Nothing the edge caller asked for happened.
    assert_eq!(f.chain("www.example.com"), info);
    assert_eq!(code(f.edge(Request::Chain(Selector::Domain("new.example.com".into())))), ErrorCode::KeyNotFound);
    assert_eq!(f.admin(Request::Has("www.example.com".into())), Response::Found(true));
}

#[test]
fn the_exact_name_wins_over_a_one_label_wildcard() {
    let f = Fixture::new();
    let wildcard = Leaf::new(&["*.example.com"]);
    let exact = Leaf::new(&["www.example.com"]);
    let wildcard_id = f.put("*.example.com", &wildcard);
    let exact_id = f.put("www.example.com", &exact);

    let www = f.chain("www.example.com");
    assert_eq!((www.domain.as_str(), www.key_id), ("www.example.com", exact_id));
    // Lookups are case-insensitive and ignore a trailing dot.
    assert_eq!(f.chain("WWW.Example.COM.").key_id, exact_id);
    let api = f.chain("api.example.com");
    assert_eq!((api.domain.as_str(), api.key_id), ("*.example.com", wildcard_id));

    // A wildcard covers exactly one label.
    for name in ["example.com", "a.b.example.com", "www.example.org"] {
        assert_eq!(code(f.edge(Request::Chain(Selector::Domain(name.into())))), ErrorCode::KeyNotFound, "{name}");
        assert_eq!(code(f.edge(sign(name))), ErrorCode::KeyNotFound, "{name}");
    }

    // SIGN by name uses the selected key; by key id, the key with that id.
    let Response::Signature(sig) = f.edge(sign("api.example.com")) else { panic!("SIGN refused") };
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, wildcard.key.public_key_raw()).verify(b"handshake transcript", &sig).unwrap();
    let by_id = Request::Sign { key: Selector::KeyId(exact_id), scheme: Scheme::EcdsaP256Sha256, message: b"m".to_vec() };
    let Response::Signature(sig) = f.edge(by_id) else { panic!("SIGN by key id refused") };
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, exact.key.public_key_raw()).verify(b"m", &sig).unwrap();
    assert_eq!(code(f.edge(Request::PublicKey(Selector::KeyId(KeyId([9; 32]))))), ErrorCode::KeyNotFound);

    // With the sealed-file backend, PKCS#11 URIs match nothing; a bad one is BAD_REQUEST.
    assert_eq!(code(f.edge(Request::Chain(Selector::Pkcs11Uri("pkcs11:object=www.example.com".into())))), ErrorCode::KeyNotFound);
    assert_eq!(code(f.edge(Request::Chain(Selector::Pkcs11Uri("pkcs11:token=t".into())))), ErrorCode::BadRequest);

    // HAS and REMOVE match installed names exactly.
    assert_eq!(f.admin(Request::Has("api.example.com".into())), Response::Found(false));
    assert_eq!(f.admin(Request::Has("*.example.com".into())), Response::Found(true));
    assert_eq!(code(f.admin(Request::Remove("api.example.com".into()))), ErrorCode::KeyNotFound);
}

#[test]
fn a_key_the_scheme_does_not_fit_is_a_scheme_mismatch() {
    let f = Fixture::new();
    f.put("www.example.com", &Leaf::new(&["www.example.com"]));
    let request = Request::Sign { key: Selector::Domain("www.example.com".into()), scheme: Scheme::RsaPssSha256, message: b"m".to_vec() };
    assert_eq!(code(f.edge(request)), ErrorCode::SchemeMismatch);
}

#[test]
fn generations_change_on_replace_and_restart() {
    let mut f = Fixture::new();
    let first = Leaf::new(&["www.example.com"]);
    f.put("www.example.com", &first);
    let g1 = f.chain("www.example.com");
    // Asking again does not change it.
    assert_eq!(f.chain("www.example.com"), g1);

    let second = Leaf::new(&["www.example.com"]);
    f.put("www.example.com", &second);
    let g2 = f.chain("www.example.com");
    assert_ne!(g2.generation, g1.generation);
    assert_eq!((g2.key_id, g2.certs.clone()), (second.id(), vec![second.cert.clone()]));
    // The replaced key no longer signs.
    let old = Request::Sign { key: Selector::KeyId(first.id()), scheme: Scheme::EcdsaP256Sha256, message: b"m".to_vec() };
    assert_eq!(code(f.edge(old)), ErrorCode::KeyNotFound);

    // Replacing with the same key and chain is still a replacement.
    f.put("www.example.com", &second);
    let g3 = f.chain("www.example.com");
    assert_ne!(g3.generation, g2.generation);

    // A restarted daemon serves the same key and chain under a new generation.
    f.restart();
    let g4 = f.chain("www.example.com");
    assert_eq!((g4.key_id, g4.certs.clone()), (g3.key_id, g3.certs.clone()));
    assert_ne!(g4.generation, g3.generation);
}

#[test]
fn a_removed_key_is_not_found_and_stays_removed() {
    let mut f = Fixture::new();
    let leaf = Leaf::new(&["www.example.com"]);
    let id = f.put("www.example.com", &leaf);
    assert!(matches!(f.edge(sign("www.example.com")), Response::Signature(_)));

    assert_eq!(f.admin(Request::Remove("www.example.com".into())), Response::Removed);
    assert_eq!(code(f.edge(sign("www.example.com"))), ErrorCode::KeyNotFound);
    let by_id = Request::Sign { key: Selector::KeyId(id), scheme: Scheme::EcdsaP256Sha256, message: b"m".to_vec() };
    assert_eq!(code(f.edge(by_id)), ErrorCode::KeyNotFound);
    assert_eq!(code(f.edge(Request::Chain(Selector::Domain("www.example.com".into())))), ErrorCode::KeyNotFound);
    assert_eq!(f.admin(Request::Has("www.example.com".into())), Response::Found(false));
    assert_eq!(code(f.admin(Request::Remove("www.example.com".into()))), ErrorCode::KeyNotFound);
    assert_eq!(f.admin(Request::List), Response::List(vec![]));

    f.restart();
    assert_eq!(code(f.edge(sign("www.example.com"))), ErrorCode::KeyNotFound);
    assert_eq!(f.custody.counts(), (0, 0));
}

#[test]
fn provisioning_input_that_does_not_fit_is_refused() {
    let f = Fixture::new();
    let leaf = Leaf::new(&["www.example.com"]);
    // The certificate does not name the domain.
    assert_eq!(code(f.admin(leaf.put("mail.example.com"))), ErrorCode::InvalidInput);
    // The key is not the one the certificate certifies.
    let other = Leaf::new(&["www.example.com"]);
    let mismatched =
        Request::Put { domain: "www.example.com".into(), key: Zeroizing::new(other.key.serialize_der()), chain: vec![leaf.cert.clone()] };
    assert_eq!(code(f.admin(mismatched)), ErrorCode::InvalidInput);
    // A key without a chain, and a name that is not a DNS name.
    let bare = Request::Put { domain: "www.example.com".into(), key: Zeroizing::new(leaf.key.serialize_der()), chain: vec![] };
    assert_eq!(code(f.admin(bare)), ErrorCode::InvalidInput);
    assert_eq!(code(f.admin(leaf.put("www..example.com"))), ErrorCode::InvalidInput);
    // A chain alone for a name without a key.
    let chain_only = Request::Put { domain: "www.example.com".into(), key: Zeroizing::new(vec![]), chain: vec![leaf.cert.clone()] };
    assert_eq!(code(f.admin(chain_only)), ErrorCode::KeyNotFound);
    assert_eq!(f.admin(Request::List), Response::List(vec![]));
    // The domain is normalized.
    f.put("WWW.Example.com.", &leaf);
    assert_eq!(f.admin(Request::Has("www.example.com".into())), Response::Found(true));
}

#[test]
fn a_generated_key_waits_for_its_certificate() {
    let f = Fixture::new();
    let generate = || Request::Generate { domain: "api.example.com".into(), key_type: "ecdsa-p256".into() };
    let Response::Csr(csr) = f.admin(generate()) else { panic!("GENERATE refused") };
    assert_eq!(code(f.admin(generate())), ErrorCode::InvalidInput, "the name is taken");
    let unknown = Request::Generate { domain: "x.example.com".into(), key_type: "dsa".into() };
    assert_eq!(code(f.admin(unknown)), ErrorCode::InvalidInput);

    // No certificate yet: CHAIN is KEY_NOT_FOUND and LIST says what is missing.
    assert_eq!(code(f.edge(Request::Chain(Selector::Domain("api.example.com".into())))), ErrorCode::KeyNotFound);
    let Response::List(entries) = f.admin(Request::List) else { panic!("LIST refused") };
    assert_eq!(entries.len(), 1);
    assert_eq!((entries[0].domain.as_str(), entries[0].status.as_str()), ("api.example.com", "waiting for a certificate"));

    // A CA signs the CSR; PUT with an empty key attaches the chain.
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let issuer = Issuer::new(ca_params, ca_key);
    let request = CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr)).unwrap();
    let cert = request.signed_by(&issuer).unwrap().der().to_vec();
    let attach = Request::Put { domain: "api.example.com".into(), key: Zeroizing::new(vec![]), chain: vec![cert.clone()] };
    let Response::Stored(id) = f.admin(attach) else { panic!("PUT of the chain refused") };
    assert_eq!(id, entries[0].key_id);
    let info = f.chain("api.example.com");
    assert_eq!((info.key_id, info.certs), (id, vec![cert]));
    assert!(matches!(f.edge(sign("api.example.com")), Response::Signature(_)));
}

fn grants(text: &str) -> crate::authorize::Grants {
    crate::authorize::Grants::parse(text, "authorize.toml").unwrap()
}

#[test]
fn grants_limit_which_keys_a_caller_may_use_and_refusals_are_counted() {
    let mut f = Fixture::new();
    let a = Leaf::new(&["a.example", "a2.example"]);
    let b = Leaf::new(&["b.example"]);
    let w = Leaf::new(&["*.w.example"]);
    f.put("a.example", &a);
    f.put("b.example", &b);
    f.put("*.w.example", &w);
    // The same key under a second name: found by key id under either.
    f.put("a2.example", &a);
    f.custody = open(&f.dir).with_grants(grants(
        "[[grant]]\nuid = 1000\ndomains = [\"a2.example\", \"*.w.example\"]\n[[grant]]\nuid = 0\ndomains = [\"b.example\"]\n",
    ));
    assert_eq!(f.custody.forbidden_count(), 0);

    let by_id = |id: KeyId| Request::Sign { key: Selector::KeyId(id), scheme: Scheme::EcdsaP256Sha256, message: b"m".to_vec() };
    assert!(matches!(f.edge(sign("a2.example")), Response::Signature(_)));
    assert!(matches!(f.edge(by_id(a.id())), Response::Signature(_)), "allowed under one of the key's names");
    assert!(matches!(f.edge(Request::Chain(Selector::Domain("x.w.example".into()))), Response::Chain(_)));
    assert!(matches!(f.edge(sign("x.w.example")), Response::Signature(_)));

    let refused = [
        sign("a.example"),
        sign("b.example"),
        by_id(b.id()),
        Request::Chain(Selector::Domain("b.example".into())),
        Request::PublicKey(Selector::Domain("B.Example.".into())),
        // Names that have no key are refused alike: no probing.
        sign("nothing.example"),
    ];
    for (i, request) in refused.into_iter().enumerate() {
        match f.edge(request) {
            Response::Error { code: ErrorCode::Forbidden, message } => {
                assert!(message.contains("uid 1000") && message.contains("authorize.toml"), "{message}");
                assert!(message.contains("; add a [[grant]]"), "{message}");
            }
            other => panic!("#{i}: {other:?}"),
        }
        assert_eq!(f.custody.forbidden_count(), i as u64 + 1);
    }
    // Admins provision as before but sign only what their grants allow; PING needs no grant.
    assert!(matches!(f.admin(sign("b.example")), Response::Signature(_)));
    assert_eq!(code(f.admin(sign("a.example"))), ErrorCode::Forbidden);
    assert!(matches!(f.admin(Request::List), Response::List(_)));
    assert_eq!(f.edge(Request::Ping(vec![])), Response::Pong(vec![]));
    assert_eq!(code(f.edge(by_id(Leaf::new(&["z.example"]).id()))), ErrorCode::KeyNotFound, "an unknown key id is not found");
    assert_eq!(f.custody.forbidden_count(), 7);

    // A file without grants changes nothing.
    f.custody = open(&f.dir).with_grants(grants(""));
    assert!(f.custody.grants().is_none());
    assert!(matches!(f.edge(sign("b.example")), Response::Signature(_)));
}

#[test]
fn keys_lists_what_the_caller_may_use_and_sign_digest_signs_for_it() {
    use aws_lc_rs::digest::{digest, SHA256};
    let mut f = Fixture::new();
    let a = Leaf::new(&["a.example"]);
    let b = Leaf::new(&["b.example"]);
    f.put("a.example", &a);
    f.put("b.example", &b);
    let listed = |f: &Fixture| match f.edge(Request::Keys) {
        Response::Keys(entries) => entries.into_iter().map(|e| (e.domain, e.key_id, e.leaf)).collect::<Vec<_>>(),
        other => panic!("KEYS: {other:?}"),
    };
    assert_eq!(listed(&f), [("a.example".into(), a.id(), a.cert.clone()), ("b.example".into(), b.id(), b.cert.clone())]);

    let by_digest =
        |name: &str, how, digest: &[u8]| Request::SignDigest { key: Selector::Domain(name.into()), how, digest: digest.to_vec() };
    let hash = digest(&SHA256, b"transcript");
    let Response::DigestSignature(sig) = f.edge(by_digest("a.example", DigestSigning::Ecdsa, hash.as_ref())) else {
        panic!("SIGN_DIGEST refused")
    };
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, a.key.public_key_raw()).verify(b"transcript", &sig).unwrap();
    assert_eq!(code(f.edge(by_digest("a.example", DigestSigning::RsaPssSha256, hash.as_ref()))), ErrorCode::SchemeMismatch);
    assert_eq!(code(f.edge(by_digest("a.example", DigestSigning::Ecdsa, &[0; 48]))), ErrorCode::SchemeMismatch);

    f.custody = open(&f.dir).with_grants(grants("[[grant]]\nuid = 1000\ndomains = [\"b.example\"]\n"));
    assert_eq!(listed(&f).into_iter().map(|e| e.0).collect::<Vec<_>>(), ["b.example"]);
    assert_eq!(code(f.edge(by_digest("a.example", DigestSigning::Ecdsa, hash.as_ref()))), ErrorCode::Forbidden);
    assert!(matches!(f.edge(by_digest("b.example", DigestSigning::Ecdsa, hash.as_ref())), Response::DigestSignature(_)));
}

/// Admins writing one domain at once are served one after the other: of
/// several GENERATEs one makes the key (the one kept), the rest are told it
/// exists; identical PUTs all land.
#[test]
fn concurrent_writes_to_one_domain_are_served_in_turn() {
    let mut f = Fixture::new();
    let generate = || Request::Generate { domain: "race.example.com".into(), key_type: "ecdsa-p256".into() };
    let answers: Vec<Response> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..8).map(|_| s.spawn(|| f.admin(generate()))).collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let csrs: Vec<&Vec<u8>> = answers.iter().filter_map(|a| if let Response::Csr(csr) = a { Some(csr) } else { None }).collect();
    assert_eq!(csrs.len(), 1, "{answers:?}");
    assert_eq!(answers.iter().filter(|a| matches!(a, Response::Error { .. })).count(), 7, "{answers:?}");
    // The CSR that was handed out is for the key kept.
    let csr = CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csrs[0].clone())).unwrap();
    let kept = match f.admin(Request::PublicKey(Selector::Domain("race.example.com".into()))) {
        Response::PublicKey { spki, .. } => spki,
        other => panic!("{other:?}"),
    };
    assert_eq!(rcgen::PublicKeyData::subject_public_key_info(&csr.public_key), kept);

    let leaf = Leaf::new(&["www.example.com"]);
    let answers: Vec<Response> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..8).map(|_| s.spawn(|| f.admin(leaf.put("www.example.com")))).collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    assert!(answers.iter().all(|a| matches!(a, Response::Stored(_))), "{answers:?}");
    f.restart();
    assert_eq!(f.chain("www.example.com").key_id, leaf.id());
}
