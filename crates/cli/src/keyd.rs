//! `sealtls keyd` (the custody daemon) and `sealtls key` (provisioning).
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use rustls_pki_types::ServerName;
use sealtls_custody_proto::{message_parts, ErrorCode, ListEntry, Request, Response};
use sealtls_endpoint::settings::Anchors;
use sealtls_failure::{Failure, FailureClass, CHECK_FILE};
use sealtls_keyd::{ClientCas, Custody, Grants, Keyd, KeydLimits, KeydSettings, SealedFiles, TlsListen};
use sealtls_keyless::{KeydClient, KeydEndpoint, KeydError};
use sealtls_listen::ListenSpec;
use tracing::{info, warn};

use crate::identity::{anchors, identity_from_files};
use crate::notify;
use crate::reload::{Reload, ReloadFlags, Reloader};
use crate::signals::shutdown_signal;
use crate::status::StatusFlags;
use sealtls_pki::load_certs;
use sealtls_status::prometheus_client::registry::Registry;
use sealtls_status::Listener;

/// Where keyd keeps its keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    /// Files in the data directory sealed under the device secret.
    SealedFile,
    /// A PKCS#11 token (an HSM, or SoftHSM).
    Pkcs11,
}

/// What seals the store key of a sealed-file store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SealKind {
    /// A key derived from the device secret file (--device-key).
    File,
    /// A key made by keyd and sealed by the TPM (--tpm), kept in the data directory only as the TPM's sealed blob.
    Tpm,
}

#[derive(Args, Clone)]
pub struct KeydArgs {
    /// Data directory (mode 0700): sealed keys, and the socket unless --socket.
    #[arg(long, default_value = "sealtls-data/keyd")]
    pub data_dir: PathBuf,
    /// Unix socket for TLS servers and provisioning (default DATA_DIR/keyd.sock, mode 0660).
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Listen on unix:PATH or on a Unix socket systemd passed (systemd[:NAME], socket activation) instead of --socket.
    #[arg(long, conflicts_with = "socket", value_name = "unix:PATH|systemd[:NAME]")]
    pub listen: Option<ListenSpec>,
    #[command(flatten)]
    pub reload: ReloadFlags,
    /// Also listen on TCP with mutual TLS, for remote edges.
    #[arg(long, value_name = "ADDR:PORT", requires_all = ["tls_cert", "tls_key", "client_ca"])]
    pub listen_tls: Option<SocketAddr>,
    /// keyd's certificate chain for --listen-tls.
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    /// keyd's own private key for --listen-tls (mode 0600).
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
    /// CA whose client certificates may sign over --listen-tls.
    #[arg(long)]
    pub client_ca: Option<PathBuf>,
    /// CA whose client certificates may also provision keys over --listen-tls.
    #[arg(long)]
    pub admin_ca: Option<PathBuf>,
    /// TOML file of [[grant]] tables saying which caller (cn, dns, uri, spki_sha256, uid or gid) may sign for which domains; without grants every connected caller may sign for every domain.
    #[arg(long, value_name = "FILE")]
    pub authorize: Option<PathBuf>,
    /// Where keys are kept.
    #[arg(long, value_enum, default_value = "sealed-file")]
    pub backend: BackendKind,
    /// What seals the store key (with --backend sealed-file).
    #[arg(long, value_enum, default_value = "file")]
    pub seal: SealKind,
    /// The TPM for --seal tpm, as a tpm2-tss TCTI (swtpm:host=127.0.0.1,port=P for a software TPM).
    #[arg(long, value_name = "TCTI", default_value = sealtls_keyd::tpm::DEFAULT_TCTI)]
    pub tpm: String,
    /// With --seal tpm: bind the store key to these PCRs of the SHA-256 bank (e.g. 0,7); the store opens only while they hold the values they had when it was sealed.
    #[arg(long, value_name = "PCRS", value_delimiter = ',', value_parser = clap::value_parser!(u8).range(0..24))]
    pub tpm_pcrs: Vec<u8>,
    /// Device secret for sealed files (default /etc/sealtls/device.key for root, else ~/.config/sealtls/device.key).
    #[arg(long)]
    pub device_key: Option<PathBuf>,
    /// PKCS#11 module (with --backend pkcs11).
    #[arg(long, default_value = "/usr/lib/softhsm/libsofthsm2.so")]
    pub module: PathBuf,
    /// Token label (with --backend pkcs11).
    #[arg(long)]
    pub token: Option<String>,
    /// File holding the token's user PIN (mode 0600; with --backend pkcs11).
    #[arg(long)]
    pub pin_file: Option<PathBuf>,
    /// Connections served at once; more are answered BUSY and closed.
    #[arg(long, value_name = "N", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// Requests of one connection being signed or not yet written back; reading pauses beyond it.
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_in_flight: u32,
    /// Seconds a started request frame has to arrive whole.
    #[arg(long, value_name = "SECS", default_value_t = 10, value_parser = crate::limits::positive_secs)]
    pub frame_timeout: u64,
    /// Seconds a new connection has to send its first byte.
    #[arg(long, value_name = "SECS", default_value_t = 60, value_parser = crate::limits::positive_secs)]
    pub first_byte_timeout: u64,
    #[command(flatten)]
    pub status: StatusFlags,
}

