//! `sealtls up`: the whole stack on loopback, from a development data
//! directory made on first run, and `sealtls console`: the console alone.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU32;
use std::sync::Arc;

use clap::Args;
use sealtls_console::EchoServers;
use sealtls_failure::{Failure, FailureClass, CHECK_FILE};
use sealtls_pki::files::write_atomic;
use sealtls_pki::issue::{default_ca_name, init_ca, issue_leaf, KeyType, LeafKind, DEFAULT_LEAF_DAYS};
use tokio::sync::{oneshot, watch};
use tracing::{info, warn};

use crate::config::{locate, Config, DEFAULT_NAME, DEV_CONFIG};
use crate::keyd::{BackendKind, SealKind};
use crate::keyd_child::{provision, KeydSpec};
use crate::notify;
use crate::port_owner::listener_of;
use crate::reload::{Reload, ReloadFlags, Reloader};
use crate::services::{self, run_until_signal, Address, ConsoleFlags};
use crate::signals::shutdown_signal;
use crate::stack_reload::{KeydForward, MaterialReload};
use crate::status::{KeydPing, Shown, StatusFlags};
use crate::tunnel::Listen;
use sealtls_keyless::{KeydClient, KeydEndpoint};
use sealtls_status::{Listener, StatusAddr};

#[derive(Args)]
pub struct UpArgs {
    /// Data directory; created with a development PKI and config when missing.
    #[arg(long, default_value = "sealtls-data")]
    data_dir: PathBuf,
    /// Configuration file (default: ./sealtls.toml, else DATA_DIR/sealtls.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(flatten)]
    console: ConsoleFlags,
    /// Address of the keyless TLS server (keys in keyd) [default: the config's
    /// [keyless] listen, else 127.0.0.1:1443].
    #[arg(long)]
    keyless_listen: Option<std::net::SocketAddr>,
    /// Address of the TLS echo server [default: the config's [echo] listen, else 127.0.0.1:10007].
    #[arg(long)]
    echo_listen: Option<std::net::SocketAddr>,
    /// keyd's device secret (default /etc/sealtls/device.key for root, else ~/.config/sealtls/device.key).
    #[arg(long)]
    device_key: Option<PathBuf>,
    /// What seals keyd's store key: file or tpm [default: the config's [keyd] seal, else file].
    #[arg(long, value_enum)]
    keyd_seal: Option<SealKind>,
    /// The TPM for --keyd-seal tpm, as a tpm2-tss TCTI [default: the config's [keyd] tpm, else device:/dev/tpmrm0].
    #[arg(long, value_name = "TCTI")]
    tpm: Option<String>,
    #[command(flatten)]
    status: StatusFlags,
    /// Give the keyd child process a status listener of its own on IP:PORT (loopback) or unix:PATH [default: none].
    #[arg(long, value_name = "ADDR")]
    keyd_status: Option<StatusAddr>,
    #[command(flatten)]
    reload: ReloadFlags,
}

/// Creates the development PKI and its config in `dir` unless already there.
pub fn ensure_dev_data(dir: &Path) -> Result<(), Failure> {
    ensure_dev_pki(dir)?;
    let config = dir.join(DEFAULT_NAME);
    if !config.exists() {
        write_atomic(&config, DEV_CONFIG.as_bytes(), 0o600, false).map_err(Failure::config)?;
    }
    Ok(())
}

/// The development server leaf whose key keyd holds (for the keyless server).
pub const KEYD_LEAF: &str = "localhost";
/// The development server leaf of the echo server and the console: a key of
/// their own, so that no TLS process holds a key that keyd holds.
pub const ECHO_LEAF: &str = "echo-localhost";

/// Creates the development PKI in `dir` unless already there: a CA,
/// `localhost` (whose key keyd is given), `echo-localhost` (the echo
/// server's) and `client`. A directory made before `echo-localhost`
/// existed gets it added.
fn ensure_dev_pki(dir: &Path) -> Result<(), Failure> {
    if !dir.join("ca.pem").exists() {
        info!(dir = %dir.display(), "creating a development PKI");
        init_ca(dir, &default_ca_name(), KeyType::EcdsaP256, 3650, false).map_err(Failure::config)?;
        issue_keyd_leaf(dir)?;
        issue_leaf(dir, LeafKind::Client, "client", &[], KeyType::EcdsaP256, DEFAULT_LEAF_DAYS, false).map_err(Failure::config)?;
    }
    if !dir.join(format!("{ECHO_LEAF}.pem")).exists() && dir.join("ca.key").exists() {
        info!(dir = %dir.display(), leaf = ECHO_LEAF, "issuing the echo server's own certificate");
        let sans = ["localhost", "127.0.0.1", "::1"].map(String::from);
        issue_leaf(dir, LeafKind::Server, ECHO_LEAF, &sans, KeyType::EcdsaP256, DEFAULT_LEAF_DAYS, false).map_err(Failure::config)?;
    }
    Ok(())
}

