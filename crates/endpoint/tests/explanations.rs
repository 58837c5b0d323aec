//! Every refusal the client can meet is explained, with the right class.
use std::net::SocketAddr;
use std::time::Duration;

mod common;

use common::{anchors, ca, leaf, serve, Ca, Identity, Setup};
use rcgen::{BasicConstraints, ExtendedKeyUsagePurpose, IsCa};
use sealtls_endpoint::client::{connect, Connected};
use sealtls_endpoint::settings::{certified_key, ClientSettings};
use sealtls_endpoint::{ClientAuthMode, Failure, FailureClass, TlsVersions};
use time::{Duration as Span, OffsetDateTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn server(identity: Identity, client_ca: Option<&Ca>, auth: ClientAuthMode, versions: TlsVersions) -> SocketAddr {
    serve(identity, Setup { client_ca, auth, versions, ..Default::default() }).await
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

/// Refuses hellos without a server name, as a keyless server does.
struct NeedsName;

impl sealtls_endpoint::gate::HelloGate for NeedsName {
    fn check<'a>(
        &'a self,
        server_name: Option<&'a str>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), sealtls_endpoint::gate::Refusal>> + Send + 'a>> {
        let refusal = sealtls_endpoint::gate::Refusal { alert: rustls::AlertDescription::HandshakeFailure, reason: "no SNI".into() };
        Box::pin(std::future::ready(if server_name.is_some() { Ok(()) } else { Err(refusal) }))
    }
}

#[tokio::test]
async fn ip_address_sends_no_server_name() {
    let ca = ca("CA");
    let addr =
        serve(leaf(&ca, &["localhost", "127.0.0.1"], |_| {}), Setup { gate: Some(std::sync::Arc::new(NeedsName)), ..Default::default() })
            .await;
    let settings =
        ClientSettings { trust: anchors(&ca), identity: None, versions: TlsVersions::Any, legacy_v1_leaf: false, name_check: true };
    let f = connect(&addr.to_string(), None, &settings, Duration::from_secs(5)).await.err().expect("refused");
    assert_explained(&f, FailureClass::Rejected, "no server name (SNI) was sent", "--server-name NAME");
    // With a name, the same server is reached.
    assert!(client(addr, &ca, None, TlsVersions::Any).await.is_ok());
}

/// A transport that loses every plaintext alert record, as a TLS 1.2 server
/// that closes without one (mbedTLS 2.28 refusing a missing client certificate).
struct DropsAlerts(tokio::net::TcpStream);

impl tokio::io::AsyncRead for DropsAlerts {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for DropsAlerts {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if buf.first() == Some(&0x15) {
            return std::task::Poll::Ready(Ok(buf.len()));
        }
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[tokio::test]
async fn server_that_asked_for_a_certificate_closes_without_an_alert() {
    let ca = ca("CA");
    let (chain, key) = leaf(&ca, &["localhost"], |_| {});
    let verifier = rustls::server::WebPkiClientVerifier::builder(std::sync::Arc::new(anchors(&ca).root_store().unwrap())).build().unwrap();
    let config = rustls::ServerConfig::builder_with_protocol_versions(&[&rustls::version::TLS12])
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        // The refusal's alert is dropped and the connection closed.
        let _ = acceptor.accept(DropsAlerts(tcp)).await;
    });
    let f = client(addr, &ca, None, TlsVersions::Any).await.err().expect("refused");
    assert_explained(
        &f,
        FailureClass::Rejected,
        "asked for a client certificate, none was sent, and it closed the connection without an alert",
        "--cert FILE --key FILE",
    );
}