impl KeydArgs {
    /// The connection limits the flags give.
    pub fn limits(&self) -> KeydLimits {
        KeydLimits {
            connections: self.max_connections as usize,
            in_flight: self.max_in_flight as usize,
            frame_timeout: Duration::from_secs(self.frame_timeout),
            idle_timeout: Duration::from_secs(self.first_byte_timeout),
        }
    }

    /// The socket path.
    pub fn socket(&self) -> PathBuf {
        match (&self.socket, &self.listen) {
            (Some(path), _) | (None, Some(ListenSpec::Unix(path))) => path.clone(),
            _ => self.data_dir.join("keyd.sock"),
        }
    }
}

/// Reads a token PIN from a file only its owner can read.
fn read_pin(path: &Path) -> Result<zeroize::Zeroizing<String>, Failure> {
    let (bytes, meta) = sealtls_pki::load::read_limited(path).map_err(Failure::config)?;
    sealtls_pki::files::check_secret_mode(path, &meta).map_err(Failure::config)?;
    let pin = zeroize::Zeroizing::new(String::from_utf8_lossy(&bytes).trim().to_string());
    if pin.is_empty() {
        return Err(Failure::new(
            FailureClass::Config,
            format!("{}: the PIN file is empty", path.display()),
            "write the token's user PIN into it",
        ));
    }
    Ok(pin)
}

/// Opens the store `args` name and loads its keys.
pub fn open_custody(args: &KeydArgs) -> Result<Custody, Failure> {
    let backend: Box<dyn sealtls_keyd::Backend> = match args.backend {
        BackendKind::SealedFile => match args.seal {
            SealKind::File => {
                let device_key = args.device_key.clone().unwrap_or_else(sealtls_keyd::device::default_path);
                Box::new(SealedFiles::open(&args.data_dir, &device_key).map_err(Failure::config)?)
            }
            SealKind::Tpm => {
                let mut pcrs = args.tpm_pcrs.clone();
                pcrs.sort_unstable();
                pcrs.dedup();
                let seal = sealtls_keyd::tpm::TpmSeal { tcti: args.tpm.clone(), pcrs };
                Box::new(SealedFiles::open_tpm(&args.data_dir, &seal).map_err(Failure::config)?)
            }
        },
        BackendKind::Pkcs11 => {
            let token = args.token.clone().ok_or_else(|| {
                Failure::new(
                    FailureClass::Usage,
                    "--backend pkcs11 needs --token LABEL",
                    "give the token's label (softhsm2-util --show-slots lists them)",
                )
            })?;
            let pin_file = args.pin_file.clone().ok_or_else(|| {
                Failure::new(
                    FailureClass::Usage,
                    "--backend pkcs11 needs --pin-file FILE",
                    "put the token's user PIN in a file with mode 0600",
                )
            })?;
            let pin = read_pin(&pin_file)?;
            // The token holds the keys; the data directory still holds the socket.
            sealtls_keyd::device::ensure_data_dir(&args.data_dir)
                .and_then(|()| sealtls_keyd::device::check_data_dir(&args.data_dir))
                .map_err(Failure::config)?;
            Box::new(sealtls_keyd::pkcs11::Token::open(&args.module, &token, &pin).map_err(Failure::config)?)
        }
    };
    Custody::new(backend).map_err(Failure::config)
}