/// Issues `localhost` in a short-lived `sealtls pki issue` process, so
/// that the key keyd will hold is never in `up`'s memory.
fn issue_keyd_leaf(dir: &Path) -> Result<(), Failure> {
    let exe = std::env::current_exe()
        .map_err(|e| Failure::new(FailureClass::Config, format!("cannot find this program: {e}"), "run sealtls from its file"))?;
    let out = std::process::Command::new(exe)
        .args(["pki", "issue", "server", "--name", KEYD_LEAF, "--dir"])
        .arg(dir)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| Failure::new(FailureClass::Config, format!("cannot run sealtls pki issue: {e}"), "check the sealtls binary"))?;
    if !out.status.success() {
        return Err(Failure::new(
            FailureClass::Config,
            format!("issuing {KEYD_LEAF} in {} failed: {}", dir.display(), String::from_utf8_lossy(&out.stderr).trim()),
            CHECK_FILE,
        ));
    }
    Ok(())
}

/// Warns when the echo server serves with the certificate (and so the key)
/// keyd is given: a configuration written before `echo-localhost` existed.
fn warn_shared_key(config: &Config, config_path: &Path, data_dir: &Path) {
    let Some(server) = &config.material.server else { return };
    let Ok(keyd_chain) = sealtls_pki::load_certs(&data_dir.join(format!("{KEYD_LEAF}.pem"))) else { return };
    if server.cert.first().map(|c| c.as_ref()) == keyd_chain.first().map(|c| c.as_ref()) {
        warn!(
            config = %config_path.display(),
            "the echo server and keyd share the {KEYD_LEAF} key, so this process holds a key keyd holds; \
             fix: in [tls] set srv_cert_file = \"{ECHO_LEAF}.pem\" and srv_key_file = \"{ECHO_LEAF}.key\" \
             (issued in {})",
            data_dir.display()
        );
    }
}

/// A path as a shell word: as it is when it needs no quoting, else in single quotes.
fn shell_word(path: &Path) -> String {
    let s = path.display().to_string();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"/._-+:,=@".contains(&b)) {
        s
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// How to run this very binary from a shell: `sealtls` when that is what
/// PATH finds, else its full path; and the path of this binary.
fn self_command() -> (String, Option<PathBuf>) {
    let Ok(exe) = std::env::current_exe() else { return ("sealtls".into(), None) };
    let exe = exe.canonicalize().unwrap_or(exe);
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("sealtls")).find(|c| c.is_file()))
        .unwrap_or_default()
        .and_then(|c| c.canonicalize().ok());
    if on_path.as_deref() == Some(exe.as_path()) {
        ("sealtls".into(), Some(exe))
    } else {
        (shell_word(&exe), Some(exe))
    }
}

fn load(path: Option<&Path>) -> Result<Config, Failure> {
    match path {
        Some(p) => Config::load(p).map_err(Failure::config),
        None => Ok(Config::defaults()),
    }
}

/// Refuses to start when a TCP address `up` needs is held by a process
/// this user can see, naming it; otherwise binding reports what it finds.
/// Each address comes with what set it: a flag, or a config key (in `config`).
fn check_ports_free(needed: &[(String, SocketAddr)], config: &Path) -> Result<(), Failure> {
    for (what, addr) in needed.iter().filter(|(_, a)| a.port() != 0) {
        let change = match what.starts_with("--") {
            true => format!("give {what} another address"),
            false => format!("give {what} another address in {}", config.display()),
        };
        let Some((pid, command)) = listener_of(*addr) else { continue };
        let holder = if command.contains("sealtls") && command.split_whitespace().any(|w| w == "up") {
            format!("another sealtls up (pid {pid}: {command})")
        } else {
            format!("process {pid} ({command})")
        };
        return Err(Failure::new(
            FailureClass::Network,
            format!("{what} {addr} is already in use by {holder}"),
            format!("stop pid {pid}, or {change}"),
        ));
    }
    Ok(())
}

