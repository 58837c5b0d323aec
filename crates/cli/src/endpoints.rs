//! `sealtls serve`, `connect` and `send`.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use clap::Args;
use rustls::server::ResolvesServerCert;
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls_pki_types::CertificateDer;
use sealtls_console::TlsMaterial;
use sealtls_endpoint::client::{connect as tls_connect, ClientSession, Connected};
use sealtls_endpoint::forward::{Forward, Target};
use sealtls_endpoint::identity::Rules;
use sealtls_endpoint::metrics::ServerMetrics;
use sealtls_endpoint::proxy_protocol::ProxyProtocol;
use sealtls_endpoint::server::{Mode, Server, ServerOptions, ServerStats, DEFAULT_IDLE_TIMEOUT};
use sealtls_endpoint::settings::{Anchors, ClientSettings, ServerSettings, ServerTls};
use sealtls_endpoint::transfer::{send_file, Expect};
use sealtls_endpoint::{ClientAuthMode, TlsVersions};
use sealtls_failure::{Failure, FailureClass};
use sealtls_keyless::{KeydClient, KeydFleet, Keyless, KeylessLimits};
use sealtls_listen::ListenSpec;
use sealtls_pki::{load_certs, load_key};
use sealtls_status::prometheus_client::registry::Registry;
use sealtls_status::Listener;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{info, warn};

use crate::acl::AllowFlags;
use crate::config::Config;
use crate::identity::{anchors, identity_from_files};
use crate::keyd::KeydFlags;
use crate::limits;
use crate::notify;
use crate::reload::{config_files, describe_anchors, describe_cert, reload_line, Reload, ReloadFlags, Reloader};
use crate::signals::shutdown_signal;
use crate::status::{KeydFleetHealth, StatusFlags};

