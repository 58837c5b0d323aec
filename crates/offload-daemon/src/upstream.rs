//! The outbound side of a slot, upstream of the daemon: the TCP connect to
//! the server, the TLS handshake and the established session with its two
//! plaintext queues.
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::ServerName;
use sealtls_endpoint::client::{handshake, tcp_connect, ClientStream};
use sealtls_endpoint::explain::{explain, Side};
use sealtls_endpoint::session::SessionInfo;
use sealtls_endpoint::settings::ClientSettings;
use sealtls_failure::{Failure, FailureClass};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tracing::debug;

use crate::buffer::Buffer;

/// How long a closing session may take to send what was queued and its close_notify.
const CLOSE_LIMIT: Duration = Duration::from_secs(5);

/// A failure as one line for DETAIL and logs.
pub(crate) fn detail(f: &Failure) -> String {
    format!("{} (fix: {})", f.what, f.fix)
}

/// A handshake failure with the remedy the daemon's user can apply: trust
/// is the daemon's to change, not the client's (who has no --ca to give).
fn for_the_daemon(f: Failure) -> Failure {
    use sealtls_offload_proto::detail::{MISNAMED, REFUSED_CERTIFICATE, UNTRUSTED};
    if f.class != FailureClass::PeerNotTrusted {
        return f;
    }
    // Only the remedies that name a client's flags are the daemon's to restate.
    let fix = if f.fix.contains("--server-name") {
        format!("connect by a name the certificate holds, reissue it for this one, or {MISNAMED} if names are not to be checked")
    } else if f.fix.contains("--ca") {
        format!("add the CA that issued the server's certificate to {UNTRUSTED}")
    } else {
        f.fix
    };
    Failure::new(f.class, format!("{REFUSED_CERTIFICATE}{}", f.what), fix)
}

/// Where a slot connects, as given to CONNECT.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    pub host: String,
    pub port: u16,
}

impl Target {
    /// `HOST:PORT`, with an IPv6 address in brackets.
    pub(crate) fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// What the slot's connects and handshakes need from the daemon.
pub(crate) struct Dialer {
    /// Read once per handshake, so that a reload of the trust anchors
    /// reaches new handshakes and leaves established sessions alone.
    tls: RwLock<Arc<ClientSettings>>,
    pub connect_timeout: Duration,
    pub handshake_timeout: Duration,
}

/// Runs `step` for at most `limit`, naming the daemon setting to raise when
/// it runs out (the endpoint's own limit is set past ours, so ours fires).
async fn within<T>(
    limit: Duration,
    what: String,
    setting: &str,
    step: impl std::future::Future<Output = Result<T, Failure>>,
) -> Result<T, String> {
    match tokio::time::timeout(limit, step).await {
        Ok(result) => result.map_err(|f| detail(&f)),
        Err(_) => Err(format!(
            "{what} {} {} s (fix: check that the server is reachable and speaks TLS on that port, or raise the daemon's {setting})",
            sealtls_offload_proto::detail::TIMED_OUT,
            limit.as_secs_f32()
        )),
    }
}

/// The endpoint's own limit, kept past the daemon's.
fn outer(limit: Duration) -> Duration {
    limit.saturating_add(Duration::from_secs(1))
}

impl Dialer {
    pub(crate) fn new(tls: ClientSettings, connect_timeout: Duration, handshake_timeout: Duration) -> Self {
        Self { tls: RwLock::new(Arc::new(tls)), connect_timeout, handshake_timeout }
    }

