//! A TLS server for many concurrent connections: echo, sink or
//! handshake-only, with one log line at the start and end of each session.
use std::future::Future;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};

use rustls::server::ServerConnection;
use rustls::{AlertDescription, ServerConfig};

use crate::explain::{alert_name, explain, is_oversized_message, tls_error, Side};
use crate::forward::{relay, CutOnDrop, Forward, RelayEnd, Relayed, TargetFailed, TargetStream};
use crate::gate::{read_client_hello, send_alert, Hello, HelloInfo, Refusal};
use crate::metrics::{HandshakeFailure, ListenerMetrics};
use crate::net::{accept_until, buffered, finish_within, Buffered, TrafficBuffer, SHUTDOWN_GRACE};
use crate::proxy_protocol::{self, ProxyProtocol, TlsFacts};
use crate::session::SessionInfo;
use crate::settings::ServerTls;
use crate::signing::SigningThreads;
use crate::verify::Observation;

/// What the server does with application data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Write every received chunk straight back.
    Echo,
    /// Finish the handshake, send close_notify, close.
    Handshake,
    /// Read and discard; on the client's close, report the byte count.
    Sink,
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "echo" => Ok(Self::Echo),
            "handshake" => Ok(Self::Handshake),
            "sink" => Ok(Self::Sink),
            _ => Err(format!("unknown mode `{s}`; choose echo, handshake or sink")),
        }
    }
}

/// The line a sink server sends after the client's close_notify.
pub fn sink_report(bytes: u64) -> String {
    format!("sealtls-sink bytes={bytes}\n")
}

/// Counters over the server's lifetime.
#[derive(Debug, Default)]
pub struct ServerStats {
    /// Connections accepted.
    pub accepted: AtomicU64,
    /// Handshakes completed.
    pub handshakes: AtomicU64,
    /// Handshakes that failed.
    pub failed: AtomicU64,
    /// Application bytes received.
    pub bytes_in: AtomicU64,
    /// Application bytes sent.
    pub bytes_out: AtomicU64,
    /// Sessions open now (handshake done, not yet closed).
    pub open: AtomicU64,
}

impl ServerStats {
    /// Counts a session as open until the guard drops: when it ends, and
    /// also when its task is aborted at shutdown.
    pub fn session(&self) -> OpenCount<'_> {
        self.open.fetch_add(1, Ordering::Relaxed);
        OpenCount(self)
    }
}

/// One session in [`ServerStats::open`], for as long as it lives.
pub struct OpenCount<'a>(&'a ServerStats);

impl Drop for OpenCount<'_> {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts a relay's bytes into a listener's counters as they go: bytes
/// moving away from `tls_peer` (the relay end that is the TLS session) were
/// received from it, bytes toward it were sent.
pub fn relay_tally<'a>(stats: &'a ServerStats, metrics: &'a ListenerMetrics, tls_peer: RelayEnd) -> impl Fn(RelayEnd, u64) + Sync + 'a {
    move |toward, n| {
        if toward == tls_peer {
            stats.bytes_out.fetch_add(n, Ordering::Relaxed);
            metrics.moved(0, n);
        } else {
            stats.bytes_in.fetch_add(n, Ordering::Relaxed);
            metrics.moved(n, 0);
        }
    }
}

/// How long a server session may move no bytes before it is closed.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// Server limits and behaviour.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// What to do with data.
    pub mode: Mode,
    /// A handshake not finished in this time is abandoned.
    pub handshake_timeout: Duration,
    /// A session in which no byte moves either way for this long is closed
    /// (zero: never).
    pub idle_timeout: Duration,
    /// Connections beyond this wait in the listen backlog.
    pub max_connections: usize,
    /// On shutdown, open sessions get this long to finish.
    pub grace: Duration,
    /// Sessions are joined to a target instead of `mode`.
    pub forward: Option<Arc<Forward>>,
    /// A session is closed after this long, however busy (`None`: no limit).
    pub max_lifetime: Option<Duration>,
    /// Where handshakes, sessions and bytes are counted for Prometheus.
    pub metrics: ListenerMetrics,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            mode: Mode::Echo,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_connections: 10_000,
            grace: SHUTDOWN_GRACE,
            forward: None,
            max_lifetime: None,
            metrics: ListenerMetrics::default(),
        }
    }
}

/// A running server's shared state.
pub struct Server {
    /// Read once per connection, so that a reload reaches new handshakes
    /// while established sessions keep the configuration they started with.
    tls: RwLock<Arc<ServerTls>>,
    options: ServerOptions,
    /// Lifetime counters.
    pub stats: ServerStats,
}