fn client_cas(path: &Path) -> Result<ClientCas, Failure> {
    let Anchors { origin, certs } = anchors(path)?;
    Ok(ClientCas { origin, certs })
}

/// Binds keyd's listeners around `custody`.
pub async fn bind(custody: Custody, args: &KeydArgs) -> Result<Keyd, Failure> {
    let (ready, unusable) = custody.counts();
    info!(store = %custody.describe(), ready, unusable, "keys loaded");
    let tls = match (&args.listen_tls, &args.tls_cert, &args.tls_key, &args.client_ca) {
        (Some(addr), Some(cert), Some(key), Some(ca)) => {
            Some(TlsListen { addr: *addr, identity: identity_from_files(cert, key)?, client_ca: client_cas(ca)? })
        }
        _ => None,
    };
    let admin_ca = args.admin_ca.as_deref().map(client_cas).transpose()?;
    let custody = match &args.authorize {
        Some(path) => custody.with_grants(load_grants(path)?),
        None => custody,
    };
    match custody.grants() {
        Some(g) => info!(authorize = %g.origin, grants = g.grants.len(), "signing is limited to what each caller is granted"),
        None => warn!("no --authorize grants: any connected edge may sign for any domain"),
    }
    let settings = KeydSettings { socket: args.socket(), tls, admin_ca };
    let daemon = match &args.listen {
        Some(spec @ ListenSpec::Systemd(_)) => Keyd::bind_on(custody, settings, spec.bind("keyd").await?.into_unix("keyd")?).await?,
        Some(ListenSpec::Tcp(addr)) => {
            return Err(Failure::new(
                FailureClass::Usage,
                format!("--listen {addr}: keyd's --listen is its Unix socket"),
                "give --listen unix:PATH or systemd[:NAME]; remote edges use --listen-tls ADDR",
            ))
        }
        _ => Keyd::bind(custody, settings).await?,
    };
    Ok(daemon.with_limits(args.limits()))
}

fn load_grants(path: &Path) -> Result<Grants, Failure> {
    Grants::load(path).map_err(|p| Failure::from_error(FailureClass::Config, &p, CHECK_FILE))
}

/// Grants as reload lines show them.
fn describe_grants(grants: Option<&Grants>) -> String {
    match grants {
        Some(g) => format!("{} grants ({})", g.grants.len(), g.grants.iter().map(|g| g.to_string()).collect::<Vec<_>>().join("; ")),
        None => "no grants (every caller may sign for every domain)".to_owned(),
    }
}

/// keyd's `--authorize` grants, reloaded in place.
struct GrantsReload {
    name: String,
    file: PathBuf,
    custody: Arc<Custody>,
    loaded: Mutex<Option<Grants>>,
}

impl Reload for GrantsReload {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn files(&self) -> Vec<PathBuf> {
        vec![self.file.clone()]
    }

    fn reload(&self) -> Result<Option<String>, Failure> {
        let new = load_grants(&self.file)?;
        let mut old = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        if old.as_ref() == Some(&new) {
            return Ok(None);
        }
        let line = format!(
            "reloaded grants for {} from {}: {} -> {}",
            self.name,
            self.file.display(),
            describe_grants(old.as_ref().filter(|g| !g.grants.is_empty())),
            describe_grants(Some(&new).filter(|g| !g.grants.is_empty()))
        );
        self.custody.replace_grants(new.clone());
        *old = Some(new);
        Ok(Some(line))
    }
}

