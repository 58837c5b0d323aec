//! A TLS client that reports what was negotiated and explains failures.
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{AlertDescription, ClientConfig};
use serde::Serialize;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::explain::{alert_name, explain, tls_error, Failure, FailureClass, Side};
use crate::net::{buffered, Buffered};
use crate::session::SessionInfo;
use crate::settings::ClientSettings;
use crate::verify::Observation;

/// A client TLS stream.
pub type ClientStream = TlsStream<Buffered>;

/// The summary printed after a successful handshake.
#[derive(Clone, Debug, Serialize)]
pub struct ClientSession {
    /// The address connected to.
    pub peer: String,
    /// The name verified against the certificate.
    pub server_name: String,
    /// Negotiated parameters.
    #[serde(flatten)]
    pub info: SessionInfo,
    /// The scheme the server signed the handshake with.
    pub signature_scheme: String,
    /// Verification result.
    pub verification: String,
    /// Whether the server asked for our certificate and whether we sent one.
    pub client_certificate: &'static str,
}

/// A connected, verified stream and its summary.
pub struct Connected {
    /// The TLS stream.
    pub stream: ClientStream,
    /// What was negotiated.
    pub session: ClientSession,
    /// Application data read while confirming the server accepted us.
    pub early_data: Vec<u8>,
}

/// The client side of keyd's mutual-TLS listener: TLS 1.3 only, trusting
/// the CA certificates in `ca`, presenting the chain in `cert` with its key
/// in `key` (refused when group or others can read it).
pub fn keyd_client_config(ca: &std::path::Path, cert: &std::path::Path, key: &std::path::Path) -> Result<rustls::ClientConfig, Failure> {
    let anchors =
        crate::settings::Anchors { origin: ca.display().to_string(), certs: sealtls_pki::load_certs(ca).map_err(Failure::config)? };
    let roots = anchors.root_store().map_err(Failure::config)?;
    let chain = sealtls_pki::load_certs(cert).map_err(Failure::config)?;
    let key_der = sealtls_pki::load_key(key).map_err(Failure::config)?;
    // Refuses a key that is not the certificate's, naming both files.
    crate::settings::certified_key(chain.clone(), &key_der, &cert.display().to_string(), &key.display().to_string())
        .map_err(Failure::config)?;
    let refused = |e: rustls::Error| Failure::new(FailureClass::Config, e.to_string(), sealtls_failure::CHECK_FILE);
    rustls::ClientConfig::builder_with_provider(crate::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(refused)?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key_der.clone_key())
        .map_err(refused)
}

/// Splits `HOST:PORT` (IPv6 in brackets) and gives the host part.
pub fn host_of(target: &str) -> Result<&str, Failure> {
    let usage = || {
        Failure::new(
            FailureClass::Usage,
            format!("`{target}` is not HOST:PORT"),
            "write the address as HOST:PORT, e.g. 127.0.0.1:4433 or [::1]:4433",
        )
    };
    let (host, port) = target.rsplit_once(':').ok_or_else(usage)?;
    port.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(usage)?;
    Ok(host.trim_start_matches('[').trim_end_matches(']'))
}

/// A host name that gave no address: the resolver's words and the remedy.
fn unresolved(target: &str, why: &dyn std::fmt::Display) -> Failure {
    let host = target.rsplit_once(':').map_or(target, |(host, _)| host).trim_start_matches('[').trim_end_matches(']');
    Failure::new(FailureClass::Network, format!("cannot resolve {host}: {why}"), "check the name, or use an address")
}

/// The name to verify the server against: `server_name` when given, else
/// the host part of `target`; as text and as rustls takes it.
pub fn server_name_for(target: &str, server_name: Option<&str>) -> Result<(String, ServerName<'static>), Failure> {
    let text = server_name.map_or_else(|| host_of(target).map(str::to_owned), |n| Ok(n.to_owned()))?;
    let name = ServerName::try_from(text.clone()).map_err(|_| {
        Failure::new(
            FailureClass::Usage,
            format!("`{text}` is not a valid server name"),
            "give a DNS name or an IP address with --server-name",
        )
    })?;
    Ok((text, name))
}

