//! `sealtls tunnel`: plain local connections carried over TLS to a remote
//! server (ghostunnel's client mode). The remote is verified like
//! `connect` verifies, and must also match the --verify-* rules if any.
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use clap::Args;
use rustls::pki_types::ServerName;
use rustls::sign::CertifiedKey;
use sealtls_endpoint::client::{handshake, host_of, server_name_for, tcp_connect};
use sealtls_endpoint::explain::{explain, tls_error, Side};
use sealtls_endpoint::forward::{relay, CutOnDrop, RelayEnd, RelayError, Relayed, TargetStream};
use sealtls_endpoint::identity::Rules;
use sealtls_endpoint::metrics::{HandshakeFailure, ListenerMetrics, ServerMetrics};
use sealtls_endpoint::net::{accept_until, finish_within, SHUTDOWN_GRACE};
use sealtls_endpoint::server::{relay_tally, ServerStats};
use sealtls_endpoint::session::SessionInfo;
use sealtls_endpoint::settings::ClientSettings;
use sealtls_endpoint::TlsVersions;
use sealtls_failure::{Failure, FailureClass};
use sealtls_keyless::KeydFleet;
use sealtls_listen::{ListenSpec, Listener};
use tracing::{info, warn};

use crate::acl::VerifyFlags;
use crate::endpoints::KeydLinkFlags;
use crate::identity::{anchors, identity_from_files};
use crate::notify;
use crate::reload::{describe_anchors, describe_cert, reload_line, Reload, ReloadFlags, Reloader};
use crate::signals::shutdown_signal;
use crate::status::{KeydFleetHealth, StatusFlags};
use sealtls_status::prometheus_client::registry::Registry;
use sealtls_status::Listener as StatusListener;

/// Where the tunnel takes local connections: IP:PORT, unix:PATH, or a
/// socket systemd passed.
pub use sealtls_listen::ListenSpec as Listen;

/// Refuses an address off loopback unless `unsafe_listen`: whoever can
/// connect speaks to the remote with this tunnel's identity. A socket
/// systemd passes is the unit's choice.
fn check_local(listen: &ListenSpec, unsafe_listen: bool) -> Result<(), Failure> {
    match listen {
            ListenSpec::Tcp(addr) if !addr.ip().is_loopback() && !unsafe_listen => Err(Failure::new(
                FailureClass::Usage,
                format!(
                    "--listen {addr} is not a loopback address: anyone who can reach it would reach the target through this tunnel, with its client certificate"
                ),
                "listen on 127.0.0.1:PORT, [::1]:PORT or unix:PATH, or pass --unsafe-listen if every host that can reach it may use the tunnel",
            )),
            _ => Ok(()),
    }
}

#[derive(Args, Clone)]
pub struct TunnelArgs {
    /// Where local programs connect: 127.0.0.1:PORT, unix:PATH, or systemd[:NAME] for a socket systemd passed.
    #[arg(long)]
    pub listen: ListenSpec,
    /// The TLS server to carry connections to, HOST:PORT.
    #[arg(long)]
    pub target: String,
    /// CA certificates to trust for the target.
    #[arg(long, visible_alias = "ca-certificate")]
    pub ca: PathBuf,
    /// Our certificate chain, for a target that asks for one.
    #[arg(long, visible_alias = "certificate", requires = "key")]
    pub cert: Option<PathBuf>,
    /// Our private key (mode 0600).
    #[arg(long, visible_alias = "private-key", requires = "cert")]
    pub key: Option<PathBuf>,
    #[command(flatten)]
    pub keyless: KeydLinkFlags,
    /// With --keyd: the name our client certificate and key are kept under in keyd.
    #[arg(long, value_name = "NAME", requires = "keyd")]
    pub keyd_name: Option<String>,
    /// Name to verify the target's certificate against (default: the host of --target).
    #[arg(long)]
    pub server_name: Option<String>,
    /// ALPN protocols to offer, comma-separated (e.g. h2,http/1.1).
    #[arg(long, value_delimiter = ',')]
    pub alpn: Vec<String>,
    /// TLS versions: 1.2, 1.3 or any.
    #[arg(long, default_value = "any")]
    pub tls: TlsVersions,
    #[command(flatten)]
    pub verify: VerifyFlags,
    /// Allow a --listen address that is not loopback.
    #[arg(long)]
    pub unsafe_listen: bool,
    /// Seconds connecting to the target and the handshake may take, together.
    #[arg(long, default_value_t = 10, value_parser = crate::limits::positive_secs)]
    pub connect_timeout: u64,
    /// Seconds a connection may move no byte in either direction before it is closed (0: never).
    #[arg(long, default_value_t = 300, value_parser = crate::limits::secs)]
    pub idle_timeout: u64,
    /// Connections carried at once; more wait in the listen backlog.
    #[arg(long, default_value_t = 1000, value_parser = crate::limits::at_least_one::<usize>)]
    pub max_connections: usize,
    #[command(flatten)]
    pub status: StatusFlags,
    #[command(flatten)]
    pub reload: ReloadFlags,
}

