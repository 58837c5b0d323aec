//! `sealtls offload` (the TLS offload daemon) and `sealtls offload-client`
//! (a person at a shell using it).
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Args;
use sealtls_failure::{Failure, FailureClass};
use sealtls_listen::ListenSpec;
use sealtls_offload::{detail, Code, Error};
use sealtls_offload_daemon::{Daemon, OffloadSettings, TrustAnchors};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::info;

use crate::config::{load_trust, Config};
use crate::endpoints::send_line;
use crate::notify;
use crate::reload::{config_files, describe_anchors, reload_line, Reload, ReloadFlags, Reloader};
use crate::signals::shutdown_signal;
use crate::status::StatusFlags;
use sealtls_status::prometheus_client::registry::Registry;
use sealtls_status::Listener;

#[derive(Args)]
pub struct OffloadArgs {
    /// Unix socket to listen on, created with mode 0660 (default: [offload] socket of --config).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Listen on unix:PATH or on a Unix socket systemd passed (systemd[:NAME], socket activation) instead of --socket.
    #[arg(long, conflicts_with = "socket", value_name = "unix:PATH|systemd[:NAME]")]
    listen: Option<ListenSpec>,
    #[command(flatten)]
    reload: ReloadFlags,
    /// CA certificate (PEM) every server must chain to, or `system` for the
    /// operating system's CAs; repeat for more. Default: the config's.
    #[arg(long, value_name = "CA.pem|system")]
    trust: Vec<PathBuf>,
    /// Number of client slots.
    #[arg(long)]
    max_clients: Option<usize>,
    /// Admit only these user ids (with --allow-gid: either matches). Default: anyone who can open the socket.
    #[arg(long = "allow-uid", value_name = "UID")]
    allow_uid: Vec<u32>,
    /// Admit only these (primary) group ids.
    #[arg(long = "allow-gid", value_name = "GID")]
    allow_gid: Vec<u32>,
    /// Largest read or write in bytes (the dataport size), 256 to 1048576.
    #[arg(long)]
    buffer_size: Option<usize>,
    /// Limit for a TCP connect, in seconds.
    #[arg(long, value_name = "SECS", value_parser = crate::limits::positive_secs)]
    connect_timeout: Option<u64>,
    /// Limit for a TLS handshake, in seconds.
    #[arg(long, value_name = "SECS", value_parser = crate::limits::positive_secs)]
    handshake_timeout: Option<u64>,
    /// Drop a client that leaves answers unread this long, in seconds.
    #[arg(long, value_name = "SECS", value_parser = crate::limits::positive_secs)]
    client_timeout: Option<u64>,
    /// Verify server chains but not their names, as TRENTOS TlsServer does.
    /// Daemon-wide; clients cannot choose it.
    #[arg(long)]
    no_hostname_check: bool,
    /// Configuration file with an [offload] table.
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(flatten)]
    status: StatusFlags,
}

impl OffloadArgs {
    /// The `[offload]` table with these flags applied.
    fn settings(&self) -> Result<OffloadSettings, Failure> {
        let config = match &self.config {
            Some(path) => Config::load(path).map_err(Failure::config)?,
            None if self.socket.is_none() && self.listen.is_none() => {
                return Err(Failure::new(
                    FailureClass::Usage,
                    "no socket given",
                    "give --socket PATH, --listen systemd[:NAME] (or --config FILE with an [offload] table)",
                ))
            }
            None => Config::defaults(),
        };
        let mut settings = config.offload;
        match (&self.socket, &self.listen) {
            (Some(socket), _) | (None, Some(ListenSpec::Unix(socket))) => settings.socket = socket.clone(),
            _ => {}
        }
        if !self.trust.is_empty() {
            settings.trust = load_trust(&self.trust).map_err(Failure::config)?;
        }
        settings.max_clients = self.max_clients.unwrap_or(settings.max_clients);
        settings.allow.uids.extend(&self.allow_uid);
        settings.allow.gids.extend(&self.allow_gid);
        settings.buffer_size = self.buffer_size.unwrap_or(settings.buffer_size);
        let seconds = |flag: Option<u64>, default: Duration| flag.map_or(default, Duration::from_secs);
        settings.connect_timeout = seconds(self.connect_timeout, settings.connect_timeout);
        settings.handshake_timeout = seconds(self.handshake_timeout, settings.handshake_timeout);
        settings.answer_timeout = seconds(self.client_timeout, settings.answer_timeout);
        settings.name_check &= !self.no_hostname_check;
        Ok(settings)
    }
}