pub async fn keyd(args: KeydArgs) -> Result<(), Failure> {
    crate::keyd_child::exit_with_parent();
    let shutdown = shutdown_signal();
    let reloader = Reloader::install(args.reload);
    let daemon = bind(open_custody(&args)?, &args).await?;
    let name = format!("keyd {}", daemon.socket().display());
    // Without --authorize nothing is read from a file that could change.
    let parts: Vec<Arc<dyn Reload>> = match &args.authorize {
        Some(file) => {
            let custody = daemon.custody();
            let loaded = Mutex::new(custody.grants().map(|g| (*g).clone()).or_else(|| load_grants(file).ok()));
            vec![Arc::new(GrantsReload { name, file: file.clone(), custody, loaded })]
        }
        None => Vec::new(),
    };
    let reloading = tokio::spawn(reloader.run(parts));
    match daemon.tls_addr() {
        Some(tls) => info!(listen = %daemon.socket().display(), tls_listen = %tls, "keyd ready"),
        None => info!(listen = %daemon.socket().display(), "keyd ready"),
    }
    let mut registry = Registry::default();
    daemon.custody().register(&mut registry);
    let page = args.status.bind(registry).await?;
    let mut listeners = vec![Listener::new(format!("unix:{}", daemon.socket().display()), "keyd")];
    if let (Some(addr), Some(cert), Some(ca)) = (daemon.tls_addr(), &args.tls_cert, &args.client_ca) {
        let leaf = crate::status::leaf(&load_certs(cert).map_err(Failure::config)?);
        let anchors = load_certs(ca).map_err(Failure::config)?;
        listeners.push(Listener::new(addr, "keyd").with_certificates(move || leaf.clone()).with_anchors(&anchors));
    }
    let (_status, _running) = crate::status::start(page, listeners);
    notify::ready();
    daemon.run(notify::stopping_after(shutdown)).await;
    reloading.abort();
    Ok(())
}

/// How to reach keyd.
#[derive(Args, Clone)]
pub struct KeydFlags {
    /// keyd as unix:PATH or tls://HOST:PORT.
    #[arg(long, default_value = "unix:sealtls-data/keyd/keyd.sock")]
    pub keyd: String,
    /// CA that issued keyd's TLS certificate (with tls://).
    #[arg(long)]
    pub keyd_ca: Option<PathBuf>,
}

impl KeydFlags {
    /// The endpoint, presenting `identity` (certificate, key) over TLS.
    pub fn endpoint(&self, identity: Option<(&Path, &Path)>, cert_flags: &str) -> Result<KeydEndpoint, Failure> {
        if let Some(path) = self.keyd.strip_prefix("unix:") {
            return Ok(KeydEndpoint::Unix(PathBuf::from(path)));
        }
        let Some(addr) = self.keyd.strip_prefix("tls://") else {
            return Err(Failure::new(
                FailureClass::Usage,
                format!("--keyd {:?} is neither unix:PATH nor tls://HOST:PORT", self.keyd),
                "for example --keyd unix:sealtls-data/keyd/keyd.sock",
            ));
        };
        let host = sealtls_endpoint::client::host_of(addr)?;
        let server_name = ServerName::try_from(host.to_string())
            .map_err(|e| Failure::new(FailureClass::Usage, format!("--keyd {addr}: {e}"), "give tls://HOST:PORT"))?;
        let ca = self.keyd_ca.as_deref().ok_or_else(|| {
            Failure::new(FailureClass::Usage, "--keyd tls://... needs --keyd-ca", "give the CA that issued keyd's certificate")
        })?;
        let (cert, key) = identity
            .ok_or_else(|| Failure::new(FailureClass::Usage, "keyd over TLS needs a client certificate", format!("give {cert_flags}")))?;
        let config = sealtls_endpoint::client::keyd_client_config(ca, cert, key)?;
        Ok(KeydEndpoint::Tls { addr: addr.to_string(), server_name, config: Arc::new(config) })
    }
}