/// What every carried connection needs.
struct Remote {
    target: String,
    name: ServerName<'static>,
    /// `name` for messages.
    name_text: String,
    /// Read once per connection; a reload replaces it for new connections.
    settings: RwLock<Arc<ClientSettings>>,
    /// Our certificate from keyd (--keyd), kept across reloads.
    keyd_identity: Option<Arc<CertifiedKey>>,
    /// The keyds that sign for `keyd_identity`.
    keyds: Option<Arc<KeydFleet>>,
    rules: Option<Arc<Rules>>,
    alpn: Vec<Vec<u8>>,
    connect_timeout: Duration,
    idle_timeout: Duration,
}

async fn accept(listener: &Listener) -> std::io::Result<(TargetStream, String)> {
    match listener {
        Listener::Tcp(l) => {
            let (tcp, peer) = l.accept().await?;
            let _ = tcp.set_nodelay(true);
            Ok((TargetStream::Tcp(tcp), peer.to_string()))
        }
        Listener::Unix(l) => {
            let (unix, _) = l.listener.accept().await?;
            Ok((TargetStream::Unix(unix), "unix".to_owned()))
        }
    }
}

impl Remote {
    fn settings(&self) -> Arc<ClientSettings> {
        self.settings.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl TunnelArgs {
    /// Our certificate and the trust anchors, from files (or our
    /// certificate from keyd, fetched once at start), checked with the rules.
    fn settings(&self, keyd_identity: Option<&Arc<CertifiedKey>>, rules: &Option<Arc<Rules>>) -> Result<ClientSettings, Failure> {
        let identity = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => Some(identity_from_files(cert, key)?),
            _ => keyd_identity.cloned(),
        };
        let settings = ClientSettings { trust: anchors(&self.ca)?, identity, versions: self.tls, legacy_v1_leaf: false, name_check: true };
        // Bad anchors are refused now rather than on the first connection.
        settings.config_with_rules(rules.clone()).map_err(Failure::config)?;
        Ok(settings)
    }

    async fn remote(&self) -> Result<Remote, Failure> {
        let (name_text, name) = server_name_for(&self.target, self.server_name.as_deref())?;
        let keyds = match (&self.cert, &self.key) {
            (Some(_), Some(_)) => None,
            _ => self.keyless.fleet()?,
        };
        let keyd_identity = match &keyds {
            None => None,
            Some(client) => {
                let key_name = self.keyd_name.as_deref().ok_or_else(|| {
                    Failure::new(
                        FailureClass::Usage,
                        "--keyd needs --keyd-name NAME",
                        "give the name our client key and certificate are kept under in keyd",
                    )
                })?;
                let identity = sealtls_keyless::client_identity(client.clone(), key_name).await.map_err(|e| {
                    Failure::new(
                        FailureClass::Config,
                        format!("cannot take our client certificate from keyd: {e}"),
                        format!("install it with `sealtls key put {key_name} KEYFILE --cert CHAIN`, or check --keyd"),
                    )
                })?;
                Some(identity)
            }
        };
        let rules = self.verify.rules();
        let rules = (!rules.is_empty()).then(|| Arc::new(rules));
        let settings = self.settings(keyd_identity.as_ref(), &rules)?;
        Ok(Remote {
            target: self.target.clone(),
            name,
            name_text,
            settings: RwLock::new(Arc::new(settings)),
            keyd_identity,
            keyds,
            rules,
            alpn: self.alpn.iter().filter(|p| !p.is_empty()).map(|p| p.as_bytes().to_vec()).collect(),
            connect_timeout: Duration::from_secs(self.connect_timeout),
            idle_timeout: Duration::from_secs(self.idle_timeout),
        })
    }
}

/// What reload lines show of a tunnel's settings: our certificate and the CAs.
fn describe(settings: &ClientSettings) -> (Option<String>, Option<String>) {
    (settings.identity.as_ref().and_then(|i| i.cert.first()).map(describe_cert), Some(describe_anchors(&settings.trust.certs)))
}

/// A running tunnel's client certificate and trust anchors, reloaded in place.
struct TunnelReload {
    name: String,
    args: TunnelArgs,
    remote: Arc<Remote>,
    /// The config file of the `[[tunnel]]` table it was described by, if any.
    config: Option<PathBuf>,
}

/// What of a tunnel's table a reload does not change (it reads the same
/// files again): an edit to any of it needs a restart.
fn fixed_settings(args: &TunnelArgs) -> String {
    format!(
        "{} {:?} {:?} {:?} {:?} {:?} {:?} {:?} {:?} {} {} {} {}",
        args.target,
        args.ca,
        args.cert,
        args.key,
        args.keyless.keyd,
        args.keyd_name,
        args.server_name,
        args.alpn,
        args.tls,
        args.verify.rules(),
        args.connect_timeout,
        args.idle_timeout,
        args.max_connections,
    )
}

impl Reload for TunnelReload {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn files(&self) -> Vec<PathBuf> {
        [Some(&self.args.ca), self.args.cert.as_ref(), self.args.key.as_ref()].into_iter().flatten().cloned().collect()
    }