/// Binds the daemon described by `settings`, logging what it will do.
/// Binds the daemon on its socket, or on `passed` (a socket systemd passed).
pub fn bind(settings: &OffloadSettings, passed: Option<sealtls_listen::UnixSocket>) -> Result<Daemon, Failure> {
    let daemon = match passed {
        Some(socket) => Daemon::bind_on(settings.clone(), socket)?,
        None => Daemon::bind(settings.clone())?,
    };
    info!(
        listen = %daemon.socket().display(),
        trust = %settings.trust.origin,
        max_clients = settings.max_clients,
        buffer_size = settings.buffer_size,
        hostname_check = settings.name_check,
        "offload daemon ready"
    );
    Ok(daemon)
}

/// A running daemon's trust anchors, reloaded in place from the same
/// flags and config file as at start.
struct OffloadReload {
    args: OffloadArgs,
    name: String,
    trust: TrustAnchors,
    loaded: Mutex<String>,
}

impl Reload for OffloadReload {
    fn name(&self) -> String {
        self.name.clone()
    }

    /// The --trust files, else the config's.
    fn files(&self) -> Vec<PathBuf> {
        let args = &self.args;
        let mut files: Vec<PathBuf> = args.trust.iter().filter(|t| t.as_os_str() != "system").cloned().collect();
        if args.trust.is_empty() {
            files.extend(args.config.as_deref().map(config_files).unwrap_or_default());
        }
        files
    }

    fn reload(&self) -> Result<Option<String>, Failure> {
        let trust = self.args.settings()?.trust;
        let new = describe_anchors(&trust.certs);
        let mut old = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        let Some(line) = reload_line(&self.name, &[("trust anchors", "fingerprints", Some(old.clone()), Some(new.clone()))]) else {
            return Ok(None);
        };
        self.trust.replace(trust)?;
        *old = new;
        Ok(Some(line))
    }
}

pub async fn offload(args: OffloadArgs) -> Result<(), Failure> {
    let shutdown = shutdown_signal();
    let reloader = Reloader::install(args.reload);
    let passed = match &args.listen {
        Some(spec @ ListenSpec::Systemd(_)) => Some(spec.bind("offload").await?.into_unix("offload")?),
        Some(ListenSpec::Tcp(addr)) => {
            return Err(Failure::new(
                FailureClass::Usage,
                format!("--listen {addr}: the offload daemon listens on a Unix socket only"),
                "give --listen unix:PATH, --listen systemd[:NAME] or --socket PATH",
            ))
        }
        _ => None,
    };
    let settings = args.settings()?;
    let daemon = bind(&settings, passed)?;
    let mut registry = Registry::default();
    daemon.metrics().register(&mut registry);
    let page = args.status.bind(registry).await?;
    let listener = Listener::new(format!("unix:{}", daemon.socket().display()), "offload").with_anchors(&settings.trust.certs);
    let (_status, _running) = crate::status::start(page, vec![listener]);
    let trust = daemon.trust();
    let loaded = Mutex::new(describe_anchors(&trust.current().certs));
    let part = OffloadReload { args, name: format!("offload {}", daemon.socket().display()), trust, loaded };
    let reloading = tokio::spawn(reloader.run(vec![Arc::new(part)]));
    notify::ready();
    daemon.run(notify::stopping_after(shutdown)).await;
    reloading.abort();
    info!("stopped");
    Ok(())
}

#[derive(Args)]
pub struct OffloadClientArgs {
    /// Server as HOST:PORT; HOST is checked against its certificate.
    target: String,
    /// The daemon's socket.
    #[arg(long, default_value = "sealtls-data/offload.sock")]
    socket: PathBuf,
    /// Send TEXT followed by one newline (none is added when TEXT already
    /// ends with one), print the answer up to as many newlines as were sent,
    /// disconnect. Without it, standard input is sent and what arrives is printed.
    #[arg(long, value_name = "TEXT")]
    send: Option<String>,
    /// How long to wait for the answer to --send, in seconds.
    #[arg(long, default_value_t = 10, value_parser = crate::limits::positive_secs)]
    wait: u64,
}