impl Server {
    /// A server with the given TLS configuration.
    pub fn new(tls: ServerTls, options: ServerOptions) -> Arc<Self> {
        Arc::new(Self { tls: RwLock::new(Arc::new(tls)), options, stats: ServerStats::default() })
    }

    /// The TLS configuration new connections get.
    pub fn tls(&self) -> Arc<ServerTls> {
        self.tls.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces the TLS configuration for connections accepted from now on
    /// (hot reload); open sessions keep theirs.
    pub fn replace_tls(&self, tls: ServerTls) {
        *self.tls.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(tls);
    }

    /// Accepts connections until `shutdown` completes, then gives open
    /// sessions the grace period and closes the rest.
    pub async fn run(self: Arc<Self>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let (closing_tx, closing) = watch::channel(false);
        let sessions = accept_until(
            || listener.accept(),
            self.options.max_connections,
            shutdown,
            |(tcp, peer), slot| {
                self.stats.accepted.fetch_add(1, Ordering::Relaxed);
                let server = self.clone();
                let closing = closing.clone();
                async move {
                    server.handle(tcp, peer, closing).await;
                    drop(slot);
                }
            },
        )
        .await;
        drop(listener);
        // Open sessions send close_notify after the chunk in flight.
        let _ = closing_tx.send(true);
        finish_within(sessions, self.options.grace).await;
    }

    /// The TLS handshake, after a look at the ClientHello when the server
    /// needs one (a gate, or a key that serves other hashes over TLS 1.2).
    async fn open(&self, tcp: TcpStream, seen: &Arc<Observation>) -> Opened {
        let mut io = buffered(tcp);
        let tls = self.tls();
        let accept = |io, hello: Option<&HelloInfo>| TlsAcceptor::from(tls.for_connection(seen, hello)).accept(io).into_fallible();
        if !tls.reads_hello() {
            return accept(io, None).await.into();
        }
        let hello = match read_client_hello(&mut io).await {
            Ok(Hello::Complete(hello)) => hello,
            Ok(Hello::Malformed(why)) => {
                send_alert(&mut io, AlertDescription::DecodeError).await;
                return Opened::Failed(
                    std::io::Error::new(std::io::ErrorKind::InvalidData, format!("malformed ClientHello: {why}")),
                    Some(io),
                );
            }
            Ok(Hello::TooLarge) => {
                send_alert(&mut io, AlertDescription::DecodeError).await;
                return Opened::Failed(std::io::Error::other("message buffer full"), Some(io));
            }
            // Not a hello: rustls reads the same bytes and refuses them itself.
            Ok(Hello::NotHello | Hello::Partial) => return accept(io, None).await.into(),
            Err(e) => return Opened::Failed(e, Some(io)),
        };
        if let Some(gate) = tls.gate() {
            if let Err(refusal) = gate.check(hello.server_name.as_deref()).await {
                send_alert(&mut io, refusal.alert).await;
                return Opened::Refused(hello.server_name, refusal, io);
            }
        }
        if let Some(threads) = tls.signing_threads() {
            return first_flight_on_signing_thread(io, tls.for_connection(seen, Some(&hello)), threads).await;
        }
        accept(io, Some(&hello)).await.into()
    }

    async fn handle(&self, tcp: TcpStream, peer: SocketAddr, closing: watch::Receiver<bool>) {
        let started = Instant::now();
        let local = tcp.local_addr().ok();
        let seen = Arc::new(Observation::default());
        // On the heap: the handshake's state is freed when it ends, so the
        // task of a session that stays open carries only the session's.
        let Some(mut stream) = Box::pin(self.handshake(tcp, peer, &seen)).await else { return };
        self.stats.handshakes.fetch_add(1, Ordering::Relaxed);
        self.session_started(&stream, peer, started.elapsed());
        let mut counts =
            Counts { stats: &self.stats, metrics: &self.options.metrics, closing, relayed: Relayed::default(), bytes_in: 0, bytes_out: 0 };
        let open = (self.stats.session(), self.options.metrics.session());
        let activity = stream.get_ref().0.activity();
        let end_of_life = self.options.max_lifetime.map(|limit| tokio::time::Instant::now() + limit);
        let result = tokio::select! {
            r = self.work(&mut stream, peer, local, &mut counts) => Some(r),
            idle = activity.idle_for_or_until(self.options.idle_timeout, end_of_life) => if idle {
                None
            } else {
                warn!(%peer, limit_s = self.options.max_lifetime.unwrap_or_default().as_secs(), "session closed: it reached the maximum connection lifetime");
                Some(Ok(()))
            },
        };
        counts.settle_relayed();
        drop(open);
        let ms = started.elapsed().as_millis() as u64;
        let (bytes_in, bytes_out) = (counts.bytes_in, counts.bytes_out);
        match result {
            Some(Ok(())) => info!(%peer, bytes_in, bytes_out, duration_ms = ms, "session ended"),
            None => {
                let idle_s = self.options.idle_timeout.as_secs();
                warn!(%peer, bytes_in, bytes_out, duration_ms = ms, idle_s, "session closed: no bytes moved in either direction within the idle timeout");
                // A forwarded session ends without close_notify, as at the lifetime
                // limit: a response the target left unfinished must not look complete.
                if self.options.forward.is_none() {
                    // On the heap, as the close below: the task is not sized for the way out.
                    let _ = Box::pin(tokio::time::timeout(Duration::from_secs(1), stream.shutdown())).await;
                }
            }
            Some(Err(e)) => {
                let why = explain(&e, &seen, Side::Server, &peer.to_string());
                warn!(%peer, bytes_in, bytes_out, duration_ms = ms, reason = %why.what, fix = %why.fix, "session ended with an error");
                // The alert rustls queued for a protocol error reaches the client before the close.
                if tls_error(&e).is_some() {
                    Box::pin(close_after_alert(stream)).await;
                }
            }
        }
    }

    /// The handshake within its time limit; a failure is counted, logged
    /// and answered with an alert, and the connection closed.
    async fn handshake(&self, tcp: TcpStream, peer: SocketAddr, seen: &Arc<Observation>) -> Option<ServerStream> {
        match tokio::time::timeout(self.options.handshake_timeout, self.open(tcp, seen)).await {
            Ok(Opened::Stream(stream)) => Some(stream),
            Ok(Opened::Failed(e, io)) => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                let why = explain(&e, seen, Side::Server, &peer.to_string());
                self.options.metrics.handshake_failed(match seen.mismatch() {
                    Some(_) => HandshakeFailure::AccessDenied,
                    None => HandshakeFailure::Class(why.class),
                });
                warn!(%peer, reason = %why.what, fix = %why.fix, "handshake failed");
                if let Some(mut io) = io {
                    // rustls sends its alert itself; an error found before
                    // anything was sent still owes the client one.
                    if let Some(alert) = io.written().eq(&0).then(|| unsent_alert(&e)).flatten() {
                        send_alert(&mut io, alert).await;
                    }
                    io.close_lingering().await;
                }
                None
            }
            Ok(Opened::Refused(name, refusal, io)) => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                self.options.metrics.handshake_failed(HandshakeFailure::ServerName);
                let alert = alert_name(refusal.alert);
                warn!(%peer, server_name = name.as_deref().unwrap_or("(none)"), %alert, reason = %refusal.reason, "handshake refused");
                io.close_lingering().await;
                None
            }
            Err(_) => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                self.options.metrics.handshake_failed(HandshakeFailure::Timeout);
                warn!(%peer, reason = "no complete handshake within the time limit", timeout_s = self.options.handshake_timeout.as_secs(), "handshake failed");
                None
            }
        }
    }

    /// What the session does with its data: forward, echo, sink or nothing.
    async fn work(
        &self,
        stream: &mut ServerStream,
        peer: SocketAddr,
        local: Option<SocketAddr>,
        counts: &mut Counts<'_>,
    ) -> std::io::Result<()> {
        match (&self.options.forward, self.options.mode) {
            (Some(forward), _) => forward_session(forward, stream, peer, local, counts).await,
            // Boxed, so that a forwarding session's task is not sized for them.
            (None, Mode::Echo) => Box::pin(echo(stream, counts)).await,
            (None, Mode::Sink) => Box::pin(sink(stream, counts)).await,
            (None, Mode::Handshake) => stream.shutdown().await,
        }
    }

    /// Counts and logs a finished handshake.
    fn session_started(&self, stream: &ServerStream, peer: SocketAddr, took: Duration) {
        let conn = stream.get_ref().1;
        let info = SessionInfo::of(conn);
        self.options.metrics.handshake_ok(&info, took);
        let alpn = conn.alpn_protocol().map_or("none".into(), String::from_utf8_lossy);
        info!(%peer, version = %info.version, suite = %info.suite, group = %info.group, %alpn, client = %info.peer_subject(), "session started");
    }
}