/// The server's identity and trust, by file.
#[derive(Args, Clone)]
pub struct ServerFiles {
    /// Certificate chain, leaf first (PEM or DER); overrides [tls] srv_cert.
    #[arg(long, visible_alias = "certificate", requires = "key")]
    pub cert: Option<PathBuf>,
    /// Private key: PKCS#8, SEC1 or PKCS#1, PEM or DER, mode 0600; overrides [tls] srv_key.
    #[arg(long, visible_alias = "private-key", requires = "cert")]
    pub key: Option<PathBuf>,
    /// CA certificates whose client certificates are accepted; overrides [tls] ca_cert.
    #[arg(long, visible_alias = "ca-certificate")]
    pub ca: Option<PathBuf>,
    /// Take what the flags do not give from this file's [tls] table; without --cert or --keyd,
    /// run every [[serve]] table of the file instead, when it has any.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

#[derive(Args, Clone)]
pub struct ServeArgs {
    /// Address to listen on: IP:PORT, or systemd[:NAME] for a TCP socket systemd passed (socket activation).
    #[arg(long, default_value = "127.0.0.1:4433")]
    pub listen: ListenSpec,
    /// Port to listen on (overrides the port of an IP:PORT --listen).
    #[arg(short = 'p', long)]
    pub port: Option<u16>,
    #[command(flatten)]
    pub files: ServerFiles,
    #[command(flatten)]
    pub keyless: KeylessFlags,
    #[command(flatten)]
    pub allow: AllowFlags,
    #[command(flatten)]
    pub reload: ReloadFlags,
    /// Client certificates: none, optional or required (default: required with --ca).
    #[arg(long)]
    pub client_auth: Option<ClientAuthMode>,
    /// TLS versions: 1.2, 1.3 or any.
    #[arg(long, default_value = "any")]
    pub tls: TlsVersions,
    /// echo (bytes go back), handshake (close after the handshake) or sink (discard).
    #[arg(long, default_value = "echo")]
    pub mode: Mode,
    /// Forward each session to HOST:PORT or unix:PATH (a TLS termination proxy) instead of --mode.
    #[arg(long, conflicts_with = "mode")]
    pub target: Option<Target>,
    /// Allow a --target that is not on this machine (forwarded bytes cross the network in the clear).
    #[arg(long, requires = "target")]
    pub unsafe_target: bool,
    /// Send the --target a PROXY protocol header first: v2 (binary, with the SNI, ALPN, TLS version,
    /// cipher and client certificate CN as TLVs); v1 is not offered.
    #[arg(long, requires = "target", value_name = "v2")]
    pub proxy_protocol: Option<ProxyProtocol>,
    /// Application protocols offered to clients (ALPN), most preferred first, e.g. h2,http/1.1.
    #[arg(long, value_delimiter = ',', value_name = "PROTOCOLS")]
    pub alpn: Vec<String>,
    /// Seconds connecting to the --target may take.
    #[arg(long, default_value_t = 10, requires = "target", value_parser = limits::positive_secs)]
    pub connect_timeout: u64,
    /// Seconds a session may last however busy it is (0: no limit).
    #[arg(long, default_value_t = 0, value_parser = limits::secs)]
    pub max_conn_lifetime: u64,
    /// Sessions served at once; more wait in the listen backlog.
    #[arg(long, default_value_t = 10_000, value_parser = limits::at_least_one::<usize>)]
    pub max_connections: usize,
    /// Seconds a handshake may take before the connection is closed.
    #[arg(long, default_value_t = 10, value_parser = limits::positive_secs)]
    pub handshake_timeout: u64,
    /// Seconds a session may move no byte in either direction before it is closed (0: never).
    #[arg(long, default_value_t = DEFAULT_IDLE_TIMEOUT.as_secs(), value_parser = limits::secs)]
    pub idle_timeout: u64,
    #[command(flatten)]
    pub status: StatusFlags,
}

/// Warns at start about a leaf that clients will refuse, with the remedy.
fn warn_about_leaf(chain: &[rustls_pki_types::CertificateDer<'_>], origin: &Path) {
    let Some((subject, problems)) = sealtls_pki::inspect::leaf_problems(chain) else { return };
    for w in &problems {
        warn!(file = %origin.display(), subject = %subject, "clients will refuse this certificate: {w}");
    }
    if !problems.is_empty() {
        warn!("reissue it with `sealtls pki issue server --dir DIR --name NAME`, or with openssl pass `-extfile FILE -extensions SECTION` carrying subjectAltName and basicConstraints=CA:FALSE");
    }
}

/// What a server's TLS was built from, as reload lines show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Loaded {
    /// The leaf certificate served from files (none with keyd).
    pub leaf: Option<String>,
    /// The CAs whose client certificates are accepted.
    pub anchors: Option<String>,
    /// The rules a client certificate must match (none: any the CAs issued).
    pub rules: Option<String>,
    /// The leaf served from files and the client CAs, for the status page.
    pub shown: (Vec<CertificateDer<'static>>, Vec<CertificateDer<'static>>),
}

/// Builds a server's TLS from files, and from `material` (a config's
/// `[tls]`) for what the flags do not give. With `keyless`, certificates
/// and signatures come from keyd instead of files.
pub fn server_tls(
    files: &ServerFiles,
    material: Option<&TlsMaterial>,
    client_auth: Option<ClientAuthMode>,
    versions: TlsVersions,
    keyless: Option<Keyless>,
) -> Result<(ServerTls, Loaded), Failure> {
    let mut served = Vec::new();
    let identity: Arc<dyn ResolvesServerCert> = match (&keyless, &files.cert, &files.key, material.and_then(|m| m.server.clone())) {
        (Some(k), _, _, _) => Arc::new(k.clone()),
        (None, Some(cert), Some(key), _) => single(identity_from_files(cert, key)?, Some(cert), &mut served),
        (None, _, _, Some(from_config)) => single(from_config, None, &mut served),
        _ => {
            return Err(Failure::new(
                FailureClass::Usage,
                "no server certificate given",
                "pass --cert FILE --key FILE, --keyd unix:PATH, or --config FILE with [tls] srv_cert and srv_key",
            ))
        }
    };
    let client_ca = match &files.ca {
        Some(path) => Some(anchors(path)?),
        None => material.and_then(|m| m.ca.clone()),
    };
    let client_auth = client_auth.unwrap_or(if client_ca.is_some() { ClientAuthMode::Required } else { ClientAuthMode::None });
    let loaded = Loaded {
        leaf: served.first().map(describe_cert),
        anchors: client_ca.as_ref().map(|a| describe_anchors(&a.certs)),
        rules: None,
        shown: (served, client_ca.as_ref().map(|a| a.certs.clone()).unwrap_or_default()),
    };
    let settings = ServerSettings { identity, client_ca, client_auth, versions };
    let tls = ServerTls::new(settings).map_err(Failure::config)?;
    let tls = match (keyless, &files.cert, &files.key) {
        (Some(k), _, _) => keyless_tls(tls, k),
        // The files were checked above; an ECDSA key also serves TLS 1.2
        // clients that offer its curve only with another hash.
        (None, Some(cert), Some(key)) => {
            tls.with_tls12_ecdsa(load_certs(cert).map_err(Failure::config)?, &*load_key(key).map_err(Failure::config)?)
        }
        (None, _, _) => tls,
    };
    Ok((tls, loaded))
}

/// A server whose names are checked with keyd before the handshake and
/// whose signatures keyd makes, on a bounded set of blocking threads.
pub fn keyless_tls(tls: ServerTls, keyless: Keyless) -> ServerTls {
    let threads = keyless.limits().signing_threads;
    tls.with_gate(Arc::new(keyless)).with_signing_threads(threads)
}

/// One certificate for every client, checked for what clients will refuse;
/// `served` gets its leaf.
fn single(identity: Arc<CertifiedKey>, origin: Option<&Path>, served: &mut Vec<CertificateDer<'static>>) -> Arc<dyn ResolvesServerCert> {
    warn_about_leaf(&identity.cert, origin.unwrap_or(Path::new("[tls] srv_cert")));
    *served = crate::status::leaf(&identity.cert);
    Arc::new(SingleCertAndKey::from(Arc::unwrap_or_clone(identity)))
}

/// Where keyd is: one or more keyds holding the same keys.
#[derive(Args, Clone)]
pub struct KeydLinkFlags {
    /// Take certificates and signatures from keyd (unix:PATH or tls://HOST:PORT) instead of --cert/--key.
    /// Repeat it for several keyds holding the same keys: requests go to healthy ones, and one that
    /// fails is retried on another.
    #[arg(long, conflicts_with_all = ["cert", "key"])]
    pub keyd: Vec<String>,
    /// Milliseconds between PINGs to each keyd; a keyd found down gets no requests until it answers.
    #[arg(long, value_name = "MS", default_value_t = sealtls_keyless::DEFAULT_HEALTH_INTERVAL.as_millis() as u64, value_parser = clap::builder::RangedU64ValueParser::<u64>::new().range(50..=limits::MAX_SECS * 1000))]
    pub keyd_health_ms: u64,
    /// CA that issued keyd's certificate (with tls://).
    #[arg(long)]
    pub keyd_ca: Option<PathBuf>,
    /// Our client certificate for keyd's mutual TLS (with tls://).
    #[arg(long, requires = "keyd_key")]
    pub keyd_cert: Option<PathBuf>,
    /// Its private key.
    #[arg(long, requires = "keyd_cert")]
    pub keyd_key: Option<PathBuf>,
    /// Connections to keyd; requests are pipelined over them.
    #[arg(long, default_value_t = 4)]
    pub keyd_pool: usize,
}

/// A server signing through keyd instead of holding the key.
#[derive(Args, Clone)]
pub struct KeylessFlags {
    #[command(flatten)]
    pub link: KeydLinkFlags,
    /// Server names whose chains are kept from keyd; the least recently used is dropped beyond it.
    #[arg(long, value_name = "N", default_value_t = KeylessLimits::default().cache, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub keyless_cache: usize,
    /// Seconds a name keyd does not know is refused (unrecognized_name) without asking keyd again.
    #[arg(long, value_name = "SECS", default_value_t = KeylessLimits::default().miss_ttl.as_secs(), value_parser = limits::secs)]
    pub keyless_miss_ttl: u64,
    /// Handshakes waiting for keyd's signature at once, each on a blocking thread; more wait their turn.
    #[arg(long, value_name = "N", default_value_t = KeylessLimits::default().signing_threads, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1024))]
    pub keyless_signing_threads: usize,
}

impl KeylessFlags {
    /// The keyless resolver, if --keyd was given.
    pub fn keyless(&self) -> Result<Option<Keyless>, Failure> {
        let limits = KeylessLimits {
            cache: self.keyless_cache,
            miss_ttl: Duration::from_secs(self.keyless_miss_ttl),
            signing_threads: self.keyless_signing_threads,
            ..KeylessLimits::default()
        };
        Ok(self.link.fleet()?.map(|keyds| Keyless::with_limits(keyds, KEYLESS_REFRESH, limits)))
    }
}

impl KeydLinkFlags {
    /// The keyds, if --keyd was given.
    pub fn fleet(&self) -> Result<Option<Arc<KeydFleet>>, Failure> {
        if self.keyd.is_empty() {
            return Ok(None);
        }
        let clients = self
            .keyd
            .iter()
            .map(|spec| {
                let flags = KeydFlags { keyd: spec.clone(), keyd_ca: self.keyd_ca.clone() };
                let endpoint =
                    flags.endpoint(self.keyd_cert.as_deref().zip(self.keyd_key.as_deref()), "--keyd-cert FILE --keyd-key FILE")?;
                Ok(KeydClient::new(endpoint, self.keyd_pool, Duration::from_secs(5)))
            })
            .collect::<Result<Vec<_>, Failure>>()?;
        Ok(Some(KeydFleet::new(clients, Duration::from_millis(self.keyd_health_ms))))
    }
}

/// How old a cached chain may get before keyd is asked whether it changed.
pub const KEYLESS_REFRESH: Duration = Duration::from_secs(10);

/// The status page's name for what a server with its own certificate does.
fn mode_name(mode: Mode, forward: Option<&Forward>) -> String {
    match (forward, mode) {
        (Some(f), _) => format!("target {}", f.target),
        (None, Mode::Echo) => "echo".into(),
        (None, Mode::Sink) => "sink".into(),
        (None, Mode::Handshake) => "handshake".into(),
    }
}

/// Everything `serve` builds its TLS from, kept so that a reload builds
/// it again the same way.
struct ServeTls {
    files: ServerFiles,
    /// A config table's inherited `[tls]`; with `files.config`, read again on reload.
    material: Option<Arc<TlsMaterial>>,
    client_auth: Option<ClientAuthMode>,
    versions: TlsVersions,
    keyless: Option<Keyless>,
    alpn: Vec<Vec<u8>>,
    rules: Rules,
    /// The `[[serve]]` table this server was described by: a reload reads
    /// the table again (its files, client CAs and rules).
    table: Option<TableSource>,
}

/// Where a server's `[[serve]]` table is, and what a reload must find unchanged in it.
struct TableSource {
    config: PathBuf,
    /// The table's listen address: tables are found again by it, not by
    /// their place in the file, which an edit above them changes.
    listen: String,
    /// The settings a reload does not apply (see [`fixed_settings`]).
    fixed: String,
}

/// What of a table a running server cannot change on reload: a reload
/// that finds any of it edited is refused, so that no setting is applied
/// silently or half.
fn fixed_settings(args: &ServeArgs) -> String {
    format!(
        "{:?} {:?} {:?} {:?} {:?} {:?} {} {} {} {} {} {} {:?}",
        args.client_auth,
        args.tls,
        args.alpn,
        args.mode,
        args.target,
        args.proxy_protocol,
        args.unsafe_target,
        args.connect_timeout,
        args.max_conn_lifetime,
        args.max_connections,
        args.handshake_timeout,
        args.idle_timeout,
        args.keyless.link.keyd,
    )
}

impl ServeTls {
    fn new(args: &ServeArgs, material: Option<&TlsMaterial>, keyless: Option<Keyless>, table: Option<TableSource>) -> Self {
        Self {
            files: args.files.clone(),
            client_auth: args.client_auth,
            versions: args.tls,
            material: material.map(|m| Arc::new(m.clone())),
            keyless,
            alpn: args.alpn.iter().map(|p| p.clone().into_bytes()).collect(),
            rules: args.allow.rules(),
            table,
        }
    }