    fn reload(&self) -> Result<Option<String>, Failure> {
        if let Some(path) = &self.config {
            // Found by its listen address, as serve's tables are.
            let config = crate::config::Config::load(path).map_err(Failure::config)?;
            let listen = self.args.listen.to_string();
            let table = config.tunnel.iter().find(|t| t.args.listen.to_string() == listen).ok_or_else(|| {
                Failure::new(
                    FailureClass::Config,
                    format!("{}: no [[tunnel]] table listens on {listen} any more", path.display()),
                    "restart to change which tunnels run; a reload reads the files a tunnel names again",
                )
            })?;
            if fixed_settings(&table.args) != fixed_settings(&self.args) {
                return Err(Failure::new(
                    FailureClass::Config,
                    format!("{}: {} (listen {listen}) was edited", path.display(), table.label),
                    "restart to apply it; a reload reads the files a tunnel names again (its certificate, key and CAs)",
                ));
            }
        }
        let new = self.args.settings(self.remote.keyd_identity.as_ref(), &self.remote.rules)?;
        let ((old_cert, old_ca), (new_cert, new_ca)) = (describe(&self.remote.settings()), describe(&new));
        let line =
            reload_line(&self.name, &[("client certificate", "fingerprint", old_cert, new_cert), ("CAs", "fingerprints", old_ca, new_ca)]);
        if line.is_some() {
            *self.remote.settings.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(new);
        }
        Ok(line)
    }
}

pub async fn tunnel(args: TunnelArgs) -> Result<(), Failure> {
    let shutdown = shutdown_signal();
    let reloader = Reloader::install(args.reload);
    let metrics = ServerMetrics::new();
    let prepared = prepare(&args, "", &metrics, None).await?;
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    prepared.show(&mut registry);
    let page = args.status.bind(registry).await?;
    let (_status, _running) = crate::status::start(page, vec![prepared.status_listener()]);
    let reloading = tokio::spawn(reloader.run(vec![prepared.reload_part()]));
    notify::ready();
    prepared.run(notify::stopping_after(shutdown)).await;
    reloading.abort();
    Ok(())
}

/// A tunnel with its listener bound and its remote checked, not yet carrying.
pub struct PreparedTunnel {
    /// Where local programs connect (the bound port when 0 was asked for).
    pub local: Listen,
    listener: Listener,
    remote: Arc<Remote>,
    max_connections: usize,
    /// Counted for the status page, as a server's are.
    stats: Arc<ServerStats>,
    metrics: ListenerMetrics,
    /// What SIGHUP reloads.
    reload: Arc<TunnelReload>,
}

/// Checks what `args` describe, loads the identity and trust, and binds the
/// listener: everything that can fail happens here. `name` (a config table
/// such as `[[tunnel]] #1`, or empty for the flags) goes into the log lines;
/// `metrics` counts its handshakes and bytes under its listen address.
pub async fn prepare(
    args: &TunnelArgs,
    name: &str,
    metrics: &Arc<ServerMetrics>,
    config: Option<&Path>,
) -> Result<PreparedTunnel, Failure> {
    check_local(&args.listen, args.unsafe_listen)?;
    host_of(&args.target)?;
    let remote = Arc::new(args.remote().await?);
    let listener = args.listen.bind("tunnel").await?;
    let local = match &listener {
        Listener::Tcp(l) => l.local_addr().map(Listen::Tcp).unwrap_or_else(|_| args.listen.clone()),
        Listener::Unix(_) => args.listen.clone(),
    };
    let verify = remote.rules.as_ref().map_or("chain and name".to_owned(), |r| format!("chain, name and {r}"));
    info!(listen = %local, name = (!name.is_empty()).then_some(name), target = %remote.target, server_name = %remote.name_text, %verify, "tunnel");
    let reload = Arc::new(TunnelReload {
        name: format!("tunnel {local}"),
        remote: remote.clone(),
        args: args.clone(),
        config: config.map(Path::to_owned),
    });
    Ok(PreparedTunnel {
        metrics: metrics.listener(local.to_string()),
        local,
        listener,
        remote,
        max_connections: args.max_connections,
        stats: Arc::default(),
        reload,
    })
}

impl PreparedTunnel {
    /// What SIGHUP reloads of it.
    pub fn reload_part(&self) -> Arc<dyn Reload> {
        self.reload.clone()
    }

