//! `sealtls up`: the whole stack on loopback, from a development data
//! directory made on first run, and `sealtls console`: the console alone.
use std::path::{Path, PathBuf};

use clap::Args;
use sealtls_console::EchoServers;
use sealtls_failure::Failure;
use sealtls_pki::files::write_atomic;
use sealtls_pki::issue::{default_ca_name, init_ca, issue_leaf, KeyType, LeafKind, DEFAULT_LEAF_DAYS};
use tokio::sync::watch;
use tracing::info;

use crate::config::{locate, Config, DEFAULT_NAME, DEV_CONFIG};
use crate::keyd::KeydArgs;
use crate::services::{self, run_until_signal, Address, ConsoleFlags};
use crate::signals::shutdown_signal;

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
    /// keyd's device secret (default /etc/sealtls/device.key for root, else ~/.config/sealtls/device.key).
    #[arg(long)]
    device_key: Option<PathBuf>,
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

/// Creates the development PKI in `dir` (a CA, `localhost` and `client`)
/// unless already there: keyd is given `localhost`'s key.
fn ensure_dev_pki(dir: &Path) -> Result<(), Failure> {
    if !dir.join("ca.pem").exists() {
        info!(dir = %dir.display(), "creating a development PKI");
        init_ca(dir, &default_ca_name(), KeyType::EcdsaP256, 3650, false).map_err(Failure::config)?;
        issue_leaf(dir, LeafKind::Server, "localhost", &[], KeyType::EcdsaP256, DEFAULT_LEAF_DAYS, false).map_err(Failure::config)?;
        issue_leaf(dir, LeafKind::Client, "client", &[], KeyType::EcdsaP256, DEFAULT_LEAF_DAYS, false).map_err(Failure::config)?;
    }
    Ok(())
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

pub async fn up(args: UpArgs) -> Result<(), Failure> {
    let shutdown = shutdown_signal();
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
    let console_section = args.console.apply(config.console.clone())?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let servers = EchoServers::new(config.material.clone());
    let device_key = args.device_key.clone().unwrap_or_else(sealtls_keyd::device::default_path);
    let mut keyd = KeydArgs::sealed(args.data_dir.join("keyd"), Some(device_key.clone()));
    keyd.socket = config.keyd_socket.clone();
    let keyless_listen = args.keyless_listen.unwrap_or(config.keyless.listen);
    let (dev_key, dev_cert) = (args.data_dir.join("localhost.key"), args.data_dir.join("localhost.pem"));
    let started = async {
        Ok::<_, Failure>(vec![
            services::echo(&servers, &config.echo, stop_rx.clone()).await?,
            services::console(&servers, &console_section, stop_rx.clone()).await?,
            services::offload(&config.offload, stop_rx.clone())?,
            services::keyd(&keyd, Some(("localhost", &dev_key, &dev_cert)), stop_rx.clone()).await?,
            services::keyless(keyless_listen, &keyd.socket(), stop_rx.clone()).await?,
        ])
    };
    let list = match started.await {
        Ok(list) => list,
        Err(f) => {
            servers.stop_all().await;
            return Err(f);
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
    println!(
        "  {:<20} {} (keyd's keys in {}/keyd are sealed under it; kept apart so that a copy of the data directory cannot be opened without it)",
        "keyd device secret",
        device_key.display(),
        args.data_dir.display()
    );
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
    println!("stop with Ctrl-C");
    run_until_signal(list, shutdown, stop_tx, &servers).await;
    Ok(())
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
}

pub async fn console(args: ConsoleArgs) -> Result<(), Failure> {
    let shutdown = shutdown_signal();
    let path = locate(args.config.as_deref(), &args.data_dir);
    let config = load(path.as_deref())?;
    let section = args.console.apply(config.console.clone())?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let servers = EchoServers::new(config.material.clone());
    let service = services::console(&servers, &section, stop_rx).await?;
    info!(listen = %service.address, config = %path.as_deref().map_or("none".into(), |p| p.display().to_string()), "console ready");
    run_until_signal(vec![service], shutdown, stop_tx, &servers).await;
    Ok(())
}