/// Opens a TCP connection to `target` (`HOST:PORT`, names resolved, each
/// address tried in turn) within `timeout`, explaining a failure.
pub async fn tcp_connect(target: &str, timeout: Duration) -> Result<TcpStream, Failure> {
    let attempt = async {
        let addrs = tokio::net::lookup_host(target).await.map_err(|e| unresolved(target, &e))?;
        let mut last = None;
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(match last {
            Some(e) => explain(&e, &Default::default(), Side::Client, target),
            None => unresolved(target, &"the name has no address"),
        })
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(explain(&std::io::ErrorKind::TimedOut.into(), &Default::default(), Side::Client, target)),
    }
}

/// Runs the client handshake over `tcp` within `timeout`, verifying the
/// server as `name`; a failure is explained with what `seen` observed.
pub async fn handshake(
    tcp: TcpStream,
    name: ServerName<'static>,
    config: Arc<ClientConfig>,
    seen: &Observation,
    target: &str,
    timeout: Duration,
) -> Result<ClientStream, Failure> {
    let by_address = matches!(name, ServerName::IpAddress(_));
    let handshake = TlsConnector::from(config).connect(name, buffered(tcp));
    match tokio::time::timeout(timeout, handshake).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(match tls_error(&e) {
            Some(rustls::Error::AlertReceived(alert @ (AlertDescription::HandshakeFailure | AlertDescription::UnrecognisedName)))
                if by_address && !seen.cert_requested() =>
            {
                no_server_name(target, *alert)
            }
            _ => explain(&e, seen, Side::Client, target),
        }),
        Err(_) => Err(explain(&std::io::ErrorKind::TimedOut.into(), seen, Side::Client, target)),
    }
}

/// TLS sends no server name (SNI) for an IP address, and a server that picks
/// its certificate by name refuses a hello without one.
fn no_server_name(target: &str, alert: AlertDescription) -> Failure {
    Failure::new(
        FailureClass::Rejected,
        format!(
            "server {target} refused the handshake (alert {}): we connected to an IP address, so no server name (SNI) was sent, \
             and a server that chooses its certificate by name (a keyless sealtls server, a virtual host) needs one",
            alert_name(alert)
        ),
        "give the name the server serves with --server-name NAME (the address is still used to connect)",
    )
}

/// Connects to `target`, verifies the server as `server_name` (default: the
/// host part of `target`) and, when the server asked for a certificate over TLS 1.3,
/// waits briefly for its verdict on our answer, which arrives after the
/// client considers the handshake done.
pub async fn connect(target: &str, server_name: Option<&str>, settings: &ClientSettings, timeout: Duration) -> Result<Connected, Failure> {
    let (name_text, name) = server_name_for(target, server_name)?;
    let (config, seen) = settings.config().map_err(Failure::config)?;
    let tcp = tcp_connect(target, timeout).await?;
    let mut stream = handshake(tcp, name, config, &seen, target, timeout).await?;
    let info = SessionInfo::of(stream.get_ref().1);
    let mut early_data = Vec::new();
    if seen.cert_requested() && info.version == "TLSv1.3" {
        let mut buf = vec![0u8; 16 * 1024];
        for _ in 0..50 {
            if seen.ticket_received() {
                break;
            }
            match tokio::time::timeout(Duration::from_millis(10), stream.read(&mut buf)).await {
                Ok(Ok(n)) => {
                    early_data.extend_from_slice(&buf[..n]);
                    break;
                }
                Ok(Err(e)) => return Err(explain(&e, &seen, Side::Client, target)),
                Err(_) => {}
            }
        }
    }
    let client_certificate = match (seen.cert_requested(), seen.cert_sent()) {
        (false, _) => "not requested",
        (true, true) => "sent",
        (true, false) => "requested, none sent",
    };
    let session = ClientSession {
        peer: target.to_owned(),
        server_name: name_text.clone(),
        signature_scheme: seen.peer_signature().map_or("none".to_owned(), |s| format!("{s:?}")),
        verification: if settings.legacy_v1_leaf {
            format!(
                "OK (legacy_v1_leaf): signed by a trusted CA ({}) and within its validity period; host name, version and SAN not checked",
                settings.trust.origin
            )
        } else {
            format!("OK: chain to a trusted CA ({}), valid for {name_text}", settings.trust.origin)
        },
        info,
        client_certificate,
    };
    Ok(Connected { stream, session, early_data })
}