    /// Adds its keyds' metrics, if its client key is in keyd.
    pub fn show(&self, registry: &mut Registry) {
        if let Some(keyds) = &self.remote.keyds {
            keyds.register(registry);
        }
    }

    /// How the status page describes it: the CAs it trusts for the target,
    /// its keyds, its counts.
    pub fn status_listener(&self) -> StatusListener {
        let listener = StatusListener::new(&self.local, "tunnel").with_anchors(&self.remote.settings().trust.certs);
        let listener = match &self.remote.keyds {
            Some(keyds) => listener.with_keyd(Arc::new(KeydFleetHealth(keyds.clone()))),
            None => listener,
        };
        let stats = self.stats.clone();
        listener.with_counts(move || crate::endpoints::counts(&stats))
    }

    /// Carries connections until `shutdown`, then gives the open ones
    /// `SHUTDOWN_GRACE` to finish and cuts the rest.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        let Self { listener, remote, max_connections, stats, metrics, .. } = self;
        let connections = accept_until(
            || accept(&listener),
            max_connections,
            shutdown,
            |(local, from), slot| {
                let (remote, stats, metrics) = (remote.clone(), stats.clone(), metrics.clone());
                stats.accepted.fetch_add(1, Relaxed);
                async move {
                    carry(local, from, &remote, &stats, &metrics).await;
                    drop(slot);
                }
            },
        )
        .await;
        if let Listener::Unix(socket) = &listener {
            socket.remove();
        }
        finish_within(connections, SHUTDOWN_GRACE).await;
        info!("stopped");
    }
}

