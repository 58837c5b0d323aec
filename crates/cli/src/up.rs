//! `sealtls up`: the whole stack on loopback, from a development data directory.
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;

use clap::Args;
use sealtls_endpoint::net::bind;
use sealtls_endpoint::server::{Mode, Server, ServerOptions};
use sealtls_endpoint::{ClientAuthMode, Failure, TlsVersions};
use sealtls_pki::issue::{init_ca, issue_leaf, KeyType, LeafKind};
use tokio::sync::watch;
use tracing::info;

use crate::endpoints::{server_tls, shutdown_signal, ServerFiles};

#[derive(Args)]
pub struct UpArgs {
    /// Data directory; created with a development PKI when missing.
    #[arg(long, default_value = "sealtls-data")]
    data_dir: PathBuf,
    /// Echo server address.
    #[arg(long, default_value = "127.0.0.1:10007")]
    echo_listen: SocketAddr,
}

/// Creates the development PKI in `dir` unless it is already there.
pub fn ensure_dev_pki(dir: &Path) -> Result<(), Failure> {
    if dir.join("ca.pem").exists() {
        return Ok(());
    }
    info!(dir = %dir.display(), "creating a development PKI");
    init_ca(dir, "sealtls development CA", KeyType::EcdsaP256, 3650, false).map_err(Failure::config)?;
    issue_leaf(dir, LeafKind::Server, "localhost", &[], KeyType::EcdsaP256, 365, false).map_err(Failure::config)?;
    issue_leaf(dir, LeafKind::Client, "client", &[], KeyType::EcdsaP256, 365, false).map_err(Failure::config)?;
    Ok(())
}

type ServiceFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// One running part of the stack: its name, where it listens, and the task.
struct Service {
    name: &'static str,
    address: String,
    task: ServiceFuture,
}

async fn echo_service(dir: &Path, addr: SocketAddr, stop: watch::Receiver<bool>) -> Result<Service, Failure> {
    let files = ServerFiles { cert: dir.join("localhost.pem"), key: dir.join("localhost.key"), ca: Some(dir.join("ca.pem")) };
    let tls = server_tls(&files, Some(ClientAuthMode::Optional), TlsVersions::Any)?;
    let listener = bind(addr).await?;
    let server = Server::new(tls, ServerOptions { mode: Mode::Echo, ..Default::default() });
    Ok(Service { name: "TLS echo server", address: addr.to_string(), task: Box::pin(server.run(listener, stopped(stop))) })
}

async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

pub async fn run(args: UpArgs) -> Result<(), Failure> {
    let dir = &args.data_dir;
    ensure_dev_pki(dir)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let services = vec![echo_service(dir, args.echo_listen, stop_rx.clone()).await?];

    println!("sealtls is up (data in {}):", dir.display());
    for s in &services {
        println!("  {:<18} {}", s.name, s.address);
    }
    let d = dir.display();
    println!("try:");
    println!("  openssl s_client -connect {} -CAfile {d}/ca.pem", args.echo_listen);
    println!("  sealtls connect {} --server-name localhost --ca {d}/ca.pem --cert {d}/client.pem --key {d}/client.key --send hello", args.echo_listen);
    println!("stop with Ctrl-C");

    let handles: Vec<_> = services.into_iter().map(|s| tokio::spawn(s.task)).collect();
    shutdown_signal().await;
    info!("stopping");
    let _ = stop_tx.send(true);
    for h in handles {
        let _ = h.await;
    }
    info!("stopped");
    Ok(())
}
