//! Certificates and in-process servers for the endpoint tests.
#![allow(dead_code)]
use std::net::SocketAddr;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};
use rustls::sign::SingleCertAndKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sealtls_endpoint::gate::HelloGate;
use sealtls_endpoint::server::{Mode, Server, ServerOptions};
use sealtls_endpoint::settings::{certified_key, Anchors, ServerSettings, ServerTls};
use sealtls_endpoint::{ClientAuthMode, TlsVersions};

pub(crate) struct Ca {
    pub der: CertificateDer<'static>,
    pub pem: String,
    pub issuer: Issuer<'static, KeyPair>,
}

pub(crate) fn ca(cn: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(rcgen::DnType::CommonName, cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let cert = p.self_signed(&key).unwrap();
    let (der, pem) = (cert.der().clone(), cert.pem());
    let issuer = Issuer::from_ca_cert_der(&der, key).unwrap();
    Ca { der, pem, issuer }
}

pub(crate) type Identity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

pub(crate) fn leaf(ca: &Ca, sans: &[&str], tweak: impl FnOnce(&mut CertificateParams)) -> Identity {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    p.distinguished_name.push(rcgen::DnType::CommonName, sans.first().copied().unwrap_or("no-san"));
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    tweak(&mut p);
    let cert = p.signed_by(&key, &ca.issuer).unwrap();
    (vec![cert.der().clone()], PrivatePkcs8KeyDer::from(key.serialize_der()).into())
}

pub(crate) fn anchors(ca: &Ca) -> Anchors {
    Anchors { origin: "test CA".into(), certs: vec![ca.der.clone()] }
}

/// How a test server is set up.
pub(crate) struct Setup<'a> {
    pub client_ca: Option<&'a Ca>,
    pub auth: ClientAuthMode,
    pub versions: TlsVersions,
    pub gate: Option<Arc<dyn HelloGate>>,
    pub options: ServerOptions,
}

impl Default for Setup<'_> {
    fn default() -> Self {
        Self {
            client_ca: None,
            auth: ClientAuthMode::None,
            versions: TlsVersions::Any,
            gate: None,
            options: ServerOptions { mode: Mode::Echo, ..Default::default() },
        }
    }
}

/// Starts a server on a free loopback port for the rest of the test.
pub(crate) async fn serve(identity: Identity, setup: Setup<'_>) -> SocketAddr {
    // The server's log lines show with a failing test's output.
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let certified = certified_key(identity.0.clone(), &identity.1, "cert", "key").unwrap();
    let settings = ServerSettings {
        identity: Arc::new(SingleCertAndKey::from(Arc::unwrap_or_clone(certified))),
        client_ca: setup.client_ca.map(anchors),
        client_auth: setup.auth,
        versions: setup.versions,
    };
    let mut tls = ServerTls::new(settings).unwrap().with_tls12_ecdsa(identity.0, &identity.1);
    if let Some(gate) = setup.gate {
        // A gated server stands for a keyless one: first flights on signing threads.
        tls = tls.with_gate(gate).with_signing_threads(2);
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(Server::new(tls, setup.options).run(listener, std::future::pending()));
    addr
}