/// Carries one local connection to the remote; one log line when it ends.
/// Bytes count as a server's do: received from the TLS peer, sent to it.
async fn carry(local: TargetStream, from: String, remote: &Remote, stats: &ServerStats, metrics: &ListenerMetrics) {
    let started = Instant::now();
    let target = remote.target.as_str();
    let opened = async {
        let (config, seen) = remote.settings().config_with_rules(remote.rules.clone()).map_err(Failure::config)?;
        let config = if remote.alpn.is_empty() {
            config
        } else {
            let mut config = Arc::unwrap_or_clone(config);
            config.alpn_protocols = remote.alpn.clone();
            Arc::new(config)
        };
        // One limit for connecting and the handshake together.
        let deadline = tokio::time::Instant::now() + remote.connect_timeout;
        let tcp = tcp_connect(target, remote.connect_timeout).await?;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let tls = handshake(tcp, remote.name.clone(), config, &seen, target, left).await?;
        Ok::<_, Failure>((tls, seen))
    };
    // On the heap: an open connection's task keeps only the relay's state.
    let (tls, seen) = match Box::pin(opened).await {
        Ok(opened) => opened,
        Err(why) => {
            stats.failed.fetch_add(1, Relaxed);
            metrics.handshake_failed(HandshakeFailure::Class(why.class));
            warn!(client = %from, %target, reason = %why.what, fix = %why.fix, "connection refused: the target could not be reached or verified");
            return;
        }
    };
    let info = SessionInfo::of(tls.get_ref().1);
    stats.handshakes.fetch_add(1, Relaxed);
    metrics.handshake_ok(&info, started.elapsed());
    let open = (stats.session(), metrics.session());
    let alpn = tls.get_ref().1.alpn_protocol().map(|p| String::from_utf8_lossy(p).into_owned()).unwrap_or_default();
    let activity = tls.get_ref().0.activity();
    // Reset unless the session ends cleanly (an abort at shutdown included): plain TCP has no
    // close_notify, and a reset is how the program learns that what it got may be incomplete.
    let mut local = CutOnDrop::new(local);
    let reset_note = match local.can_reset() {
        true => "the local connection was reset, so the program sees the cut",
        false => "a Unix socket has no reset: the program sees an ordinary end",
    };
    let mut moved = Relayed::default();
    // As a server counts: received from the TLS peer (here the target), sent to it.
    let tally = relay_tally(stats, metrics, RelayEnd::Target);
    let result = tokio::select! {
        r = relay(local.stream(), tls, &mut moved, &tally) => Some(r),
        _ = activity.idle_for(remote.idle_timeout) => None,
    };
    drop(open);
    let ms = started.elapsed().as_millis() as u64;
    let (bytes_up, bytes_down) = (moved.to_target, moved.to_client);
    match result {
        Some(Ok(())) => {
            local.ended();
            info!(client = %from, %target, version = %info.version, %alpn, bytes_up, bytes_down, duration_ms = ms, "connection closed")
        }
        Some(Err(RelayError { end: RelayEnd::Target, error })) => {
            let how = match error.kind() {
                ErrorKind::UnexpectedEof => Some("closed the connection without close_notify"),
                ErrorKind::ConnectionReset => Some("reset the connection"),
                ErrorKind::BrokenPipe => Some("closed the connection while we were still sending to it"),
                _ => None,
            };
            let why = match (tls_error(&error), how) {
                (None, Some(how)) => Failure::new(
                    FailureClass::Network,
                    format!("the server {target} {how}, in the middle of the session ({error})"),
                    format!("look at the server's log; {reset_note}"),
                ),
                _ => explain(&error, &seen, Side::Client, target),
            };
            warn!(client = %from, %target, bytes_up, bytes_down, duration_ms = ms, reason = %why.what, fix = %why.fix, "connection ended with an error");
        }
        Some(Err(RelayError { end: RelayEnd::Client, error })) => {
            warn!(client = %from, %target, bytes_up, bytes_down, duration_ms = ms, %error, "connection ended with an error: the local program's side failed; the server gets no close_notify");
        }
        None => {
            let idle_s = remote.idle_timeout.as_secs();
            warn!(client = %from, %target, bytes_up, bytes_down, duration_ms = ms, idle_s, note = reset_note, "connection closed: no bytes moved in either direction within the idle timeout");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_parse_and_only_loopback_is_safe() {
        for ok in ["127.0.0.1:8080", "[::1]:8080", "unix:/x", "systemd:tunnel"] {
            check_local(&ok.parse().unwrap(), false).unwrap();
        }
        let far: ListenSpec = "0.0.0.0:8080".parse().unwrap();
        let f = check_local(&far, false).unwrap_err();
        assert!(f.fix.contains("--unsafe-listen") && f.class == FailureClass::Usage, "{f}");
        check_local(&far, true).unwrap();
    }
}
