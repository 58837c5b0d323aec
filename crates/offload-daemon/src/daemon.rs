//! The daemon's socket: who may connect, which slot (badge) each client
//! gets, and an orderly shutdown.
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sealtls_endpoint::settings::{Anchors, ClientSettings, TlsVersions};
use sealtls_failure::{Failure, FailureClass};
use sealtls_listen::UnixSocket;
use sealtls_offload_proto::proto::Response;
use sealtls_offload_proto::Code;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::metrics::OffloadMetrics;
use crate::session::Session;
use crate::shared::Shared;
use crate::upstream::Dialer;

/// The first badge; TRENTOS numbers its RPC clients from 101.
pub const FIRST_BADGE: u32 = 101;
/// Default number of slots, as in TlsServer.
pub const DEFAULT_MAX_CLIENTS: usize = 8;
/// Default largest READ or WRITE, the size of TlsServer's dataport.
pub const DEFAULT_BUFFER_SIZE: usize = 16 * 1024;
/// Accepted range of buffer sizes.
pub const BUFFER_SIZES: std::ops::RangeInclusive<usize> = 256..=1024 * 1024;
/// How long sessions may take to say goodbye when the daemon stops.
const DRAIN_LIMIT: Duration = Duration::from_secs(6);

/// Which local users may use the daemon, by SO_PEERCRED.
#[derive(Clone, Debug, Default)]
pub struct Allow {
    /// Allowed user ids.
    pub uids: Vec<u32>,
    /// Allowed (primary) group ids.
    pub gids: Vec<u32>,
}

impl Allow {
    /// Whether a peer with these ids may connect. With both lists empty,
    /// anyone who can open the socket (mode 0660) may.
    pub fn admits(&self, uid: u32, gid: u32) -> bool {
        (self.uids.is_empty() && self.gids.is_empty()) || self.uids.contains(&uid) || self.gids.contains(&gid)
    }
}

/// How the daemon runs.
#[derive(Clone, Debug)]
pub struct OffloadSettings {
    /// The Unix socket to listen on.
    pub socket: PathBuf,
    /// The CAs every server must chain to.
    pub trust: Anchors,
    /// Number of slots.
    pub max_clients: usize,
    /// Who may connect.
    pub allow: Allow,
    /// Largest READ or WRITE in bytes.
    pub buffer_size: usize,
    /// Limit for a TCP connect.
    pub connect_timeout: Duration,
    /// Limit for a TLS handshake.
    pub handshake_timeout: Duration,
    /// Check server certificates against the host connected to.
    pub name_check: bool,
    /// How long a client may leave answers unread before it is dropped.
    pub answer_timeout: Duration,
}

impl OffloadSettings {
    /// Settings with the defaults for everything but the socket and trust.
    pub fn new(socket: PathBuf, trust: Anchors) -> Self {
        Self {
            socket,
            trust,
            max_clients: DEFAULT_MAX_CLIENTS,
            allow: Allow::default(),
            buffer_size: DEFAULT_BUFFER_SIZE,
            connect_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            name_check: true,
            answer_timeout: Duration::from_secs(10),
        }
    }
}

/// Which slots are taken, by index (badge minus [`FIRST_BADGE`]).
struct Badges(Mutex<Vec<bool>>);

impl Badges {
    fn claim(self: &Arc<Self>) -> Option<BadgeGuard> {
        let mut taken = self.0.lock().expect("not poisoned");
        let index = taken.iter().position(|t| !t)?;
        taken[index] = true;
        Some(BadgeGuard { badges: self.clone(), index })
    }
}

/// A slot in use; dropping it frees the slot.
struct BadgeGuard {
    badges: Arc<Badges>,
    index: usize,
}

impl BadgeGuard {
    fn badge(&self) -> u32 {
        FIRST_BADGE + self.index as u32
    }
}

impl Drop for BadgeGuard {
    fn drop(&mut self) {
        self.badges.0.lock().expect("not poisoned")[self.index] = false;
    }
}

/// The trust anchors of a running daemon, replaceable (hot reload): new
/// handshakes use the new ones, established sessions are left alone.
#[derive(Clone)]
pub struct TrustAnchors(Arc<Dialer>);

impl TrustAnchors {
    /// The anchors new handshakes verify servers against.
    pub fn current(&self) -> Anchors {
        self.0.tls().trust.clone()
    }

    /// Replaces the anchors; an empty set or one rustls refuses is refused
    /// and the old anchors stay.
    pub fn replace(&self, trust: Anchors) -> Result<(), Failure> {
        if trust.certs.is_empty() {
            return Err(Failure::new(
                FailureClass::Config,
                format!("{}: no trust anchors: the daemon could not verify any server", trust.origin),
                "give the CA that issued your servers' certificates, or system",
            ));
        }
        trust.root_store().map_err(Failure::config)?;
        let mut tls = (*self.0.tls()).clone();
        tls.trust = trust;
        self.0.replace_tls(tls);
        Ok(())
    }
}

/// A bound offload daemon.
pub struct Daemon {
    socket: UnixSocket,
    allow: Allow,
    shared: Arc<Shared>,
    badges: Arc<Badges>,
}

