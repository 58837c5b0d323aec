//! The echo servers started from the console (or by `sealtls up`), by port.
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};

use sealtls_endpoint::metrics::ServerMetrics;
use sealtls_endpoint::net::bind;
use sealtls_endpoint::server::{Mode, Server, ServerOptions};
use sealtls_endpoint::{ClientAuthMode, TlsVersions};
use sealtls_failure::{Failure, FailureClass};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::info;

use crate::material::TlsMaterial;

/// How many echo servers may run at once.
pub const MAX_SERVERS: usize = 64;

/// What to start.
#[derive(Clone, Debug)]
pub struct ServerSpec {
    /// Address to listen on; port 0 picks a free port.
    pub addr: SocketAddr,
    /// Whether clients are asked for certificates.
    pub client_auth: ClientAuthMode,
    /// TLS versions offered.
    pub versions: TlsVersions,
    /// Who started it, for `server list`.
    pub started_by: String,
}

struct Running {
    spec: ServerSpec,
    addr: SocketAddr,
    server: Arc<Server>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// One line of `server list`.
#[derive(Clone, Debug)]
pub struct ServerStatus {
    /// Bound address.
    pub addr: SocketAddr,
    /// Who started it.
    pub started_by: String,
    /// TLS versions offered.
    pub versions: TlsVersions,
    /// Client certificate policy.
    pub client_auth: ClientAuthMode,
    /// Connections accepted.
    pub accepted: u64,
    /// Sessions open now.
    pub open: u64,
    /// Handshakes completed.
    pub handshakes: u64,
    /// Handshakes failed.
    pub failed: u64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Bytes sent.
    pub bytes_out: u64,
}

/// Running echo servers, shared by all console sessions.
pub struct EchoServers {
    /// Replaced whole on reload; read once per server start or client connect.
    material: RwLock<Arc<TlsMaterial>>,
    running: Mutex<BTreeMap<u16, Running>>,
    metrics: Arc<ServerMetrics>,
}

impl EchoServers {
    /// No servers yet; they will use `material`.
    pub fn new(material: Arc<TlsMaterial>) -> Arc<Self> {
        Self::with_metrics(material, ServerMetrics::new())
    }

    /// As [`EchoServers::new`], each server counted in `metrics` under its address.
    pub fn with_metrics(material: Arc<TlsMaterial>, metrics: Arc<ServerMetrics>) -> Arc<Self> {
        Arc::new(Self { material: RwLock::new(material), running: Mutex::new(BTreeMap::new()), metrics })
    }

    /// The configuration the servers use.
    pub fn material(&self) -> Arc<TlsMaterial> {
        self.material.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Puts `material` in use (hot reload): each running server's new
    /// handshakes get it, open sessions keep theirs, and servers and client
    /// connections started later use it. If it cannot serve one of the
    /// running servers, nothing is replaced.
    pub fn replace_material(&self, material: Arc<TlsMaterial>) -> Result<(), Failure> {
        let running = self.running.lock().expect("not poisoned");
        let rebuilt = running
            .values()
            .map(|r| Ok((r.server.clone(), material.server_tls(r.spec.client_auth, r.spec.versions)?)))
            .collect::<Result<Vec<_>, Failure>>()?;
        for (server, tls) in rebuilt {
            server.replace_tls(tls);
        }
        *self.material.write().unwrap_or_else(|e| e.into_inner()) = material;
        Ok(())
    }

    /// Refuses a port already served, or one server too many.
    fn check_room(running: &BTreeMap<u16, Running>, port: u16) -> Result<(), Failure> {
        if port != 0 && running.contains_key(&port) {
            return Err(Failure::new(
                FailureClass::Usage,
                format!("an echo server already runs on port {port}"),
                "see `server list`; stop it with `server stop PORT` or pick another port",
            ));
        }
        if running.len() >= MAX_SERVERS {
            return Err(Failure::new(
                FailureClass::Usage,
                format!("{MAX_SERVERS} echo servers already run"),
                "stop one with `server stop PORT` first",
            ));
        }
        Ok(())
    }

    /// Starts an echo server and returns the address it listens on.
    pub async fn start(&self, spec: ServerSpec) -> Result<SocketAddr, Failure> {
        Self::check_room(&self.running.lock().expect("not poisoned"), spec.addr.port())?;
        let tls = self.material().server_tls(spec.client_auth, spec.versions)?;
        let listener = bind(spec.addr).await?;
        let addr = listener
            .local_addr()
            .map_err(|e| Failure::new(FailureClass::Network, format!("cannot read the bound address: {e}"), "retry"))?;
        // Checked again: another session may have started one meanwhile.
        // On refusal the listener is dropped, unused.
        let mut running = self.running.lock().expect("not poisoned");
        Self::check_room(&running, addr.port())?;
        let metrics = self.metrics.listener(addr.to_string());
        let server = Server::new(tls, ServerOptions { mode: Mode::Echo, metrics, ..Default::default() });
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(server.clone().run(listener, async {
            let _ = stopped.await;
        }));
        info!(listen = %addr, started_by = %spec.started_by, tls = %spec.versions, "echo server started");
        running.insert(addr.port(), Running { spec, addr, server, stop, task });
        Ok(addr)
    }

    /// Stops the server on `port`; open sessions get close_notify.
    pub async fn stop(&self, port: u16) -> Result<SocketAddr, Failure> {
        let running = self.running.lock().expect("not poisoned").remove(&port);
        let Some(r) = running else {
            return Err(Failure::new(FailureClass::Usage, format!("no echo server runs on port {port}"), "see `server list`"));
        };
        let addr = r.addr;
        Self::finish(vec![r]).await;
        Ok(addr)
    }

    /// Stops every server, all at once.
    pub async fn stop_all(&self) {
        let all = std::mem::take(&mut *self.running.lock().expect("not poisoned"));
        Self::finish(all.into_values().collect()).await;
    }

    async fn finish(servers: Vec<Running>) {
        let mut tasks = Vec::new();
        for r in servers {
            let _ = r.stop.send(());
            tasks.push((r.addr, r.task));
        }
        for (addr, task) in tasks {
            let _ = task.await;
            info!(listen = %addr, "echo server stopped");
        }
    }

    /// The running servers, by port.
    pub fn list(&self) -> Vec<ServerStatus> {
        let running = self.running.lock().expect("not poisoned");
        running
            .values()
            .map(|r| {
                let s = &r.server.stats;
                ServerStatus {
                    addr: r.addr,
                    started_by: r.spec.started_by.clone(),
                    versions: r.spec.versions,
                    client_auth: r.spec.client_auth,
                    accepted: s.accepted.load(Ordering::Relaxed),
                    open: s.open.load(Ordering::Relaxed),
                    handshakes: s.handshakes.load(Ordering::Relaxed),
                    failed: s.failed.load(Ordering::Relaxed),
                    bytes_in: s.bytes_in.load(Ordering::Relaxed),
                    bytes_out: s.bytes_out.load(Ordering::Relaxed),
                }
            })
            .collect()
    }
}