    fn build(&self) -> Result<(ServerTls, Loaded), Failure> {
        if let Some(source) = &self.table {
            let path = &source.config;
            let config = Config::load(path).map_err(Failure::config)?;
            let Some(table) = config.serve.iter().find(|t| t.args.listen.to_string() == source.listen) else {
                return Err(Failure::new(
                    FailureClass::Config,
                    format!("{}: no [[serve]] table listens on {} any more", path.display(), source.listen),
                    "a reload changes certificates, client CAs and client rules; restart to change which servers run",
                ));
            };
            if fixed_settings(&table.args) != source.fixed {
                return Err(Failure::new(
                    FailureClass::Config,
                    format!(
                        "{}: {} (listen {}) has edits a reload does not apply (tls, client_auth, alpn, mode or target, proxy_protocol, limits, keyd)",
                        path.display(),
                        table.label,
                        source.listen
                    ),
                    "restart to apply them; a reload changes certificates, client CAs and client rules",
                ));
            }
            return ServeTls::new(&table.args, table.material(&config.material), self.keyless.clone(), None).build();
        }
        let config = self.files.config.as_deref().map(Config::load).transpose().map_err(Failure::config)?;
        let material = config.as_ref().map(|c| c.material.clone()).or_else(|| self.material.clone());
        let (tls, mut loaded) = server_tls(&self.files, material.as_deref(), self.client_auth, self.versions, self.keyless.clone())?;
        loaded.rules = (!self.rules.is_empty()).then(|| self.rules.to_string());
        let tls = if self.alpn.is_empty() { tls } else { tls.with_alpn(self.alpn.clone()) };
        let tls = tls.with_client_rules(self.rules.clone()).map_err(|e| Failure::from_error(FailureClass::Usage, &e, "give --ca FILE"))?;
        Ok((tls, loaded))
    }
}

/// A running `serve`'s certificate and trust anchors, reloaded in place.
struct ServeReload {
    name: String,
    tls: ServeTls,
    server: Arc<Server>,
    loaded: Mutex<Loaded>,
    /// The leaf the status page shows.
    shown: Shown,
}

impl Reload for ServeReload {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn files(&self) -> Vec<PathBuf> {
        let f = &self.tls.files;
        let mut files: Vec<PathBuf> = [&f.cert, &f.key, &f.ca].into_iter().flatten().cloned().collect();
        files.extend(f.config.as_deref().map(config_files).unwrap_or_default());
        if let Some(source) = &self.tls.table {
            files.extend(config_files(&source.config));
        }
        files
    }