pub async fn up(args: UpArgs) -> Result<(), Failure> {
    let shutdown = shutdown_signal();
    let reloader = Reloader::install(args.reload);
    let _lock = crate::up_lock::acquire(&args.data_dir)?;
    let path = match locate(args.config.as_deref(), &args.data_dir) {
        Some(p) => {
            // keyd is given the development key even when the config is elsewhere.
            ensure_dev_pki(&args.data_dir)?;
            p
        }
        None => {
            ensure_dev_data(&args.data_dir)?;
            args.data_dir.join(DEFAULT_NAME)
        }
    };
    let config = load(Some(&path))?;
    warn_shared_key(&config, &path, &args.data_dir);
    let console_section = args.console.apply(config.console.clone())?;
    let keyless_listen = args.keyless_listen.unwrap_or(config.keyless.listen);
    let mut echo_section = config.echo.clone();
    echo_section.listen = args.echo_listen.unwrap_or(echo_section.listen);
    let set_by = |flag: &str, given: bool, key: &str| if given { flag.to_owned() } else { key.to_owned() };
    let mut needed = vec![
        (set_by("--echo-listen", args.echo_listen.is_some(), "[echo] listen"), echo_section.listen),
        (set_by("--console-listen", args.console.listen.is_some(), "[console] listen"), console_section.listen),
        (set_by("--keyless-listen", args.keyless_listen.is_some(), "[keyless] listen"), keyless_listen),
    ];
    let tcp = |label: &str, listen: &Listen| match listen {
        Listen::Tcp(a) => Some((format!("{label} listen"), *a)),
        _ => None,
    };
    needed.extend(config.serve.iter().filter_map(|t| tcp(&t.label, &t.args.listen)));
    needed.extend(config.tunnel.iter().filter_map(|t| tcp(&t.label, &t.args.listen)));
    check_ports_free(&needed, &path)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let device_key = args.device_key.clone().unwrap_or_else(sealtls_keyd::device::default_path);
    let mut keyd_args = config.keyd.clone();
    keyd_args.data_dir = args.data_dir.join("keyd");
    keyd_args.socket = config.keyd_socket.clone();
    keyd_args.authorize = config.keyd_authorize.as_ref().map(|a| a.path.clone());
    keyd_args.seal = args.keyd_seal.unwrap_or(keyd_args.seal);
    keyd_args.tpm = args.tpm.clone().unwrap_or(keyd_args.tpm);
    let sealed_by_file = keyd_args.backend == BackendKind::SealedFile && keyd_args.seal == SealKind::File;
    keyd_args.device_key = sealed_by_file.then(|| device_key.clone());
    let keyd_socket = keyd_args.socket();
    keyd_args.status = StatusFlags { status: args.keyd_status.clone(), unsafe_status: args.status.unsafe_status };
    let spec = KeydSpec { args: keyd_args };
    // keyd first, in its own process: nothing else starts if it cannot.
    let keyd = spec.start().await?;
    let (dev_key, dev_cert) = (args.data_dir.join(format!("{KEYD_LEAF}.key")), args.data_dir.join(format!("{KEYD_LEAF}.pem")));
    if let Err(f) = provision(&keyd_socket, KEYD_LEAF, &dev_key, &dev_cert).await {
        keyd.stop().await;
        return Err(f);
    }
    let mut shown = Shown::default();
    let mut table_reloads: Vec<Arc<dyn Reload>> = Vec::new();
    let servers = EchoServers::with_metrics(config.material.clone(), shown.servers.clone());
    let started = async {
        let mut list = vec![
            services::echo(&servers, &echo_section, stop_rx.clone(), &mut shown).await?,
            services::console(&servers, &console_section, stop_rx.clone()).await?,
            services::offload(&config.offload, stop_rx.clone(), &mut shown)?,
            services::keyless(keyless_listen, &keyd_socket, config.keyless.limits, stop_rx.clone(), &mut shown).await?,
        ];
        for table in &config.serve {
            list.push(services::serve_table(table, &config.material, stop_rx.clone(), &mut shown, &path, &mut table_reloads).await?);
        }
        for table in &config.tunnel {
            list.push(services::tunnel_table(table, stop_rx.clone(), &mut shown, &path, &mut table_reloads).await?);
        }
        let page = args.status.or_config(config.status.as_ref())?.bind(std::mem::take(&mut shown.registry)).await?;
        Ok::<_, Failure>((list, page))
    };
    let (mut list, page) = match started.await {
        Ok(started) => started,
        Err(f) => {
            servers.stop_all().await;
            keyd.stop().await;
            return Err(f);
        }
    };
    let (failed_tx, failed_rx) = oneshot::channel();
    let keyd_pid = Arc::new(AtomicU32::new(keyd.pid()));
    let keyd_service = services::Service {
        name: "keyd (key custody)",
        address: Address::Unix(keyd_socket.clone()),
        task: Box::pin(keyd.supervise(spec, stop_rx.clone(), failed_tx, keyd_pid.clone())),
    };
    let mut parts: Vec<Arc<dyn Reload>> = vec![
        Arc::new(MaterialReload { name: format!("up {}", path.display()), config: path.clone(), servers: servers.clone() }),
        Arc::new(KeydForward { pid: keyd_pid }),
    ];
    parts.extend(table_reloads);
    let reloading = tokio::spawn(reloader.run(parts));
    list.insert(3, keyd_service);
    let failure = std::sync::Arc::new(std::sync::Mutex::new(None));
    let until = {
        let failure = failure.clone();
        async move {
            tokio::select! {
                () = shutdown => {}
                Ok(f) = failed_rx => *failure.lock().expect("failure lock") = Some(f),
            }
            notify::stopping();
        }
    };

    println!("sealtls is up (config {}):", path.display());
    for s in &list {
        println!("  {:<20} {}", s.name, s.address);
    }
    let (Address::Tcp(echo), Address::Tcp(console), Address::Unix(offload), Address::Unix(keyd_socket), Address::Tcp(keyless)) =
        (&list[0].address, &list[1].address, &list[2].address, &list[3].address, &list[4].address)
    else {
        unreachable!("up starts echo, console, offload, keyd and the keyless server in this order")
    };
    // The CA file to name in the examples: ca_cert_file, or a placeholder when ca_cert is inline.
    let ca = config
        .material
        .ca
        .as_ref()
        .and_then(|a| a.origin.strip_prefix("ca_cert: "))
        .filter(|o| !o.starts_with("inline"))
        .unwrap_or("CA.pem");
    let d = shell_word(&args.data_dir);
    let client =
        if args.data_dir.join("client.pem").exists() { format!(" --cert {d}/client.pem --key {d}/client.key") } else { String::new() };
    let ca = shell_word(Path::new(ca));
    println!("files outside {}:", args.data_dir.display());
    if sealed_by_file {
        println!(
            "  {:<20} {} (keyd's keys in {}/keyd are sealed under it; kept apart so that a copy of the data directory cannot be opened without it)",
            "keyd device secret",
            device_key.display(),
            args.data_dir.display()
        );
    }
    if !path.starts_with(&args.data_dir) {
        println!("  {:<20} {}", "configuration", path.display());
    }
    let (me, exe) = self_command();
    match exe {
        Some(exe) if me != "sealtls" => {
            println!("sealtls is {} (not on PATH; `cargo install --path crates/cli --locked` puts it there)", exe.display())
        }
        Some(exe) => println!("sealtls is {}", exe.display()),
        None => {}
    }
    println!("try:");
    println!("  openssl s_client -connect {echo} -CAfile {ca}");
    println!("  telnet {} {}", console.ip(), console.port());
    println!("  {me} connect {echo} --server-name localhost --ca {ca}{client} --send hello");
    println!("  {me} offload-client --socket {} localhost:{} --send hello", shell_word(offload), echo.port());
    println!("  openssl s_client -connect {keyless} -servername localhost -CAfile {ca}");
    println!("  {me} key ls --keyd unix:{}", shell_word(keyd_socket));
    println!("stop with Ctrl-C; reload certificates and grants with SIGHUP (kill -HUP {})", std::process::id());
    notify::ready();
    shown.listeners.push(Listener::new(console, "console"));
    let keyd_probe = KeydClient::new(KeydEndpoint::Unix(keyd_socket.clone()), 1, std::time::Duration::from_secs(2));
    shown.listeners.push(Listener::new(format!("unix:{}", keyd_socket.display()), "keyd").with_keyd(Arc::new(KeydPing(keyd_probe))));
    let (_status, _running) = crate::status::start(page, shown.listeners);
    run_until_signal(list, until, stop_tx, &servers).await;
    reloading.abort();
    let failed = failure.lock().expect("failure lock").take();
    match failed {
        Some(f) => Err(f),
        None => Ok(()),
    }
}

