//! keyd's listeners: a Unix socket (callers known by SO_PEERCRED) and,
//! when asked, TCP with mutual TLS for remote edges. Each connection reads
//! pipelined requests and answers them as they complete.
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::{CertificateDer, UnixTime};
use sealtls_custody_proto::{decode_frame, BodyError, ErrorCode, Op, Request, Response, HEADER_LEN, MAX_BODY};
use sealtls_failure::{Failure, FailureClass};
use sealtls_listen::{bind, UnixSocket};
use sealtls_pki::identity::PeerIdentity;
use sealtls_pki::inspect::CertFacts;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::authorize::Peer;
use crate::custody::{Caller, Custody};

/// Time a TLS client has to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Responses written in one go; a connection stops answering (and so
/// reading) until they are written.
const WRITE_BATCH: usize = 256 * 1024;
/// Bytes read from a connection at a time.
const READ_CHUNK: usize = 64 * 1024;

/// What keyd allows each client, so that one that floods, stalls or never
/// reads its answers cannot exhaust it (docs/custody-protocol.md, "Limits").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeydLimits {
    /// Connections served at once; more are told BUSY and closed.
    pub connections: usize,
    /// Requests of one connection on blocking threads or answered but not
    /// yet written; reading pauses beyond it.
    pub in_flight: usize,
    /// Time a started frame has to arrive whole.
    pub frame_timeout: Duration,
    /// Time a new connection has to send its first byte.
    pub idle_timeout: Duration,
}

impl Default for KeydLimits {
    fn default() -> Self {
        Self { connections: 1024, in_flight: 64, frame_timeout: Duration::from_secs(10), idle_timeout: Duration::from_secs(60) }
    }
}

/// The crypto provider of keyd's TLS listener: aws-lc-rs, made once.
fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER.get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider())).clone()
}

/// CA certificates that client certificates must chain to, and where they
/// came from (for messages).
#[derive(Clone, Debug)]
pub struct ClientCas {
    /// Where the certificates came from.
    pub origin: String,
    /// The CA certificates.
    pub certs: Vec<CertificateDer<'static>>,
}

impl ClientCas {
    /// The certificates as a rustls root store, naming the one that is refused.
    fn root_store(&self) -> Result<RootCertStore, Failure> {
        let mut store = RootCertStore::empty();
        for (i, cert) in self.certs.iter().enumerate() {
            store
                .add(cert.clone())
                .map_err(|e| setup_failure(format!("{}: certificate #{} cannot be used as a trust anchor: {e}", self.origin, i + 1)))?;
        }
        Ok(store)
    }
}

/// The TLS listener for remote edges.
pub struct TlsListen {
    /// Where to listen.
    pub addr: SocketAddr,
    /// keyd's own certificate chain and key (an ordinary server identity).
    pub identity: Arc<rustls::sign::CertifiedKey>,
    /// CAs whose client certificates may sign.
    pub client_ca: ClientCas,
}

/// How keyd listens.
pub struct KeydSettings {
    /// The Unix socket.
    pub socket: std::path::PathBuf,
    /// The TCP listener, if any.
    pub tls: Option<TlsListen>,
    /// CAs whose client certificates may also provision keys over TLS.
    pub admin_ca: Option<ClientCas>,
}

struct Tls {
    listener: TcpListener,
    acceptor: TlsAcceptor,
    admin: Option<Arc<dyn ClientCertVerifier>>,
}

/// A bound custody daemon.
pub struct Keyd {
    custody: Arc<Custody>,
    unix: UnixSocket,
    tls: Option<Tls>,
    own_uid: u32,
    limits: KeydLimits,
}

fn setup_failure(e: impl std::fmt::Display) -> Failure {
    Failure::new(FailureClass::Config, e.to_string(), "check the --tls-cert, --client-ca and --admin-ca files")
}

fn verifier(cas: &ClientCas) -> Result<Arc<dyn ClientCertVerifier>, Failure> {
    let roots = cas.root_store()?;
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider()).build().map_err(setup_failure)
}

impl Keyd {
    /// Binds the Unix socket (mode 0660) and the TLS listener. Must be
    /// called inside a tokio runtime.
    pub async fn bind(custody: Custody, settings: KeydSettings) -> Result<Self, Failure> {
        let unix = UnixSocket::bind(&settings.socket, "keyd")?;
        Self::bind_on(custody, settings, unix).await
    }

