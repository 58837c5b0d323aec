//! Every refusal the client can meet is explained, with the right class.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};
use rustls::sign::SingleCertAndKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sealtls_endpoint::client::{connect, Connected};
use sealtls_endpoint::server::{Mode, Server, ServerOptions};
use sealtls_endpoint::settings::{certified_key, Anchors, ClientSettings, ServerSettings, ServerTls};
use sealtls_endpoint::{ClientAuthMode, Failure, FailureClass, TlsVersions};
use time::{Duration as Span, OffsetDateTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Ca {
    der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

fn ca(cn: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(rcgen::DnType::CommonName, cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let der = p.self_signed(&key).unwrap().der().clone();
    let issuer = Issuer::from_ca_cert_der(&der, key).unwrap();
    Ca { der, issuer }
}

type Identity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

fn leaf(ca: &Ca, sans: &[&str], tweak: impl FnOnce(&mut CertificateParams)) -> Identity {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    p.distinguished_name.push(rcgen::DnType::CommonName, sans.first().copied().unwrap_or("no-san"));
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    tweak(&mut p);
    let cert = p.signed_by(&key, &ca.issuer).unwrap();
    (vec![cert.der().clone()], PrivatePkcs8KeyDer::from(key.serialize_der()).into())
}

fn anchors(ca: &Ca) -> Anchors {
    Anchors { origin: "test CA".into(), certs: vec![ca.der.clone()] }
}

async fn server(identity: Identity, client_ca: Option<&Ca>, auth: ClientAuthMode, versions: TlsVersions) -> SocketAddr {
    let certified = certified_key(identity.0, &identity.1, "cert", "key").unwrap();
    let settings = ServerSettings {
        identity: Arc::new(SingleCertAndKey::from(Arc::unwrap_or_clone(certified))),
        client_ca: client_ca.map(anchors),
        client_auth: auth,
        versions,
    };
    let tls = ServerTls::new(settings).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let srv = Server::new(tls, ServerOptions { mode: Mode::Echo, ..Default::default() });
    tokio::spawn(srv.run(listener, std::future::pending()));
    addr
}

async fn client(addr: SocketAddr, trust: &Ca, identity: Option<Identity>, versions: TlsVersions) -> Result<Connected, Failure> {
    let identity = identity.map(|(chain, key)| certified_key(chain, &key, "cert", "key").unwrap());
    let settings = ClientSettings { trust: anchors(trust), identity, versions, legacy_v1_leaf: false, name_check: true };
    connect(&addr.to_string(), Some("localhost"), &settings, Duration::from_secs(5)).await
}

async fn refused(identity: Identity, trust: &Ca) -> Failure {
    let addr = server(identity, None, ClientAuthMode::None, TlsVersions::Any).await;
    match client(addr, trust, None, TlsVersions::Any).await {
        Ok(_) => panic!("the handshake should have been refused"),
        Err(f) => f,
    }
}

fn assert_explained(f: &Failure, class: FailureClass, what: &str, fix: &str) {
    assert_eq!(f.class, class, "{f}");
    assert!(f.what.contains(what), "what: {f}");
    assert!(f.fix.contains(fix), "fix: {f}");
}

#[tokio::test]
async fn mutual_tls_succeeds_and_echoes() {
    let ca = ca("Test CA");
    let addr = server(leaf(&ca, &["localhost"], |_| {}), Some(&ca), ClientAuthMode::Required, TlsVersions::Any).await;
    for versions in [TlsVersions::V12, TlsVersions::V13] {
        let mut c = client(addr, &ca, Some(leaf(&ca, &["alice"], |_| {})), versions).await.unwrap();
        assert_eq!(c.session.client_certificate, "sent");
        assert_eq!(c.session.info.version, if versions == TlsVersions::V12 { "TLSv1.2" } else { "TLSv1.3" });
        c.stream.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        c.stream.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
    }
}

#[tokio::test]
async fn untrusted_issuer() {
    let f = refused(leaf(&ca("Other CA"), &["localhost"], |_| {}), &ca("Trusted CA")).await;
    assert_explained(&f, FailureClass::PeerNotTrusted, "issued by \"CN=Other CA\", which is not a trusted CA", "--ca");
}

#[tokio::test]
async fn host_name_not_in_san() {
    let ca = ca("CA");
    let f = refused(leaf(&ca, &["example.org"], |_| {}), &ca).await;
    assert_explained(&f, FailureClass::PeerNotTrusted, "not valid for \"localhost\": it names DNS:example.org", "--server-name");
}

#[tokio::test]
async fn no_san_at_all() {
    let ca = ca("CA");
    let f = refused(leaf(&ca, &[], |_| {}), &ca).await;
    assert_explained(&f, FailureClass::PeerNotTrusted, "has no subjectAltName", "--san localhost");
}

#[tokio::test]
async fn ca_certificate_used_as_leaf() {
    let ca = ca("CA");
    let f = refused(leaf(&ca, &["localhost"], |p| p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained)), &ca).await;
    assert_explained(&f, FailureClass::PeerNotTrusted, "CA certificate (basicConstraints CA:TRUE)", "CA:FALSE");
}

#[tokio::test]
async fn wrong_extended_key_usage() {
    let ca = ca("CA");
    let f = refused(leaf(&ca, &["localhost"], |p| p.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning]), &ca).await;
    assert_explained(&f, FailureClass::PeerNotTrusted, "does not allow serverAuth", "extendedKeyUsage = serverAuth");
}

#[tokio::test]
async fn expired_certificate() {
    let ca = ca("CA");
    let now = OffsetDateTime::now_utc();
    let f = refused(
        leaf(&ca, &["localhost"], |p| {
            p.not_before = now - Span::days(30);
            p.not_after = now - Span::days(3);
        }),
        &ca,
    )
    .await;
    assert_explained(&f, FailureClass::PeerNotTrusted, "expired on", "renew it");
}

#[tokio::test]
async fn not_yet_valid_certificate() {
    let ca = ca("CA");
    let now = OffsetDateTime::now_utc();
    let f = refused(
        leaf(&ca, &["localhost"], |p| {
            p.not_before = now + Span::days(3);
            p.not_after = now + Span::days(30);
        }),
        &ca,
    )
    .await;
    assert_explained(&f, FailureClass::PeerNotTrusted, "is not valid until", "clocks");
}

#[tokio::test]
async fn client_certificate_required_but_none_sent() {
    let ca = ca("CA");
    let addr = server(leaf(&ca, &["localhost"], |_| {}), Some(&ca), ClientAuthMode::Required, TlsVersions::Any).await;
    for versions in [TlsVersions::V12, TlsVersions::V13] {
        let f = client(addr, &ca, None, versions).await.err().expect("refused");
        assert_explained(&f, FailureClass::Rejected, "requires a client certificate and none was sent", "--cert FILE --key FILE");
    }
}

#[tokio::test]
async fn server_rejects_our_certificate_and_names_the_alert() {
    let ca = ca("CA");
    let stranger = self::ca("Stranger CA");
    let addr = server(leaf(&ca, &["localhost"], |_| {}), Some(&ca), ClientAuthMode::Required, TlsVersions::Any).await;
    for versions in [TlsVersions::V12, TlsVersions::V13] {
        let f = client(addr, &ca, Some(leaf(&stranger, &["alice"], |_| {})), versions).await.err().expect("refused");
        assert_explained(&f, FailureClass::Rejected, "rejected our client certificate (alert unknown_ca)", "server's --ca");
    }
}

#[tokio::test]
async fn protocol_version_mismatch() {
    let ca = ca("CA");
    let addr = server(leaf(&ca, &["localhost"], |_| {}), None, ClientAuthMode::None, TlsVersions::V12).await;
    let f = client(addr, &ca, None, TlsVersions::V13).await.err().expect("refused");
    assert_explained(&f, FailureClass::Protocol, "protocol version mismatch", "--tls");
}

#[tokio::test]
async fn nothing_listening_is_a_network_failure() {
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let f = client(addr, &ca("CA"), None, TlsVersions::Any).await.err().expect("refused");
    assert_explained(&f, FailureClass::Network, "nothing accepts connections", "start the server");
}
