//! A console session's TLS client connection (`client connect`), with a
//! reader task that hands whatever the server sends back to the session.
use std::net::IpAddr;
use std::time::Duration;

use sealtls_endpoint::client::{connect, ClientSession, ClientStream};
use sealtls_endpoint::explain::{explain, Side};
use sealtls_endpoint::settings::ClientSettings;
use sealtls_failure::Failure;
use tokio::io::{AsyncReadExt, AsyncWriteExt, WriteHalf};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Something the server did, reported to the session.
#[derive(Debug)]
pub enum LinkEvent {
    /// Application data arrived.
    Received(Vec<u8>),
    /// The server closed the connection (cleanly when `None`).
    Closed(Option<Failure>),
}

/// `ADDR:PORT` as a target, with IPv6 in brackets.
pub fn target_of(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    }
}

/// The address in hex, network byte order, as BitVisor prints it (`c0a82832`).
pub fn hex_of(ip: IpAddr) -> String {
    let octets = match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    octets.iter().map(|b| format!("{b:02x}")).collect()
}

/// An open client connection.
pub struct ClientLink {
    /// Where it is connected.
    pub target: String,
    /// What was negotiated.
    pub session: ClientSession,
    /// The server's leaf certificate, for warnings.
    pub peer_leaf: Option<rustls::pki_types::CertificateDer<'static>>,
    /// Application bytes sent.
    pub sent: u64,
    /// Application bytes received.
    pub received: u64,
    writer: WriteHalf<ClientStream>,
    events: mpsc::Receiver<LinkEvent>,
    reader: JoinHandle<()>,
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A connect failure with a remedy a console user can apply: the console's
/// client has no flags; it connects by address and trusts the config's CA.
fn for_the_console(f: Failure) -> Failure {
    let fix = if f.fix.contains("--server-name") {
        "the console's client connects by address and sends no server name: use `sealtls connect HOST:PORT --server-name NAME` for a server that chooses its certificate by name".to_owned()
    } else if f.fix.contains("--ca") {
        "give the config's [tls] ca_cert (or ca_cert_file) the CA that issued the server's certificate".to_owned()
    } else {
        return f;
    };
    Failure::new(f.class, f.what, fix)
}

impl ClientLink {
    /// Connects and verifies the server as `ip` (its certificate must name
    /// that address unless `legacy_v1_leaf` is set).
    pub async fn open(ip: IpAddr, port: u16, settings: &ClientSettings) -> Result<Self, Failure> {
        let target = target_of(ip, port);
        let connected = connect(&target, None, settings, CONNECT_TIMEOUT).await.map_err(for_the_console)?;
        let peer_leaf = connected.stream.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.clone().into_owned());
        let (mut rd, writer) = tokio::io::split(connected.stream);
        let (tx, events) = mpsc::channel(16);
        if !connected.early_data.is_empty() {
            let _ = tx.try_send(LinkEvent::Received(connected.early_data));
        }
        let peer = target.clone();
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; 16 * 1024];
            let closed = loop {
                match rd.read(&mut buf).await {
                    Ok(0) => break None,
                    Ok(n) => {
                        if tx.send(LinkEvent::Received(buf[..n].to_vec())).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => break Some(explain(&e, &Default::default(), Side::Client, &peer)),
                }
            };
            let _ = tx.send(LinkEvent::Closed(closed)).await;
        });
        Ok(Self { target, session: connected.session, peer_leaf, sent: 0, received: 0, writer, events, reader })
    }

    /// Sends bytes.
    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), Failure> {
        let result = async {
            self.writer.write_all(bytes).await?;
            self.writer.flush().await
        };
        result.await.map_err(|e| explain(&e, &Default::default(), Side::Client, &self.target))?;
        self.sent += bytes.len() as u64;
        Ok(())
    }

    /// The next thing the server did.
    pub async fn next_event(&mut self) -> LinkEvent {
        let event = self.events.recv().await.unwrap_or(LinkEvent::Closed(None));
        if let LinkEvent::Received(data) = &event {
            self.received += data.len() as u64;
        }
        event
    }

    /// Sends close_notify and closes.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.writer.shutdown()).await;
        self.reader.abort();
    }
}

impl Drop for ClientLink {
    fn drop(&mut self) {
        self.reader.abort();
    }
}