/// A failed offload call as a failure with its remedy.
fn failure(e: Error, target: &str) -> Failure {
    let detail = e.detail.clone().unwrap_or_else(|| e.code.describe().to_owned());
    let (what, fix) = match detail.split_once(" (fix: ") {
        Some((what, fix)) => (what.to_owned(), fix.strip_suffix(')').unwrap_or(fix).to_owned()),
        None => (detail, String::new()),
    };
    let (class, fix) = match e.code {
        Code::OutOfBounds => {
            (FailureClass::Network, "retry when a client closes, or start the daemon with a larger --max-clients".to_owned())
        }
        Code::OperationDenied => {
            (FailureClass::Network, "run as a user the daemon admits, or add this one to its --allow-uid/--allow-gid".to_owned())
        }
        Code::NotFound | Code::Generic => (FailureClass::Network, "check that `sealtls offload` runs on --socket".to_owned()),
        // ABORTED covers every handshake failure; the daemon's detail says which.
        Code::Aborted if what.contains(detail::REFUSED_CERTIFICATE) => (FailureClass::PeerNotTrusted, fix),
        Code::Aborted if what.contains(detail::TIMED_OUT) => (FailureClass::Network, fix),
        Code::Aborted => (FailureClass::Protocol, fix),
        Code::InvalidParameter => (FailureClass::Usage, "give the server as HOST:PORT with a port from 1 to 65535".to_owned()),
        _ => (FailureClass::Network, fix),
    };
    let fix = if fix.is_empty() { format!("check that {target} is reachable from the daemon and serves TLS") } else { fix };
    Failure::new(class, format!("{} via the offload daemon: {what}", e.code.name()), fix)
}

/// A failure to reach the daemon at `socket`.
fn open_failure(e: Error, socket: &std::path::Path, target: &str) -> Failure {
    match e.code {
        Code::NotFound => Failure::new(
            FailureClass::Network,
            format!("no offload daemon at {}", socket.display()),
            format!(
                "start `sealtls offload --socket {} --trust CA.pem`, or pass --socket with the path the daemon listens on",
                socket.display()
            ),
        ),
        _ => failure(e, target),
    }
}

pub async fn offload_client(args: OffloadClientArgs) -> Result<(), Failure> {
    let usage = || {
        Failure::new(
            FailureClass::Usage,
            format!("`{}` is not HOST:PORT", args.target),
            "write the server as HOST:PORT, e.g. localhost:10007",
        )
    };
    let (host, port) = args.target.rsplit_once(':').ok_or_else(usage)?;
    let port: u16 = port.parse().map_err(|_| usage())?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let client = sealtls_offload::AsyncClient::open(&args.socket).await.map_err(|e| open_failure(e, &args.socket, &args.target))?;
    let badge = client.badge();
    let mut tls = client.connect(host, port).await.map_err(|e| failure(e, &args.target))?;
    eprintln!("connected to {} through the offload daemon (badge {badge}): {}", args.target, tls.session());
    let broken = |e: std::io::Error| {
        Failure::new(FailureClass::Network, format!("connection to {} failed: {e}", args.target), "see the offload daemon's log")
    };
    match &args.send {
        Some(text) => {
            let line = send_line(text);
            tls.write_all(line.as_bytes()).await.map_err(broken)?;
            let lines = line.matches('\n').count();
            let mut answer = Vec::new();
            let mut chunk = [0u8; 4096];
            let read = async {
                while answer.iter().filter(|&&b| b == b'\n').count() < lines {
                    match tls.read(&mut chunk).await? {
                        0 => break,
                        n => answer.extend_from_slice(&chunk[..n]),
                    }
                }
                Ok::<_, std::io::Error>(())
            };
            match tokio::time::timeout(Duration::from_secs(args.wait), read).await {
                Ok(result) => result.map_err(broken)?,
                Err(_) => eprintln!("the answer did not end with as many newlines as were sent within {} s (--wait)", args.wait),
            }
            print!("{}", String::from_utf8_lossy(&answer));
        }
        None => relay_stdio(&mut tls).await.map_err(broken)?,
    }
    let _ = tls.shutdown().await;
    Ok(())
}

/// How long to keep printing after standard input ended, once the server is quiet.
const LINGER: Duration = Duration::from_secs(1);

/// Sends standard input, prints what arrives; after standard input ends,
/// keeps printing until the server closes or is quiet for [`LINGER`].
async fn relay_stdio(tls: &mut sealtls_offload::OffloadStream) -> std::io::Result<()> {
    let (mut from_server, mut to_server) = tokio::io::split(tls);
    let mut stdout = tokio::io::stdout();
    let mut stdin = tokio::io::stdin();
    let upload = tokio::io::copy(&mut stdin, &mut to_server);
    tokio::pin!(upload);
    let mut uploading = true;
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let quiet = async {
            if uploading {
                std::future::pending::<()>().await
            } else {
                tokio::time::sleep(LINGER).await
            }
        };
        tokio::select! {
            read = from_server.read(&mut chunk) => match read? {
                0 => return Ok(()),
                n => {
                    stdout.write_all(&chunk[..n]).await?;
                    stdout.flush().await?;
                }
            },
            sent = &mut upload, if uploading => {
                sent?;
                uploading = false;
            }
            () = quiet => return Ok(()),
        }
    }
}