    fn reload(&self) -> Result<Option<String>, Failure> {
        let (tls, new) = self.tls.build()?;
        let mut old = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        if *old == new {
            return Ok(None);
        }
        self.server.replace_tls(tls);
        *self.shown.write().unwrap_or_else(|e| e.into_inner()) = new.shown.0.clone();
        let line = reload_line(
            &self.name,
            &[
                ("certificate", "fingerprint", old.leaf.clone(), new.leaf.clone()),
                ("client CAs", "fingerprints", old.anchors.clone(), new.anchors.clone()),
                ("client rules", "rules", old.rules.clone(), new.rules.clone()),
            ],
        );
        *old = new;
        Ok(line)
    }
}

/// The leaf certificate a status page shows, replaced on reload.
type Shown = Arc<RwLock<Vec<CertificateDer<'static>>>>;

/// `sealtls serve`: the server the flags describe or, with `--config F` and
/// no certificate flags, every `[[serve]]` table of F; one status page and
/// one reload for all. `given` (the flags on the command line) is checked:
/// a flag that the tables replace is refused rather than ignored.
pub async fn serve(args: ServeArgs, given: &[String]) -> Result<(), Failure> {
    let shutdown = shutdown_signal();
    let reloader = Reloader::install(args.reload);
    let config = args.files.config.as_deref().map(Config::load).transpose().map_err(Failure::config)?;
    let flags_give_certificate = args.files.cert.is_some() || !args.keyless.link.keyd.is_empty();
    let metrics = ServerMetrics::new();
    let prepared = match &config {
        Some(c) if !flags_give_certificate && !c.serve.is_empty() => {
            refuse_flags_the_tables_replace(given, args.files.config.as_deref().unwrap_or(Path::new("")))?;
            let mut all = Vec::new();
            for table in &c.serve {
                let source = args.files.config.as_deref();
                all.push(prepare_serve(&table.args, table.material(&c.material), &table.label, &metrics, source).await?);
            }
            all
        }
        _ => vec![prepare_serve(&args, config.as_ref().map(|c| &*c.material), "", &metrics, None).await?],
    };
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    for p in &prepared {
        p.show(&mut registry);
    }
    let page = args.status.or_config(config.as_ref().and_then(|c| c.status.as_ref()))?.bind(registry).await?;
    let shown = if page.is_some() { prepared.iter().map(PreparedServe::status_listener).collect() } else { Vec::new() };
    let (_status, _running) = crate::status::start(page, shown);
    let parts: Vec<Arc<dyn Reload>> = prepared.iter().map(PreparedServe::reload_part).collect();
    let reloading = tokio::spawn(reloader.run(parts));
    notify::ready();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let running: Vec<_> = prepared.into_iter().map(|p| tokio::spawn(p.run(crate::services::stopped(stop_rx.clone())))).collect();
    notify::stopping_after(shutdown).await;
    let _ = stop_tx.send(true);
    for r in running {
        let _ = r.await;
    }
    reloading.abort();
    info!("stopped");
    Ok(())
}

/// A TLS server bound to its address, not yet serving.
pub struct PreparedServe {
    /// Where it listens.
    pub local: SocketAddr,
    listener: tokio::net::TcpListener,
    server: Arc<Server>,
    keyless: Option<Keyless>,
    /// Its mode, leaf and client CAs, for the status page.
    mode: String,
    leaf: Shown,
    anchors: Vec<CertificateDer<'static>>,
    /// What SIGHUP reloads.
    reload: Arc<ServeReload>,
}

impl PreparedServe {
    /// Serves until `shutdown`.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        self.server.run(self.listener, shutdown).await;
    }

