//! The long-running parts of sealtls as a list of services, so that `up`
//! and the single-service subcommands start them the same way.
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use sealtls_console::{check_listen, Console, ConsoleOptions, EchoServers, ServerSpec, TlsMaterial};
use sealtls_endpoint::net::bind;
use sealtls_endpoint::server::{Server, ServerOptions};
use sealtls_endpoint::settings::{ServerSettings, ServerTls};
use sealtls_endpoint::{ClientAuthMode, TlsVersions};
use sealtls_failure::{Failure, FailureClass};
use sealtls_keyless::{KeydClient, KeydEndpoint, KeydFleet, Keyless, KeylessLimits};
use sealtls_offload_daemon::OffloadSettings;
use tokio::sync::watch;
use tracing::info;

use crate::config::{ConsoleSection, EchoSection};
use crate::endpoints::prepare_serve;
use crate::status::{KeydFleetHealth, Shown};
use crate::tables::{ServeTable, TunnelTable};
use sealtls_status::Listener;

type ServiceFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Where a service listens.
#[derive(Clone, Debug)]
pub enum Address {
    /// A TCP address.
    Tcp(SocketAddr),
    /// A Unix socket.
    Unix(PathBuf),
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp(a) => write!(f, "{a}"),
            Self::Unix(p) => write!(f, "{}", p.display()),
        }
    }
}

/// One running part of the stack: its name, where it listens, and the task
/// that ends when the stack is told to stop.
pub struct Service {
    /// What it is, for people.
    pub name: &'static str,
    /// Where it listens.
    pub address: Address,
    /// Runs until stopped.
    pub task: ServiceFuture,
}

/// Resolves once `stop` turns true.
pub async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// The echo server from `[echo]`, registered with `servers` so that the
/// console lists it and can stop it.
pub async fn echo(
    servers: &Arc<EchoServers>,
    echo: &EchoSection,
    stop: watch::Receiver<bool>,
    shown: &mut Shown,
) -> Result<Service, Failure> {
    let spec = ServerSpec { addr: echo.listen, client_auth: echo.client_auth, versions: echo.versions, started_by: "sealtls up".into() };
    let address = servers.start(spec).await?;
    let material = servers.material();
    let leaf = material.server.as_ref().map_or_else(Vec::new, |k| crate::status::leaf(&k.cert));
    let anchors = material.ca.as_ref().map_or_else(Vec::new, |a| a.certs.clone());
    shown.listeners.push(Listener::new(address, "echo").with_certificates(move || leaf.clone()).with_anchors(&anchors));
    Ok(Service { name: "TLS echo server", address: Address::Tcp(address), task: Box::pin(stopped(stop)) })
}

/// Console flags that override `[console]`.
#[derive(Args, Clone, Default)]
pub struct ConsoleFlags {
    /// Console address (default from the config, else 127.0.0.1:11123).
    #[arg(long = "console-listen")]
    pub listen: Option<SocketAddr>,
    /// Allow a console address that is not loopback (needs a token).
    #[arg(long)]
    pub allow_remote: bool,
    /// File with the token a console session must give first (mode 0600).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
}

impl ConsoleFlags {
    /// The `[console]` section with these flags applied.
    pub fn apply(&self, mut section: ConsoleSection) -> Result<ConsoleSection, Failure> {
        if let Some(l) = self.listen {
            section.listen = l;
        }
        section.allow_remote |= self.allow_remote;
        if let Some(path) = &self.token_file {
            section.token = Some(crate::config::read_token(path).map_err(Failure::config)?);
        }
        Ok(section)
    }
}

/// The echoctl_tls console.
pub async fn console(servers: &Arc<EchoServers>, section: &ConsoleSection, stop: watch::Receiver<bool>) -> Result<Service, Failure> {
    check_listen(section.listen, section.allow_remote, section.token.is_some())?;
    let listener = bind(section.listen).await?;
    let address =
        listener.local_addr().map_err(|e| Failure::new(FailureClass::Network, format!("cannot read the bound address: {e}"), "retry"))?;
    let options = ConsoleOptions { token: section.token.clone(), server_ip: address.ip(), ..Default::default() };
    let console = Console::new(servers.clone(), options);
    Ok(Service { name: "echoctl_tls console", address: Address::Tcp(address), task: Box::pin(console.run(listener, stopped(stop))) })
}