/// A server's side of a TLS session.
type ServerStream = tokio_rustls::server::TlsStream<Buffered>;

/// How a handshake ended.
// Built and moved once per connection; boxing the stream would only add an allocation.
#[allow(clippy::large_enum_variant)]
enum Opened {
    Stream(tokio_rustls::server::TlsStream<Buffered>),
    /// The handshake failed; the connection, unless it was lost.
    Failed(std::io::Error, Option<Buffered>),
    /// The gate refused the server name (the SNI, if any).
    Refused(Option<String>, Refusal, Buffered),
}

impl From<Result<tokio_rustls::server::TlsStream<Buffered>, (std::io::Error, Buffered)>> for Opened {
    fn from(r: Result<tokio_rustls::server::TlsStream<Buffered>, (std::io::Error, Buffered)>) -> Self {
        r.map_or_else(|(e, io)| Self::Failed(e, Some(io)), Self::Stream)
    }
}

/// Processes the ClientHello, which makes the server flight and its
/// signature, on one of the signing threads, then hands the connection to
/// tokio-rustls for the rest of the handshake.
async fn first_flight_on_signing_thread(mut io: Buffered, config: Arc<ServerConfig>, threads: &SigningThreads) -> Opened {
    let hello = io.take_peeked();
    let made = {
        let config = config.clone();
        threads
            .run(move || match ServerConnection::new(config) {
                Ok(mut conn) => {
                    let fed = feed(&mut conn, &hello);
                    (Some(conn), fed)
                }
                Err(e) => (None, Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e))),
            })
            .await
    };
    match made {
        Some((Some(conn), Ok(()))) => TlsAcceptor::from(config).accept_with(io, move |fresh| *fresh = conn).into_fallible().await.into(),
        Some((conn, fed)) => {
            let e = fed.err().unwrap_or_else(|| std::io::Error::other("no connection"));
            // A refused hello: rustls queued its alert, which goes out before
            // the close. A signature that failed (a `General` error, for which
            // rustls queues no alert) leaves a ServerHello queued instead: it
            // is dropped, and the caller sends handshake_failure in the clear.
            if !matches!(tls_error(&e), Some(rustls::Error::General(_))) {
                let mut alert = Vec::new();
                if let Some(mut conn) = conn {
                    while conn.wants_write() && conn.write_tls(&mut alert).is_ok() {}
                }
                let _ = io.write_all(&alert).await;
            }
            Opened::Failed(e, Some(io))
        }
        None => Opened::Failed(std::io::Error::other("no signing thread could take the handshake"), Some(io)),
    }
}