    /// What SIGHUP reloads of it.
    pub fn reload_part(&self) -> Arc<dyn Reload> {
        self.reload.clone()
    }

    /// Adds its keyds' metrics, if it signs through keyd.
    pub fn show(&self, registry: &mut Registry) {
        if let Some(k) = &self.keyless {
            k.keyds().register(registry);
        }
    }

    /// How the status page describes it.
    pub fn status_listener(&self) -> Listener {
        let listener = match &self.keyless {
            Some(k) => {
                let cache = k.clone();
                Listener::new(self.local, "keyless")
                    .with_certificates(move || cache.cached_leaves())
                    .with_keyd(Arc::new(KeydFleetHealth(k.keyds().clone())))
            }
            None => {
                let leaf = self.leaf.clone();
                Listener::new(self.local, self.mode.clone())
                    .with_certificates(move || leaf.read().unwrap_or_else(|e| e.into_inner()).clone())
                    .with_anchors(&self.anchors)
            }
        };
        let stats = self.server.clone();
        listener.with_counts(move || counts(&stats.stats))
    }
}

/// Checks what `args` describe, builds the TLS configuration and binds the
/// listener: everything that can fail happens here. `material` is a
/// config's `[tls]`; `name` (a config table such as `[[serve]] #1`, or
/// empty for the flags) goes into the log lines; `metrics` counts its handshakes;
/// `source` is the config file of a `[[serve]]` table, read again on reload.
pub async fn prepare_serve(
    args: &ServeArgs,
    material: Option<&TlsMaterial>,
    name: &str,
    metrics: &Arc<ServerMetrics>,
    source: Option<&Path>,
) -> Result<PreparedServe, Failure> {
    // The config table, for log lines; nothing for the flags.
    let table = (!name.is_empty()).then_some(name);
    let keyless = args.keyless.keyless()?;
    if let Some(bad) = args.alpn.iter().find(|p| p.is_empty() || p.len() > 255) {
        return Err(Failure::new(
            FailureClass::Usage,
            format!("--alpn: `{bad}` is not a protocol name (1 to 255 bytes)"),
            "give names separated by commas, e.g. --alpn h2,http/1.1",
        ));
    }
    let rules = args.allow.rules();
    let described_by =
        source.map(|config| TableSource { config: config.to_owned(), listen: args.listen.to_string(), fixed: fixed_settings(args) });
    let serve_tls = ServeTls::new(args, material, keyless.clone(), described_by);
    let (tls, loaded) = serve_tls.build()?;
    if tls.client_auth() == ClientAuthMode::Required {
        if rules.allows_all() {
            info!(name = table, "client certificates: any certificate the --ca CAs issued is let in (--allow-all)");
        } else if rules.is_empty() {
            info!(
                name = table,
                "client certificates: any certificate the --ca CAs issued is let in (no --allow-cn/-dns/-uri/-spki-sha256 rule)"
            );
        } else {
            info!(name = table, allow = %rules, "client certificates: only those matching an --allow rule are let in");
        }
    }
    let forward = match &args.target {
        Some(target) => {
            target.check_local(args.unsafe_target).await?;
            Some(Arc::new(Forward {
                target: target.clone(),
                connect_timeout: Duration::from_secs(args.connect_timeout),
                proxy_protocol: args.proxy_protocol,
            }))
        }
        None => None,
    };
    let mut spec = args.listen.clone();
    if let (ListenSpec::Tcp(addr), Some(port)) = (&mut spec, args.port) {
        addr.set_port(port);
    }
    let listener = spec.bind("serve").await?.into_tcp("serve")?;
    let local = listener.local_addr().map_err(|e| Failure::new(FailureClass::Network, e.to_string(), "retry"))?;
    let options = ServerOptions {
        mode: args.mode,
        handshake_timeout: Duration::from_secs(args.handshake_timeout),
        idle_timeout: Duration::from_secs(args.idle_timeout),
        max_connections: args.max_connections,
        max_lifetime: (args.max_conn_lifetime > 0).then(|| Duration::from_secs(args.max_conn_lifetime)),
        forward: forward.clone(),
        metrics: metrics.listener(local.to_string()),
        ..Default::default()
    };
    let server = Server::new(tls, options);
    let (leaf, anchors) = loaded.shown.clone();
    let leaf: Shown = Arc::new(RwLock::new(leaf));
    let reload = Arc::new(ServeReload {
        name: format!("serve {local}"),
        tls: serve_tls,
        server: server.clone(),
        loaded: Mutex::new(loaded),
        shown: leaf.clone(),
    });
    match &forward {
        Some(f) => {
            let proxy_protocol = f.proxy_protocol.map_or("none".into(), |p| p.to_string());
            info!(listen = %local, name = table, target = %f.target, tls = %args.tls, %proxy_protocol, "forwarding")
        }
        None => info!(listen = %local, name = table, mode = ?args.mode, tls = %args.tls, "serving"),
    }
    let mode = mode_name(args.mode, forward.as_deref());
    Ok(PreparedServe { local, listener, server, keyless, mode, leaf, anchors, reload })
}