/// The TLS offload daemon from `[offload]`.
pub fn offload(settings: &OffloadSettings, stop: watch::Receiver<bool>, shown: &mut Shown) -> Result<Service, Failure> {
    let daemon = crate::offload::bind(settings, None)?;
    let address = Address::Unix(daemon.socket().to_owned());
    daemon.metrics().register(&mut shown.registry);
    shown.listeners.push(Listener::new(format!("unix:{address}"), "offload").with_anchors(&settings.trust.certs));
    Ok(Service { name: "TLS offload daemon", address, task: Box::pin(daemon.run(stopped(stop))) })
}

/// A TLS echo server whose certificates and signatures come from keyd.
pub async fn keyless(
    listen: SocketAddr,
    keyd_socket: &Path,
    limits: KeylessLimits,
    stop: watch::Receiver<bool>,
    shown: &mut Shown,
) -> Result<Service, Failure> {
    let client = KeydClient::new(KeydEndpoint::Unix(keyd_socket.to_owned()), 4, Duration::from_secs(5));
    let keyds = KeydFleet::single(client);
    keyds.register(&mut shown.registry);
    let keyless = Keyless::with_limits(keyds, crate::endpoints::KEYLESS_REFRESH, limits);
    let settings = ServerSettings {
        identity: Arc::new(keyless.clone()),
        client_ca: None,
        client_auth: ClientAuthMode::None,
        versions: TlsVersions::Any,
    };
    let tls = crate::endpoints::keyless_tls(ServerTls::new(settings).map_err(Failure::config)?, keyless.clone());
    let listener = bind(listen).await?;
    let address =
        listener.local_addr().map_err(|e| Failure::new(FailureClass::Network, format!("cannot read the bound address: {e}"), "retry"))?;
    let server = Server::new(tls, ServerOptions { metrics: shown.servers.listener(address.to_string()), ..Default::default() });
    let probe = Arc::new(KeydFleetHealth(keyless.keyds().clone()));
    shown.listeners.push(Listener::new(address, "keyless").with_certificates(move || keyless.cached_leaves()).with_keyd(probe));
    Ok(Service { name: "keyless TLS server", address: Address::Tcp(address), task: Box::pin(server.run(listener, stopped(stop))) })
}

/// A `[[serve]]` table: a TLS server or proxy.
pub async fn serve_table(
    table: &ServeTable,
    material: &TlsMaterial,
    stop: watch::Receiver<bool>,
    shown: &mut Shown,
    source: &Path,
    reloads: &mut Vec<Arc<dyn crate::reload::Reload>>,
) -> Result<Service, Failure> {
    let prepared = prepare_serve(&table.args, table.material(material), &table.label, &shown.servers, Some(source)).await?;
    reloads.push(prepared.reload_part());
    prepared.show(&mut shown.registry);
    shown.listeners.push(prepared.status_listener());
    let name = if table.args.target.is_some() { "TLS proxy" } else { "TLS server" };
    Ok(Service { name, address: Address::Tcp(prepared.local), task: Box::pin(prepared.run(stopped(stop))) })
}

/// A `[[tunnel]]` table.
pub async fn tunnel_table(
    table: &TunnelTable,
    stop: watch::Receiver<bool>,
    shown: &mut Shown,
    source: &Path,
    reloads: &mut Vec<Arc<dyn crate::reload::Reload>>,
) -> Result<Service, Failure> {
    let prepared = crate::tunnel::prepare(&table.args, &table.label, &shown.servers, Some(source)).await?;
    reloads.push(prepared.reload_part());
    prepared.show(&mut shown.registry);
    shown.listeners.push(prepared.status_listener());
    let address = Address::from(&prepared.local);
    Ok(Service { name: "TLS tunnel", address, task: Box::pin(prepared.run(stopped(stop))) })
}

/// Runs `services` until `shutdown` (Ctrl-C or SIGTERM), then stops them and the echo servers.
pub async fn run_until_signal(
    services: Vec<Service>,
    shutdown: impl Future<Output = ()>,
    stop: watch::Sender<bool>,
    servers: &EchoServers,
) {
    let handles: Vec<_> = services.into_iter().map(|s| tokio::spawn(s.task)).collect();
    shutdown.await;
    info!("stopping");
    let _ = stop.send(true);
    for h in handles {
        let _ = h.await;
    }
    servers.stop_all().await;
    info!("stopped");
}