    /// As [`Keyd::bind`], on a Unix socket bound already (e.g. passed by
    /// systemd); `settings.socket` is then not used.
    pub async fn bind_on(custody: Custody, settings: KeydSettings, unix: UnixSocket) -> Result<Self, Failure> {
        let tls = match settings.tls {
            None => None,
            Some(t) => {
                // Edges and admins both present certificates; admins are recognized afterwards.
                let mut all = t.client_ca.clone();
                if let Some(admin) = &settings.admin_ca {
                    all.certs.extend(admin.certs.iter().cloned());
                    all.origin = format!("{} and {}", t.client_ca.origin, admin.origin);
                }
                let config = ServerConfig::builder_with_provider(provider())
                    .with_protocol_versions(&[&rustls::version::TLS13])
                    .map_err(setup_failure)?
                    .with_client_cert_verifier(verifier(&all)?)
                    .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(Arc::unwrap_or_clone(t.identity))));
                let admin = settings.admin_ca.as_ref().map(verifier).transpose()?;
                let listener = bind(t.addr).await?;
                Some(Tls { listener, acceptor: TlsAcceptor::from(Arc::new(config)), admin })
            }
        };
        let own_uid = rustix::process::geteuid().as_raw();
        Ok(Self { custody: Arc::new(custody), unix, tls, own_uid, limits: KeydLimits::default() })
    }

    /// Serves with these limits instead of the defaults.
    pub fn with_limits(mut self, limits: KeydLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The keys and grants it serves, shared with the running daemon (for
    /// metrics and for reloading the grants).
    pub fn custody(&self) -> Arc<Custody> {
        self.custody.clone()
    }

    /// The Unix socket's path.
    pub fn socket(&self) -> &Path {
        self.unix.path()
    }

    /// The TLS listener's address.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls.as_ref().and_then(|t| t.listener.local_addr().ok())
    }

    /// Serves until `shutdown` resolves, then closes every connection and removes the socket.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let limits = self.limits;
        let slots = Arc::new(Semaphore::new(limits.connections));
        let mut conns = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
                accepted = self.unix.listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let caller = match stream.peer_cred() {
                            Ok(cred) => Caller {
                                admin: cred.uid() == 0 || cred.uid() == self.own_uid,
                                who: format!("uid {} (pid {})", cred.uid(), cred.pid().unwrap_or(0)),
                                peer: Peer::Local { uid: cred.uid(), gid: cred.gid() },
                            },
                            Err(e) => {
                                warn!(error = %e, "cannot read a client's credentials (SO_PEERCRED); it may sign but not provision");
                                Caller { admin: false, who: "unknown local user".into(), peer: Peer::Unknown }
                            }
                        };
                        spawn_connection(&mut conns, &slots, stream, caller, self.custody.clone(), limits);
                    }
                    Err(e) => pause("unix", e).await,
                },
                accepted = accept_tcp(self.tls.as_ref()) => match accepted {
                    Ok((tcp, peer)) => {
                        let tls = self.tls.as_ref().expect("accepted on the TLS listener");
                        let (acceptor, admin, custody) = (tls.acceptor.clone(), tls.admin.clone(), self.custody.clone());
                        // The slot is taken before the handshake, so that handshakes count too.
                        let Ok(permit) = slots.clone().try_acquire_owned() else {
                            warn!(%peer, limit = limits.connections, "TLS connection refused: keyd serves at most this many connections");
                            continue;
                        };
                        conns.spawn(async move {
                            let _ = tcp.set_nodelay(true);
                            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                                Ok(Ok(s)) => s,
                                Ok(Err(e)) => return warn!(%peer, error = %e, "TLS client refused"),
                                Err(_) => return warn!(%peer, "TLS client did not finish its handshake in time"),
                            };
                            let caller = tls_caller(stream.get_ref().1, admin.as_deref(), peer);
                            let resumed = stream.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
                            info!(%peer, caller = %caller.who, admin = caller.admin, resumed, "TLS client connected");
                            serve(stream, caller, custody, limits).await;
                            drop(permit);
                        });
                    }
                    Err(e) => pause("tcp", e).await,
                },
            }
        }
        conns.shutdown().await;
        self.unix.remove();
        info!("keyd stopped");
    }
}

async fn accept_tcp(tls: Option<&Tls>) -> std::io::Result<(tokio::net::TcpStream, SocketAddr)> {
    match tls {
        Some(t) => t.listener.accept().await,
        None => std::future::pending().await,
    }
}