/// A server's lifetime counters, for the status page.
/// With `--config F` serving F's `[[serve]]` tables, only the flags that
/// apply to all of them (the status page, the reload watch) may be given.
fn refuse_flags_the_tables_replace(given: &[String], config: &Path) -> Result<(), Failure> {
    const FOR_ALL: [&str; 4] = ["--config", "--status", "--unsafe-status", "--reload-interval"];
    let ignored: Vec<&str> = given.iter().map(String::as_str).filter(|f| !FOR_ALL.contains(f)).collect();
    if ignored.is_empty() {
        return Ok(());
    }
    Err(Failure::new(
        FailureClass::Usage,
        format!(
            "{} would have no effect: {} has [[serve]] tables, and each says what its server does",
            ignored.join(", "),
            config.display()
        ),
        "set it in the tables (e.g. listen, target, idle_timeout_secs), or give --cert/--key or --keyd to serve once from the flags",
    ))
}

/// A server's (or tunnel's) counts as the status page lists them.
pub(crate) fn counts(stats: &ServerStats) -> Vec<(&'static str, u64)> {
    use std::sync::atomic::Ordering::Relaxed;
    vec![
        ("accepted", stats.accepted.load(Relaxed)),
        ("handshakes", stats.handshakes.load(Relaxed)),
        ("handshakes_failed", stats.failed.load(Relaxed)),
        ("open", stats.open.load(Relaxed)),
        ("bytes_in", stats.bytes_in.load(Relaxed)),
        ("bytes_out", stats.bytes_out.load(Relaxed)),
    ]
}