    /// The settings new handshakes use.
    pub(crate) fn tls(&self) -> Arc<ClientSettings> {
        self.tls.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces the settings for handshakes from now on.
    pub(crate) fn replace_tls(&self, tls: ClientSettings) {
        *self.tls.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(tls);
    }

    /// Opens the TCP connection.
    pub(crate) async fn connect(&self, target: &Target) -> Result<TcpStream, String> {
        let address = target.address();
        let what = format!("the TCP connect to {address}");
        within(self.connect_timeout, what, "--connect-timeout", tcp_connect(&address, outer(self.connect_timeout))).await
    }

    /// Runs the handshake, verifying the server as the host connected to.
    pub(crate) async fn handshake(&self, tcp: TcpStream, target: &Target) -> Result<Tls, String> {
        let name = ServerName::try_from(target.host.clone())
            .map_err(|_| format!("`{}` is neither a DNS name nor an IP address, so the certificate cannot be checked against it (fix: connect by DNS name or address)", target.host))?;
        let tls = self.tls();
        let (config, seen) = tls.config().map_err(|e| detail(&Failure::config(e)))?;
        let address = target.address();
        let what = format!("the TLS handshake with {address}");
        let step = async { handshake(tcp, name, config, &seen, &address, outer(self.handshake_timeout)).await.map_err(for_the_daemon) };
        let stream = within(self.handshake_timeout, what, "--handshake-timeout", step).await?;
        let info = SessionInfo::of(stream.get_ref().1);
        let checked = if tls.name_check { format!("valid for {}", target.host) } else { "host name not checked".to_owned() };
        let session = format!(
            "{} {} {}; server {} verified: chain to a trusted CA ({}), {checked}",
            info.version,
            info.suite,
            info.group,
            info.peer_subject(),
            tls.trust.origin
        );
        Ok(Tls { stream: Box::new(stream), session, address, inbound: None, outbound: None, unflushed: false, drained: 0, end: None })
    }
}

/// How a session's data flow ended.
#[derive(Clone, Debug)]
pub(crate) enum End {
    /// The server sent close_notify (or closed after it).
    Closed,
    /// The connection broke; why.
    Broken(String),
}

/// An established TLS session and the plaintext queued both ways.
pub(crate) struct Tls {
    stream: Box<ClientStream>,
    /// What was negotiated, for SESSION.
    pub session: String,
    address: String,
    inbound: Option<Buffer>,
    outbound: Option<Buffer>,
    unflushed: bool,
    /// Bytes moved from the outbound queue into TLS since last reported.
    pub drained: usize,
    /// Set once no more data can be read or written.
    pub end: Option<End>,
}

impl Tls {
    /// Allocates the queues on first use (`capacity` bytes each).
    pub(crate) fn queues(&mut self, capacity: usize) -> (&mut Buffer, &mut Buffer) {
        let inbound = self.inbound.get_or_insert_with(|| Buffer::new(capacity));
        let outbound = self.outbound.get_or_insert_with(|| Buffer::new(capacity));
        (inbound, outbound)
    }

    /// Whether received data is waiting to be read.
    pub(crate) fn readable(&self) -> bool {
        self.inbound.as_ref().is_some_and(|b| !b.is_empty())
    }

    /// Whether WRITE would take a byte now.
    pub(crate) fn writable(&self) -> bool {
        self.outbound.as_ref().is_none_or(|b| b.room() > 0)
    }

    /// Moves queued plaintext out and received plaintext in, as far as the
    /// socket and the queues allow. Ready when anything changed; Pending
    /// (with wakers registered) otherwise.
    pub(crate) fn poll_io(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let mut changed = false;
        let stream = &mut *self.stream;
        let address = &self.address;
        let broken = |err: &std::io::Error| {
            let why = detail(&explain(err, &Default::default(), Side::Client, address));
            debug!(peer = %address, %why, "outbound connection broke");
            Some(End::Broken(why))
        };
        if let Some(out) = self.outbound.as_mut().filter(|_| self.end.is_none()) {
            while !out.is_empty() {
                match Pin::new(&mut *stream).poll_write(cx, out.data()) {
                    Poll::Ready(Ok(n)) if n > 0 => {
                        out.consume(n);
                        self.drained += n;
                        self.unflushed = true;
                        changed = true;
                    }
                    Poll::Ready(Ok(_)) => {
                        self.end = Some(End::Broken("the connection accepts no more data".into()));
                        return Poll::Ready(());
                    }
                    Poll::Ready(Err(e)) => {
                        self.end = broken(&e);
                        return Poll::Ready(());
                    }
                    Poll::Pending => break,
                }
            }
        }
        if self.unflushed && self.end.is_none() {
            match Pin::new(&mut *stream).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.unflushed = false,
                Poll::Ready(Err(e)) => {
                    self.end = broken(&e);
                    return Poll::Ready(());
                }
                Poll::Pending => {}
            }
        }
        if let Some(inbound) = self.inbound.as_mut() {
            while self.end.is_none() && inbound.room() > 0 {
                let mut buf = ReadBuf::new(inbound.space());
                match Pin::new(&mut *stream).poll_read(cx, &mut buf) {
                    Poll::Ready(Ok(())) => {
                        let n = buf.filled().len();
                        changed = true;
                        if n == 0 {
                            self.end = Some(End::Closed);
                        } else {
                            inbound.filled(n);
                        }
                    }
                    Poll::Ready(Err(e)) => {
                        self.end = broken(&e);
                        return Poll::Ready(());
                    }
                    Poll::Pending => break,
                }
            }
        }
        if changed {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Ends the session in the background: sends what is still queued, then
    /// close_notify when `close_notify`, all within a few seconds.
    pub(crate) fn close(mut self, close_notify: bool) {
        if !close_notify || self.end.is_some() {
            return;
        }
        tokio::spawn(async move {
            let pending = self.outbound.take();
            let finish = async {
                if let Some(out) = pending {
                    self.stream.write_all(out.data()).await?;
                }
                self.stream.shutdown().await
            };
            if let Err(e) = tokio::time::timeout(CLOSE_LIMIT, finish).await.unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into())) {
                debug!(peer = %self.address, error = %e, "closing the outbound session did not finish cleanly");
            }
        });
    }
}