async fn pause(listener: &str, e: std::io::Error) {
    warn!(listener, error = %e, "accept failed; pausing");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

fn tls_caller(conn: &rustls::ServerConnection, admin: Option<&dyn ClientCertVerifier>, peer: SocketAddr) -> Caller {
    let certs = conn.peer_certificates().unwrap_or_default();
    let subject = certs.first().and_then(|c| CertFacts::from_der(c).ok()).map_or_else(|| "?".into(), |f| f.subject);
    let is_admin = match (admin, certs.split_first()) {
        (Some(v), Some((leaf, rest))) => v.verify_client_cert(leaf, rest, UnixTime::now()).is_ok(),
        _ => false,
    };
    // The chain was verified in the handshake; grants match what its leaf names.
    let identity = certs.first().and_then(|c| PeerIdentity::from_der(c).ok()).map_or(Peer::Unknown, |id| Peer::Certificate(Box::new(id)));
    Caller { admin: is_admin, who: format!("{subject} at {peer}"), peer: identity }
}

fn spawn_connection<S>(
    conns: &mut JoinSet<()>,
    slots: &Arc<Semaphore>,
    stream: S,
    caller: Caller,
    custody: Arc<Custody>,
    limits: KeydLimits,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    custody.metrics().connected(caller.admin);
    let Ok(permit) = slots.clone().try_acquire_owned() else {
        conns.spawn(busy(stream, caller, limits.connections));
        return;
    };
    conns.spawn(async move {
        serve(stream, caller, custody, limits).await;
        drop(permit);
    });
}

async fn busy<S: AsyncWrite + Unpin>(mut stream: S, caller: Caller, limit: usize) {
    warn!(caller = %caller.who, "connection refused: {limit} connections are open");
    let mut out = Vec::new();
    Response::refusal(ErrorCode::Busy, &format!("keyd serves at most {limit} connections"), "retry later").encode(0, &mut out);
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&out)).await;
}

/// How far `answer` got with the buffered frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// No whole frame is left: read more.
    NeedMore,
    /// The answers fill a write batch: write them, then go on.
    OutputFull,
    /// A slow request waits for one in flight to be written.
    WaitingSlot,
    /// Bytes that are not a frame: the connection closes.
    Close,
}

/// Answers one connection's requests until it closes or sends bytes that
/// are not frames. Quick answers are written by this task in batches;
/// slow ones come back from blocking threads through a channel, each
/// holding one of the connection's `in_flight` slots until it is written.
/// While answers wait to be written, or every slot is taken, the
/// connection is not read: a client that does not read its answers stops
/// being read, and keyd holds at most a read chunk, a frame and a write
/// batch for it.
async fn serve<S>(stream: S, caller: Caller, custody: Arc<Custody>, limits: KeydLimits)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let (slow_tx, mut slow_rx) = mpsc::unbounded_channel::<(Vec<u8>, OwnedSemaphorePermit)>();
    // At least one, or a slow request would wait for a slot forever.
    let in_flight = limits.in_flight.max(1);
    let slow = Arc::new(Semaphore::new(in_flight));
    let caller = Arc::new(caller);
    let opened = Instant::now();
    let mut buf: Vec<u8> = Vec::new();
    let mut out: Vec<u8> = Vec::new();
    let mut written: Vec<OwnedSemaphorePermit> = Vec::new();
    // When the first byte of the frame still incomplete in `buf` arrived.
    let mut partial_since: Option<Instant> = None;
    let (mut heard, mut eof, mut failed) = (false, false, false);
    loop {
        let before = buf.len();
        let step = if failed { Step::NeedMore } else { answer(&mut buf, &mut out, &custody, &caller, &slow, &slow_tx) };
        if buf.len() < before {
            // A frame completed: the time limit is for the next one.
            partial_since = None;
        }
        if step == Step::Close {
            failed = true;
        }
        while out.len() < WRITE_BATCH {
            let Ok((more, slot)) = slow_rx.try_recv() else { break };
            out.extend_from_slice(&more);
            written.push(slot);
        }
        if !out.is_empty() {
            if wr.write_all(&out).await.is_err() {
                break;
            }
            out.clear();
            written.clear();
        }
        if step == Step::OutputFull {
            continue;
        }
        let pending = step == Step::WaitingSlot;
        if (failed || (eof && !pending)) && slow.available_permits() == in_flight {
            break;
        }
        partial_since = match (buf.is_empty() || pending, partial_since) {
            (true, _) => None,
            (false, Some(t)) => Some(t),
            (false, None) => Some(Instant::now()),
        };
        let can_read = !eof && !failed && !pending;
        // A limit too long for the clock to add means no limit.
        let far = || Instant::now() + Duration::from_secs(86_400 * 365);
        let deadline = match partial_since {
            Some(t) => t.checked_add(limits.frame_timeout).unwrap_or_else(far),
            None if !heard => opened.checked_add(limits.idle_timeout).unwrap_or_else(far),
            None => far(),
        };
        buf.reserve(READ_CHUNK);
        tokio::select! {
            read = rd.read_buf(&mut buf), if can_read => match read {
                Ok(0) => eof = true,
                Ok(_) => heard = true,
                Err(e) => {
                    debug!(caller = %caller.who, error = %e, "read failed");
                    eof = true;
                }
            },
            Some((answer, slot)) = slow_rx.recv() => {
                out = answer;
                written.push(slot);
            }
            _ = tokio::time::sleep_until(deadline), if can_read => {
                if heard {
                    warn!(caller = %caller.who, timeout = ?limits.frame_timeout, "a request frame did not arrive whole in time; closing the connection");
                } else {
                    info!(caller = %caller.who, timeout = ?limits.idle_timeout, "the connection sent nothing in time; closing it");
                }
                failed = true;
                buf.clear();
            }
        }
    }
    let _ = wr.shutdown().await;
}