/// Whom the client trusts and who it is.
#[derive(Args, Clone)]
pub struct ClientArgs {
    /// Server as HOST:PORT.
    target: Option<String>,
    /// Server host (with -p), as in mbedtls_script_client.
    #[arg(long)]
    server: Option<String>,
    /// Server port for --server.
    #[arg(short = 'p', long, default_value_t = 4433)]
    port: u16,
    /// Name to verify the certificate against (default: the host).
    #[arg(long)]
    server_name: Option<String>,
    /// CA certificates to trust (default: the system's).
    #[arg(long, visible_alias = "ca-certificate")]
    ca: Option<PathBuf>,
    /// Our certificate chain, for servers that ask for one.
    #[arg(long, visible_alias = "certificate", requires = "key")]
    cert: Option<PathBuf>,
    /// Our private key.
    #[arg(long, visible_alias = "private-key", requires = "cert")]
    key: Option<PathBuf>,
    /// TLS versions: 1.2, 1.3 or any.
    #[arg(long, default_value = "any")]
    tls: TlsVersions,
    /// Seconds to wait for the connection and handshake.
    #[arg(long, default_value_t = 10, value_parser = limits::positive_secs)]
    timeout: u64,
    /// Seconds without a byte moving in either direction before a transfer or relay is given up (0: never).
    #[arg(long, default_value_t = 60, value_parser = limits::secs)]
    idle_timeout: u64,
    /// Print JSON for scripts.
    #[arg(long)]
    json: bool,
}

impl ClientArgs {
    fn target(&self) -> Result<String, Failure> {
        match (&self.target, &self.server) {
            (Some(t), _) => Ok(t.clone()),
            (None, Some(host)) if host.contains(':') && !host.starts_with('[') => Ok(format!("[{host}]:{}", self.port)),
            (None, Some(host)) => Ok(format!("{host}:{}", self.port)),
            (None, None) => Err(Failure::new(FailureClass::Usage, "no server given", "give HOST:PORT, or --server HOST [-p PORT]")),
        }
    }

    fn settings(&self) -> Result<ClientSettings, Failure> {
        let trust = match &self.ca {
            Some(path) => anchors(path)?,
            None => Anchors::system().map_err(Failure::config)?,
        };
        let identity = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => Some(identity_from_files(cert, key)?),
            _ => None,
        };
        Ok(ClientSettings { trust, identity, versions: self.tls, legacy_v1_leaf: false, name_check: true })
    }

    async fn open(&self) -> Result<(String, Connected), Failure> {
        let target = self.target()?;
        let connected = tls_connect(&target, self.server_name.as_deref(), &self.settings()?, Duration::from_secs(self.timeout)).await?;
        Ok((target, connected))
    }
}

#[derive(Args)]
pub struct ConnectArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Send TEXT followed by one newline (none is added when TEXT already
    /// ends with one), print what comes back, and close.
    #[arg(long, value_name = "TEXT")]
    send: Option<String>,
}

/// The bytes `--send TEXT` puts on the wire (for `connect` and
/// `offload-client` alike): TEXT and one "\n", unless TEXT already ends with one.
pub(crate) fn send_line(text: &str) -> String {
    if text.ends_with('\n') {
        text.to_owned()
    } else {
        format!("{text}\n")
    }
}

