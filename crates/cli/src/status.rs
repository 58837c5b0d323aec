//! `--status ADDR`: the status listener of every long-running command
//! (`sealtls-status`), and what the commands tell it.
use std::sync::Arc;

use clap::Args;
use rustls_pki_types::CertificateDer;
use sealtls_endpoint::metrics::ServerMetrics;
use sealtls_failure::Failure;
use sealtls_keyless::{KeydClient, KeydFleet};
use sealtls_status::prometheus_client::registry::Registry;
use sealtls_status::{Bound, Check, KeydProbe, Listener, Running, Status, StatusAddr};

/// Where the status listener listens.
#[derive(Args, Clone, Debug, Default)]
pub struct StatusFlags {
    /// Serve /metrics (Prometheus), /_status (JSON) and /_health on IP:PORT (loopback) or unix:PATH [default: none].
    #[arg(long, value_name = "ADDR")]
    pub status: Option<StatusAddr>,
    /// Allow a --status address that is not loopback (anyone reaching it sees the certificates and metrics).
    #[arg(long, requires = "status")]
    pub unsafe_status: bool,
}

impl StatusFlags {
    /// These flags, or the config file's `[status]` when no --status was given.
    pub fn or_config(&self, config: Option<&crate::tables::StatusSection>) -> Result<Self, Failure> {
        match (&self.status, config) {
            (None, Some(section)) => {
                let status = section.listen.to_string().parse().map_err(|e: String| {
                    Failure::new(
                        sealtls_failure::FailureClass::Config,
                        format!("[status] listen = {}: {e}", section.listen),
                        "write IP:PORT or unix:PATH",
                    )
                })?;
                Ok(Self { status: Some(status), unsafe_status: section.unsafe_status })
            }
            _ => Ok(self.clone()),
        }
    }

    /// Binds the status listener, if one was asked for; `registry` holds the
    /// process's metrics.
    pub async fn bind(&self, registry: Registry) -> Result<Option<StatusPage>, Failure> {
        let Some(addr) = &self.status else { return Ok(None) };
        let bound = sealtls_status::bind(addr, self.unsafe_status).await?;
        Ok(Some(StatusPage { status: Status::new(env!("CARGO_PKG_VERSION"), registry), bound }))
    }
}

/// A bound status listener, not serving yet.
pub struct StatusPage {
    status: Arc<Status>,
    bound: Bound,
}

impl StatusPage {
    /// Shows `listener`; it counts as up while the returned guard lives.
    pub fn add(&self, listener: Listener) -> Running {
        self.status.add(listener)
    }

    /// Serves, as a task of this runtime, until the returned handle is dropped.
    pub fn start(self) -> StatusTask {
        StatusTask(tokio::spawn(sealtls_status::serve(self.status, self.bound, std::future::pending())))
    }
}

/// The status listener's task; dropping it stops the listener.
pub struct StatusTask(tokio::task::JoinHandle<()>);

impl Drop for StatusTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Adds `listeners` to the page and serves it; `None` without --status.
/// The guards mark the listeners down when dropped.
pub fn start(page: Option<StatusPage>, listeners: Vec<Listener>) -> (Option<StatusTask>, Vec<Running>) {
    let Some(page) = page else { return (None, Vec::new()) };
    let running = listeners.into_iter().map(|l| page.add(l)).collect();
    (Some(page.start()), running)
}

/// The health check of a keyless server: keyd answers PING.
pub struct KeydPing(pub Arc<KeydClient>);

impl KeydProbe for KeydPing {
    fn endpoint(&self) -> String {
        self.0.endpoint().to_string()
    }

    fn check(&self) -> Check<'_> {
        Box::pin(async move { self.0.ping().await.map_err(|e| e.to_string()) })
    }
}

/// The health check of a keyless server with one or more keyds: healthy
/// while at least one keyd answers its PINGs.
pub struct KeydFleetHealth(pub Arc<KeydFleet>);

impl KeydProbe for KeydFleetHealth {
    fn endpoint(&self) -> String {
        self.0.endpoints()
    }

    fn check(&self) -> Check<'_> {
        let health = self.0.health();
        let down = health.iter().filter(|m| !m.healthy).map(|m| format!("{}: {}", m.endpoint, m.last_error)).collect::<Vec<_>>();
        let result = if down.len() == health.len() { Err(format!("no keyd answers ({})", down.join("; "))) } else { Ok(()) };
        Box::pin(std::future::ready(result))
    }
}

/// The first certificate of a chain, for the status page.
pub fn leaf(chain: &[CertificateDer<'static>]) -> Vec<CertificateDer<'static>> {
    chain.first().cloned().into_iter().collect()
}

/// What `up` shows on its one status page: the metrics of all its services
/// and their listeners.
pub struct Shown {
    /// Every service's metrics.
    pub registry: Registry,
    /// The families of the TLS servers and tunnels, labelled by listener.
    pub servers: Arc<ServerMetrics>,
    /// The listeners, in the order the services started.
    pub listeners: Vec<Listener>,
}

impl Default for Shown {
    fn default() -> Self {
        let mut registry = Registry::default();
        let servers = ServerMetrics::new();
        servers.register(&mut registry);
        Self { registry, servers, listeners: Vec::new() }
    }
}