/// Answers the whole frames in `buf` into `out`, handing slow requests to
/// blocking threads, until the frames run out, `out` holds a write batch or
/// the connection's slots are all taken.
fn answer(
    buf: &mut Vec<u8>,
    out: &mut Vec<u8>,
    custody: &Arc<Custody>,
    caller: &Arc<Caller>,
    slow: &Arc<Semaphore>,
    slow_tx: &mpsc::UnboundedSender<(Vec<u8>, OwnedSemaphorePermit)>,
) -> Step {
    let mut used = 0;
    let step = loop {
        if out.len() >= WRITE_BATCH {
            break Step::OutputFull;
        }
        let (frame, n) = match decode_frame(&buf[used..]) {
            Ok(Some(f)) => f,
            Ok(None) => break Step::NeedMore,
            Err(e) => {
                warn!(caller = %caller.who, error = %e, "not a custody frame; closing the connection");
                Response::refusal(ErrorCode::BadRequest, &e.to_string(), "the connection is closed").encode(0, out);
                break Step::Close;
            }
        };
        let id = frame.id;
        let request = match Request::decode(&frame) {
            Ok(r) => r,
            Err(BodyError::UnknownKind(k)) => {
                used += n;
                Response::error(ErrorCode::UnknownOperation, format!("operation 0x{k:02x} is not defined in protocol version 1"))
                    .encode(id, out);
                continue;
            }
            Err(BodyError::BadValue("scheme", s)) => {
                used += n;
                Response::error(ErrorCode::UnsupportedScheme, format!("signature scheme 0x{s:04x} is not one of the protocol's"))
                    .encode(id, out);
                continue;
            }
            Err(e) => {
                used += n;
                let op = Op::from_u8(frame.kind).map_or_else(|| format!("op 0x{:02x}", frame.kind), |op| op.name().to_owned());
                Response::error(ErrorCode::BadRequest, format!("{op} request: {e}")).encode(id, out);
                continue;
            }
        };
        if custody.is_quick(&request) {
            used += n;
            custody.handle(request, caller).encode(id, out);
            continue;
        }
        // The frame stays in `buf` until a slot is free.
        let Ok(slot) = slow.clone().try_acquire_owned() else { break Step::WaitingSlot };
        used += n;
        let (custody, caller, tx) = (custody.clone(), caller.clone(), slow_tx.clone());
        tokio::task::spawn_blocking(move || {
            let mut answer = Vec::new();
            custody.handle(request, &caller).encode(id, &mut answer);
            let _ = tx.send((answer, slot));
        });
    };
    buf.drain(..used);
    // A frame above the limit is refused above, so `buf` holds at most one frame beyond what is paused.
    debug_assert!(step != Step::NeedMore || buf.len() <= HEADER_LEN + MAX_BODY);
    step
}