#[derive(Args)]
pub struct ConsoleArgs {
    /// Configuration file (default: ./sealtls.toml, else DATA_DIR/sealtls.toml, else none).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Where to look for a configuration when --config is not given.
    #[arg(long, default_value = "sealtls-data")]
    data_dir: PathBuf,
    #[command(flatten)]
    console: ConsoleFlags,
    #[command(flatten)]
    reload: ReloadFlags,
}

pub async fn console(args: ConsoleArgs) -> Result<(), Failure> {
    let shutdown = shutdown_signal();
    let reloader = Reloader::install(args.reload);
    let path = locate(args.config.as_deref(), &args.data_dir);
    let config = load(path.as_deref())?;
    let section = args.console.apply(config.console.clone())?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let servers = EchoServers::new(config.material.clone());
    let service = services::console(&servers, &section, stop_rx).await?;
    let parts: Vec<Arc<dyn Reload>> = match &path {
        Some(config) => vec![Arc::new(MaterialReload {
            name: format!("console {}", service.address),
            config: config.clone(),
            servers: servers.clone(),
        })],
        None => Vec::new(),
    };
    let reloading = tokio::spawn(reloader.run(parts));
    info!(listen = %service.address, config = %path.as_deref().map_or("none".into(), |p| p.display().to_string()), "console ready");
    notify::ready();
    run_until_signal(vec![service], notify::stopping_after(shutdown), stop_tx, &servers).await;
    reloading.abort();
    Ok(())
}