#[derive(Args, Clone)]
pub struct AdminFlags {
    /// keyd as unix:PATH or tls://HOST:PORT; repeat it to run the command on every keyd of a fleet.
    #[arg(long, default_value = "unix:sealtls-data/keyd/keyd.sock")]
    keyd: Vec<String>,
    /// CA that issued keyd's TLS certificate (with tls://).
    #[arg(long)]
    keyd_ca: Option<PathBuf>,
    /// Admin client certificate (with tls://), issued by keyd's --admin-ca.
    #[arg(long, requires = "admin_key")]
    admin_cert: Option<PathBuf>,
    /// Its private key.
    #[arg(long, requires = "admin_cert")]
    admin_key: Option<PathBuf>,
    /// Print JSON for scripts.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
pub enum KeyCommand {
    /// Install a key with its certificate chain (or a chain for a key made by `gen`).
    Put {
        /// Domain, e.g. www.example.com or *.example.com.
        domain: String,
        /// Private key (PKCS#8, SEC1 or PKCS#1, PEM or DER, mode 0600); leave out to attach a chain to a generated key.
        keyfile: Option<PathBuf>,
        /// Certificate chain, leaf first.
        #[arg(long)]
        cert: PathBuf,
        #[command(flatten)]
        admin: AdminFlags,
    },
    /// Print "Key found" (exit 0) or "Key not found" (exit 1).
    Has {
        /// Domain.
        domain: String,
        #[command(flatten)]
        admin: AdminFlags,
    },
    /// Remove a domain's key.
    Rm {
        /// Domain.
        domain: String,
        #[command(flatten)]
        admin: AdminFlags,
    },
    /// List domains, key types and certificate expiry.
    Ls {
        #[command(flatten)]
        admin: AdminFlags,
    },
    /// Generate a key inside keyd and print a CSR for it.
    Gen {
        /// Domain.
        domain: String,
        /// ecdsa-p256, ecdsa-p384, ed25519, rsa2048, rsa3072 or rsa4096.
        #[arg(long, default_value = "ecdsa-p256")]
        key_type: String,
        /// Write the CSR here instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
        /// With several --keyd: they share one PKCS#11 token, so the key is generated once, by the first.
        #[arg(long)]
        shared_token: bool,
        #[command(flatten)]
        admin: AdminFlags,
    },
}

impl AdminFlags {
    /// Each keyd named, with a client for it.
    fn clients(&self) -> Result<Vec<(String, Arc<KeydClient>)>, Failure> {
        let identity = self.admin_cert.as_deref().zip(self.admin_key.as_deref());
        self.keyd
            .iter()
            .map(|spec| {
                let flags = KeydFlags { keyd: spec.clone(), keyd_ca: self.keyd_ca.clone() };
                let endpoint = flags.endpoint(identity, "--admin-cert FILE --admin-key FILE")?;
                Ok((spec.clone(), KeydClient::new(endpoint, 1, Duration::from_secs(60))))
            })
            .collect()
    }
}

/// Sends `request` to every keyd at once; each answers for itself, in the order given.
async fn on_each(clients: &[(String, Arc<KeydClient>)], request: &Request) -> Vec<(String, Result<Response, Failure>)> {
    let mut set = tokio::task::JoinSet::new();
    for (i, (name, client)) in clients.iter().enumerate() {
        let (name, client, request) = (name.clone(), client.clone(), request.clone());
        set.spawn(async move { (i, name, call(&client, request).await) });
    }
    let mut results = Vec::with_capacity(clients.len());
    while let Some(Ok(done)) = set.join_next().await {
        results.push(done);
    }
    results.sort_by_key(|(i, _, _)| *i);
    results.into_iter().map(|(_, name, r)| (name, r)).collect()
}

/// Prints each keyd's outcome on its own line; fails if any failed.
fn report_each(
    results: Vec<(String, Result<Response, Failure>)>,
    json: bool,
    done: impl Fn(Response) -> Result<String, Failure>,
) -> Result<(), Failure> {
    let total = results.len();
    let mut failed = Vec::new();
    for (name, result) in results {
        match result.and_then(&done) {
            Ok(line) if total == 1 => println!("{line}"),
            // One JSON object per keyd, naming it.
            Ok(line) if json => {
                let mut answer = serde_json::from_str::<serde_json::Value>(&line).unwrap_or(serde_json::Value::String(line));
                if let Some(fields) = answer.as_object_mut() {
                    fields.insert("keyd".into(), name.clone().into());
                }
                println!("{answer}");
            }
            Ok(line) => println!("{name}: {line}"),
            Err(f) if total == 1 => return Err(f),
            Err(f) => {
                match json {
                    true => println!("{}", serde_json::json!({"keyd": name, "error": f.what, "fix": f.fix})),
                    false => println!("{name}: failed: {} (fix: {})", f.what, f.fix),
                }
                failed.push((name, f.class));
            }
        }
    }
    let Some((_, first)) = failed.first() else { return Ok(()) };
    // One cause everywhere keeps its exit status; mixed causes are the fleet's.
    let class = if failed.iter().all(|(_, c)| c == first) { *first } else { FailureClass::Network };
    let names: Vec<&str> = failed.iter().map(|(n, _)| n.as_str()).collect();
    Err(Failure::new(
        class,
        format!("{} of {total} keyds failed: {}", failed.len(), names.join(", ")),
        "see each keyd's line above; run the command again for those keyds once they are fixed",
    ))
}

/// A keyd failure in words, with the exit code of its kind.
pub fn keyd_failure(e: KeydError) -> Failure {
    match e {
        KeydError::Unreachable { .. } | KeydError::Timeout(..) => {
            Failure::new(FailureClass::Network, e.to_string(), "start keyd (sealtls keyd or sealtls up), or point --keyd at it")
        }
        KeydError::Refused { code: ErrorCode::Forbidden, message } => {
            Failure::new(FailureClass::Rejected, format!("keyd refused: {message}"), "use an admin identity")
        }
        KeydError::Refused { code, message } => {
            let (what, fix) = message_parts(&message);
            let fallback = match code {
                ErrorCode::KeyNotFound => "list what keyd holds with `sealtls key ls`",
                ErrorCode::InvalidInput => "check the domain and files given",
                _ => "see keyd's log",
            };
            Failure::new(FailureClass::Config, format!("keyd refused ({code}): {what}"), fix.unwrap_or(fallback))
        }
        KeydError::Tls { endpoint, failure } => {
            let fix = match failure.class {
                FailureClass::PeerNotTrusted => "give --keyd-ca the CA that issued keyd's --tls-cert, and connect by a name that certificate holds",
                FailureClass::Rejected => "keyd does not accept our certificate: give --admin-cert/--admin-key (or --keyd-cert/--keyd-key) one that keyd's --admin-ca (or --client-ca) issued",
                _ => failure.fix.as_str(),
            };
            Failure::new(failure.class, format!("keyd at {endpoint}: {}", failure.what), fix)
        }
        KeydError::Runtime => Failure::new(FailureClass::Config, e.to_string(), "report this as a bug"),
    }
}

async fn call(client: &KeydClient, request: Request) -> Result<Response, Failure> {
    client.call(&request).await.map_err(keyd_failure)
}

fn unexpected(r: Response) -> Failure {
    Failure::new(FailureClass::Protocol, format!("keyd answered with {r:?}"), "check that sealtls and keyd are the same version")
}

fn expiry(t: Option<i64>) -> String {
    t.and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|d| d.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| "-".into())
}