/// Gives rustls the bytes read before the handshake, processing as they go.
fn feed(conn: &mut ServerConnection, mut bytes: &[u8]) -> std::io::Result<()> {
    while !bytes.is_empty() {
        conn.read_tls(&mut bytes)?;
        conn.process_new_packets().map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    }
    Ok(())
}

/// Sends what rustls queued (an alert) and closes the connection, lingering.
async fn close_after_alert(mut stream: ServerStream) {
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.flush()).await;
    stream.into_inner().0.close_lingering().await;
}

/// The alert a handshake error calls for when rustls sent none: a client
/// that is refused is told why rather than meeting a bare close. A peer that
/// went away or stalled gets nothing.
fn unsent_alert(err: &std::io::Error) -> Option<AlertDescription> {
    use std::io::ErrorKind as K;
    match tls_error(err) {
        Some(rustls::Error::InvalidMessage(_)) => Some(AlertDescription::DecodeError),
        Some(rustls::Error::InappropriateMessage { .. } | rustls::Error::InappropriateHandshakeMessage { .. }) => {
            Some(AlertDescription::UnexpectedMessage)
        }
        Some(_) => Some(AlertDescription::HandshakeFailure),
        None if is_oversized_message(err) => Some(AlertDescription::DecodeError),
        None if matches!(err.kind(), K::InvalidData | K::Other) => Some(AlertDescription::DecodeError),
        None => None,
    }
}

/// One session's byte counts, also added to the server's as they happen.
struct Counts<'a> {
    stats: &'a ServerStats,
    metrics: &'a ListenerMetrics,
    relayed: Relayed,
    closing: watch::Receiver<bool>,
    bytes_in: u64,
    bytes_out: u64,
}