impl Daemon {
    /// Checks the settings and binds the socket (mode 0660). Must be called
    /// inside a tokio runtime.
    pub fn bind(settings: OffloadSettings) -> Result<Self, Failure> {
        Self::check(&settings)?;
        let socket = UnixSocket::bind(&settings.socket, "offload")?;
        Self::on(settings, socket)
    }

    /// Checks the settings and serves on `socket`, bound already (e.g. passed
    /// by systemd); `settings.socket` is then not used.
    pub fn bind_on(settings: OffloadSettings, socket: UnixSocket) -> Result<Self, Failure> {
        Self::check(&settings)?;
        Self::on(settings, socket)
    }

    fn check(settings: &OffloadSettings) -> Result<(), Failure> {
        if settings.trust.certs.is_empty() {
            return Err(Failure::new(
                FailureClass::Config,
                format!(
                    "no trust anchors (OS_ERROR_NOT_INITIALIZED, {}): the daemon cannot verify any server",
                    Code::NotInitialized.value()
                ),
                "give the CA that issued your servers' certificates with --trust CA.pem, or --trust system",
            ));
        }
        if settings.max_clients == 0 || settings.max_clients > 10_000 {
            return Err(Failure::new(
                FailureClass::Usage,
                format!("--max-clients {} is out of range", settings.max_clients),
                "give 1 to 10000",
            ));
        }
        if !BUFFER_SIZES.contains(&settings.buffer_size) {
            return Err(Failure::new(
                FailureClass::Usage,
                format!("buffer size {} is out of range", settings.buffer_size),
                format!("give {} to {} bytes", BUFFER_SIZES.start(), BUFFER_SIZES.end()),
            ));
        }
        Ok(())
    }

    fn on(settings: OffloadSettings, socket: UnixSocket) -> Result<Self, Failure> {
        let tls = ClientSettings {
            trust: settings.trust,
            identity: None,
            versions: TlsVersions::Any,
            legacy_v1_leaf: false,
            name_check: settings.name_check,
        };
        let dialer = Arc::new(Dialer::new(tls, settings.connect_timeout, settings.handshake_timeout));
        let shared = Arc::new(Shared {
            dialer,
            buffer_size: settings.buffer_size,
            answer_timeout: settings.answer_timeout,
            metrics: Default::default(),
        });
        let badges = Arc::new(Badges(Mutex::new(vec![false; settings.max_clients])));
        Ok(Self { socket, allow: settings.allow, shared, badges })
    }

    /// What the daemon counts, to be registered for Prometheus.
    pub fn metrics(&self) -> &OffloadMetrics {
        &self.shared.metrics
    }

    /// The socket's path.
    pub fn socket(&self) -> &Path {
        self.socket.path()
    }

    /// A handle that replaces the trust anchors of a running daemon.
    pub fn trust(&self) -> TrustAnchors {
        TrustAnchors(self.shared.dialer.clone())
    }

    /// Serves clients until `shutdown` resolves, then tells each client
    /// why it is cut off, closes their TLS sessions with close_notify and
    /// removes the socket.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let (stop, stopped) = watch::channel(false);
        let mut sessions = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
                accepted = self.socket.listener.accept() => match accepted {
                    Ok((stream, _)) => self.admit(stream, &stopped, &mut sessions),
                    Err(e) => {
                        warn!(error = %e, "accept failed; pausing");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
        let _ = stop.send(true);
        let _ = tokio::time::timeout(DRAIN_LIMIT, async { while sessions.join_next().await.is_some() {} }).await;
        // Closing sessions send close_notify from tasks of their own; give them a moment.
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.socket.remove();
    }

    fn admit(&self, stream: UnixStream, stopped: &watch::Receiver<bool>, sessions: &mut JoinSet<()>) {
        let cred = match stream.peer_cred() {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "cannot read the client's credentials (SO_PEERCRED); refused");
                sessions.spawn(refuse(stream, Code::OperationDenied));
                return;
            }
        };
        let (uid, gid, pid) = (cred.uid(), cred.gid(), cred.pid().unwrap_or(0));
        if !self.allow.admits(uid, gid) {
            warn!(uid, gid, pid, "client refused: its uid and gid are not in the allow lists");
            sessions.spawn(refuse(stream, Code::OperationDenied));
            return;
        }
        let Some(guard) = self.badges.claim() else {
            warn!(uid, gid, pid, "client refused: all slots are taken (OS_ERROR_OUT_OF_BOUNDS)");
            sessions.spawn(refuse(stream, Code::OutOfBounds));
            return;
        };
        let badge = guard.badge();
        info!(badge, uid, gid, pid, "client admitted");
        let session = Session::new(self.shared.clone(), badge);
        let stopped = stopped.clone();
        let in_use = self.shared.metrics.slot();
        sessions.spawn(async move {
            session.run(stream, stopped).await;
            drop(in_use);
            drop(guard);
            info!(badge, "slot freed");
        });
    }
}

/// Tells a client it has no slot, then closes its socket.
async fn refuse(mut stream: UnixStream, code: Code) {
    let mut frame = Vec::new();
    Response::Welcome { code, badge: 0, buffer_size: 0 }.encode(&mut frame);
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&frame)).await;
}