fn print_list(entries: &[ListEntry], json: bool) -> Result<(), Failure> {
    use std::fmt::Write;
    if json {
        let rows: Vec<_> = entries
            .iter()
            .map(|e| {
                serde_json::json!({
                    "domain": e.domain, "key_type": e.key_type, "key_id": e.key_id.to_string(),
                    "not_after": e.not_after, "location": e.location, "status": e.status,
                })
            })
            .collect();
        return crate::print_report(&format!("{}\n", serde_json::Value::Array(rows)));
    }
    let mut out = format!("{:<32} {:<12} {:<22} {:<18} STATUS\n", "DOMAIN", "KEY", "EXPIRES", "KEY ID");
    for e in entries {
        let id = e.key_id.to_string();
        let _ = writeln!(out, "{:<32} {:<12} {:<22} {:<18} {}", e.domain, e.key_type, expiry(e.not_after), &id[..16], e.status);
    }
    crate::print_report(&out)
}

pub async fn key(cmd: KeyCommand) -> Result<(), Failure> {
    match cmd {
        KeyCommand::Put { domain, keyfile, cert, admin } => {
            let chain = sealtls_pki::load_certs(&cert).map_err(Failure::config)?;
            let key = match &keyfile {
                Some(path) => zeroize::Zeroizing::new(sealtls_pki::load_key(path).map_err(Failure::config)?.secret_der().to_vec()),
                None => zeroize::Zeroizing::new(Vec::new()),
            };
            // Each keyd seals the key under its own device secret or TPM.
            let request = Request::Put { domain: domain.clone(), key, chain: chain.iter().map(|c| c.to_vec()).collect() };
            report_each(on_each(&admin.clients()?, &request).await, admin.json, |r| match r {
                Response::Stored(id) if admin.json => Ok(serde_json::json!({"domain": domain, "key_id": id.to_string()}).to_string()),
                Response::Stored(id) => Ok(format!("Installed {domain} (key id {id})")),
                r => Err(unexpected(r)),
            })?;
        }
        KeyCommand::Has { domain, admin } => {
            let results = on_each(&admin.clients()?, &Request::Has(domain.clone())).await;
            let all = results.iter().all(|(_, r)| matches!(r, Ok(Response::Found(true))));
            report_each(results, admin.json, |r| match r {
                Response::Found(found) if admin.json => Ok(serde_json::json!({"domain": domain, "found": found}).to_string()),
                Response::Found(true) => Ok("Key found".into()),
                Response::Found(false) => Ok("Key not found".into()),
                r => Err(unexpected(r)),
            })?;
            if !all {
                std::process::exit(1);
            }
        }
        KeyCommand::Rm { domain, admin } => {
            report_each(on_each(&admin.clients()?, &Request::Remove(domain.clone())).await, admin.json, |r| match r {
                Response::Removed if admin.json => Ok(serde_json::json!({"domain": domain, "removed": true}).to_string()),
                Response::Removed => Ok(format!("Removed {domain}")),
                r => Err(unexpected(r)),
            })?;
        }
        KeyCommand::Ls { admin } => {
            let clients = admin.clients()?;
            let mut results = on_each(&clients, &Request::List).await;
            if results.len() == 1 {
                match results.remove(0).1? {
                    Response::List(entries) => print_list(&entries, admin.json)?,
                    r => return Err(unexpected(r)),
                }
            } else {
                print_fleet_list(results, admin.json)?;
            }
        }
        KeyCommand::Gen { domain, key_type, out, shared_token, admin } => {
            if admin.keyd.len() > 1 && !shared_token {
                return Err(Failure::new(
                    FailureClass::Usage,
                    format!("`key gen` on {} keyds would make {} different keys for {domain}", admin.keyd.len(), admin.keyd.len()),
                    "generate on one keyd and copy nothing: put a key made outside with `key put ... --keyd A --keyd B`; \
                     or, if these keyds share one PKCS#11 token, pass --shared-token",
                ));
            }
            // With a shared token the first keyd makes the key; the others see it on the token.
            let client = admin.clients()?.remove(0).1;
            match call(&client, Request::Generate { domain: domain.clone(), key_type }).await? {
                Response::Csr(der) => {
                    let pem = pem_csr(&der);
                    if admin.json {
                        let written = match &out {
                            Some(path) => {
                                std::fs::write(path, &pem)
                                    .map_err(|e| Failure::new(FailureClass::Config, format!("{}: {e}", path.display()), CHECK_FILE))?;
                                Some(path.display().to_string())
                            }
                            None => None,
                        };
                        println!("{}", serde_json::json!({"domain": domain, "csr_pem": pem, "written_to": written}));
                        return Ok(());
                    }
                    match out {
                        Some(path) => {
                            std::fs::write(&path, pem)
                                .map_err(|e| Failure::new(FailureClass::Config, format!("{}: {e}", path.display()), CHECK_FILE))?;
                            eprintln!("key generated inside keyd for {domain}; CSR written to {}", path.display());
                        }
                        None => print!("{pem}"),
                    }
                    eprintln!("have it signed, then: sealtls key put {domain} --cert CHAIN.pem");
                }
                r => return Err(unexpected(r)),
            }
        }
    }
    Ok(())
}