fn print_session(s: &ClientSession) {
    eprintln!("connected to {} as {}", s.peer, s.server_name);
    eprintln!("  version             {}", s.info.version);
    eprintln!("  cipher suite        {}", s.info.suite);
    eprintln!("  key exchange        {}", s.info.group);
    eprintln!("  signature scheme    {}", s.signature_scheme);
    eprintln!("  client certificate  {}", s.client_certificate);
    for (i, subject) in s.info.peer_chain.iter().enumerate() {
        eprintln!("  peer chain #{i}       {subject}");
    }
    eprintln!("  verification        {}", s.verification);
}

pub async fn connect(args: ConnectArgs) -> Result<(), Failure> {
    let (target, Connected { mut stream, session, early_data }) = match args.client.open().await {
        Ok(c) => c,
        Err(f) if args.client.json => {
            println!("{}", serde_json::json!({ "ok": false, "error": f }));
            return Err(f);
        }
        Err(f) => return Err(f),
    };
    let peer_err =
        |e: std::io::Error| sealtls_endpoint::explain::explain(&e, &Default::default(), sealtls_endpoint::explain::Side::Client, &target);
    match args.send {
        Some(text) => {
            let text = send_line(&text);
            stream.write_all(text.as_bytes()).await.map_err(peer_err)?;
            stream.flush().await.map_err(peer_err)?;
            let mut received = early_data;
            let mut buf = vec![0u8; 16 * 1024];
            // An echo server returns exactly what was sent; stop then, at EOF, or after a quiet second.
            while received.len() < text.len() {
                match tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await {
                    Ok(Ok(0)) | Err(_) => break,
                    Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
                    Ok(Err(e)) => return Err(peer_err(e)),
                }
            }
            let _ = stream.shutdown().await;
            let received = String::from_utf8_lossy(&received).into_owned();
            if args.client.json {
                println!("{}", serde_json::json!({ "ok": true, "session": session, "received": received }));
            } else {
                print_session(&session);
                print!("{received}");
            }
        }
        None => {
            if args.client.json {
                println!("{}", serde_json::json!({ "ok": true, "session": session }));
            } else {
                print_session(&session);
            }
            tokio::io::stdout().write_all(&early_data).await.ok();
            let activity = stream.get_ref().0.activity();
            let idle = Duration::from_secs(args.client.idle_timeout);
            tokio::select! {
                r = relay_stdio(stream) => r.map_err(peer_err)?,
                _ = activity.idle_for(idle) => return Err(Failure::new(
                    FailureClass::Network,
                    format!("no byte moved to or from {target} for {} s", idle.as_secs()),
                    "raise --idle-timeout (0: never) for sessions that stay quiet longer",
                )),
            }
        }
    }
    Ok(())
}

/// Standard input to the server and the server's bytes to standard output.
/// The end of standard input is passed on (close_notify) and the server's
/// answer still read; the server's close ends it at once, whatever standard
/// input still holds.
async fn relay_stdio(stream: sealtls_endpoint::client::ClientStream) -> std::io::Result<()> {
    let (mut rd, mut wr) = tokio::io::split(stream);
    let upstream = async {
        tokio::io::copy(&mut tokio::io::stdin(), &mut wr).await?;
        wr.shutdown().await
    };
    let mut stdout = tokio::io::stdout();
    let downstream = async {
        tokio::io::copy(&mut rd, &mut stdout).await?;
        stdout.flush().await
    };
    tokio::pin!(upstream, downstream);
    tokio::select! {
        closed = &mut downstream => return closed,
        sent = &mut upstream => sent?,
    }
    downstream.await
}

#[derive(Args)]
pub struct SendArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The file to send.
    #[arg(long)]
    file: PathBuf,
    /// What the server does: echo (compare SHA-256 of what returns) or sink (compare the count it reports).
    #[arg(long, default_value = "echo", value_parser = ["echo", "sink"])]
    expect: String,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

pub async fn send(args: SendArgs) -> Result<(), Failure> {
    let (target, connected) = args.client.open().await?;
    let expect = if args.expect == "sink" { Expect::Sink } else { Expect::Echo };
    let show = !args.quiet && !args.client.json;
    let report = send_file(connected.stream, &args.file, expect, show, &target, Duration::from_secs(args.client.idle_timeout)).await?;
    if args.client.json {
        println!("{}", serde_json::json!({ "ok": true, "session": connected.session, "transfer": report }));
    } else {
        println!(
            "sent {} bytes in {:.2} s ({:.1} MiB/s) over {} {}; {} confirmed, sha256 {}",
            report.bytes_sent,
            report.seconds,
            report.mib_per_s,
            connected.session.info.version,
            connected.session.info.suite,
            if expect == Expect::Echo { "echo" } else { "count" },
            report.sha256
        );
    }
    Ok(())
}