impl Counts<'_> {
    fn received(&mut self, n: usize) {
        self.bytes_in += n as u64;
        self.stats.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
        self.metrics.moved(n as u64, 0);
    }
    /// Adds what a relay moved to this session's counts, once it has
    /// stopped (the server's were told as it went).
    fn settle_relayed(&mut self) {
        let moved = std::mem::take(&mut self.relayed);
        self.bytes_in += moved.to_target;
        self.bytes_out += moved.to_client;
    }
    fn sent(&mut self, n: usize) {
        self.bytes_out += n as u64;
        self.stats.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
        self.metrics.moved(0, n as u64);
    }
}

const CHUNK: usize = 256 * 1024;

/// How a session's data ended.
#[derive(PartialEq, Eq)]
enum End {
    /// The peer closed.
    PeerClosed,
    /// The server is shutting down.
    ServerClosing,
}

/// Reads until the peer's close or the server's shutdown. With `echo`, each
/// chunk goes back as soon as it arrives (a byte stream, not lines). The
/// buffer grows to `CHUNK` while data flows and shrinks while idle.
async fn drain<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, counts: &mut Counts<'_>, echo: bool) -> std::io::Result<End> {
    let mut buf = TrafficBuffer::new(CHUNK);
    loop {
        let data = tokio::select! {
            read = buf.read(stream) => read?,
            _ = counts.closing.wait_for(|c| *c) => return Ok(End::ServerClosing),
        };
        if data.is_empty() {
            return Ok(End::PeerClosed);
        }
        counts.received(data.len());
        if echo {
            stream.write_all(data).await?;
            stream.flush().await?;
            counts.sent(data.len());
        }
    }
}

/// Joins the session to a new connection to the target and relays until
/// both sides have finished; with a PROXY protocol, its header goes to the
/// target first. A target that cannot be reached closes the client's
/// session with one log line.
async fn forward_session(
    forward: &Forward,
    stream: &mut ServerStream,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    counts: &mut Counts<'_>,
) -> std::io::Result<()> {
    // On the heap: an open session's task keeps only the relay's state.
    let Some(target) = Box::pin(open_target(forward, stream, peer, local)).await else {
        return stream.shutdown().await;
    };
    // Reset unless the relay ends cleanly: the target must not take a cut request for a whole one.
    let mut target = CutOnDrop::new(target);
    let tally = relay_tally(counts.stats, counts.metrics, RelayEnd::Client);
    match relay(&mut *stream, target.stream(), &mut counts.relayed, &tally).await {
        Ok(()) => {
            target.ended();
            Ok(())
        }
        Err(e) => Err(match e.end {
            RelayEnd::Client => e.error,
            RelayEnd::Target => std::io::Error::new(e.error.kind(), TargetFailed { target: forward.target.to_string(), error: e.error }),
        }),
    }
}

/// Connects to the target and sends the PROXY header, if any; `None`
/// (after a log line) when either fails.
async fn open_target(forward: &Forward, stream: &ServerStream, peer: SocketAddr, local: Option<SocketAddr>) -> Option<TargetStream> {
    let mut target = match forward.target.connect(forward.connect_timeout).await {
        Ok(target) => target,
        Err(e) => {
            warn!(%peer, target = %forward.target, error = %e, "target unreachable: closing the client's session");
            return None;
        }
    };
    if let Some(ProxyProtocol::V2) = forward.proxy_protocol {
        let facts = TlsFacts::of(stream.get_ref().1);
        let sent = match local {
            Some(local) => match proxy_protocol::header(peer, local, &facts) {
                Ok(header) => target.write_all(&header).await,
                Err(e) => Err(e),
            },
            None => Err(std::io::Error::other("the listener's address is unknown")),
        };
        if let Err(e) = sent {
            warn!(%peer, target = %forward.target, error = %e, "PROXY header not sent: closing the client's session");
            return None;
        }
    }
    Some(target)
}

/// Echo; on the peer's close, pending data is flushed and close_notify sent.
async fn echo<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, counts: &mut Counts<'_>) -> std::io::Result<()> {
    drain(stream, counts, true).await?;
    stream.shutdown().await
}

/// Discard; on the peer's close, report the byte count, then close. A
/// server shutting down closes without a report: the count is not final.
async fn sink<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, counts: &mut Counts<'_>) -> std::io::Result<()> {
    if drain(stream, counts, false).await? == End::ServerClosing {
        return stream.shutdown().await;
    }
    let report = sink_report(counts.bytes_in);
    stream.write_all(report.as_bytes()).await?;
    counts.sent(report.len());
    stream.shutdown().await
}