/// `key ls` on several keyds: per domain, which keyds hold it and whether
/// they hold the same key and certificate expiry.
fn print_fleet_list(results: Vec<(String, Result<Response, Failure>)>, json: bool) -> Result<(), Failure> {
    let mut domains: std::collections::BTreeMap<String, Vec<(String, ListEntry)>> = Default::default();
    let mut down = Vec::new();
    let total = results.len();
    for (name, result) in results {
        match result {
            Ok(Response::List(entries)) => {
                for e in entries {
                    domains.entry(e.domain.clone()).or_default().push((name.clone(), e));
                }
            }
            Ok(r) => return Err(unexpected(r)),
            Err(f) => down.push((name, f.what)),
        }
    }
    let agree =
        |held: &[(String, ListEntry)]| held.windows(2).all(|w| w[0].1.key_id == w[1].1.key_id && w[0].1.not_after == w[1].1.not_after);
    if json {
        let rows: Vec<_> = domains
            .iter()
            .map(|(domain, held)| {
                serde_json::json!({
                    "domain": domain,
                    "held_by": held.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(),
                    "agree": agree(held),
                    "keys": held.iter().map(|(n, e)| serde_json::json!({"keyd": n, "key_id": e.key_id.to_string(), "not_after": e.not_after, "status": e.status})).collect::<Vec<_>>(),
                })
            })
            .collect();
        let unreachable: Vec<_> = down.iter().map(|(n, why)| serde_json::json!({"keyd": n, "error": why})).collect();
        crate::print_report(&format!("{}\n", serde_json::json!({"domains": rows, "unreachable": unreachable})))?;
    } else {
        use std::fmt::Write;
        let mut out = format!("{:<32} {:<12} {:<22} {:<8} HELD BY\n", "DOMAIN", "KEY", "EXPIRES", "AGREE");
        for (domain, held) in &domains {
            let first = &held[0].1;
            let names: Vec<_> = held.iter().map(|(n, _)| n.as_str()).collect();
            let agrees = if agree(held) { "yes" } else { "NO" };
            let count = format!("{}/{total}: {}", held.len(), names.join(", "));
            let _ = writeln!(out, "{:<32} {:<12} {:<22} {:<8} {count}", domain, first.key_type, expiry(first.not_after), agrees);
        }
        for (name, why) in &down {
            let _ = writeln!(out, "{name}: failed: {why}");
        }
        crate::print_report(&out)?;
    }
    if down.is_empty() {
        return Ok(());
    }
    Err(Failure::new(
        FailureClass::Network,
        format!("{} of {total} keyds did not answer: {}", down.len(), down.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ")),
        "start them, or leave them out of --keyd",
    ))
}

fn pem_csr(der: &[u8]) -> String {
    sealtls_pki::issue::pem_encode("CERTIFICATE REQUEST", der)
}
