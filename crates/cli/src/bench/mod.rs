//! `sealtls bench`: our server against `openssl s_server` (and, as a proxy,
//! against haproxy, nginx and stunnel), same client load, same run, printed
//! as a table with ratios.
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use rustls::client::Resumption;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use sealtls_failure::{Failure, FailureClass};
use sealtls_pki::issue::{init_ca, issue_leaf, KeyType, LeafKind};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

mod failover;
mod keyless;
mod offload;
mod pkcs11;
pub mod proxy;

#[derive(Args)]
pub struct BenchArgs {
    /// handshake, throughput, offload, keyless, proxy, pkcs11 or all.
    #[arg(default_value = "all", value_parser = ["handshake", "throughput", "offload", "keyless", "proxy", "pkcs11", "all"])]
    what: String,
    /// Seconds of handshake load per server.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Concurrent handshaking clients.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Bytes sent one way in the throughput test.
    #[arg(long, default_value_t = 1 << 30)]
    bytes: u64,
    /// Parallel clients in the offload throughput test.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Small write+read round trips timed in the offload latency test.
    #[arg(long, default_value_t = 5000)]
    rounds: usize,
    /// Idle TLS connections held open in the proxy memory test.
    #[arg(long, default_value_t = 10_000)]
    idle_connections: usize,
    /// Connections that each echo 4 MiB, then idle, in the proxy memory test (0: skip).
    #[arg(long, default_value_t = 1000)]
    busy_connections: usize,
    /// Servers compared in the proxy test, comma-separated.
    #[arg(long, value_delimiter = ',', value_parser = clap::builder::PossibleValuesParser::new(proxy::NAMES), default_value = "sealtls,sealtls-keyd,haproxy,nginx,stunnel")]
    proxies: Vec<String>,
    /// The sealtls binary whose `serve --target` the proxy test measures (default: this one), to compare builds.
    #[arg(long)]
    server_binary: Option<std::path::PathBuf>,
    /// libsealtls_pkcs11.so for the pkcs11 test (default: next to this binary).
    #[arg(long, value_name = "FILE")]
    pkcs11_module: Option<std::path::PathBuf>,
    /// Also draw the keyless failover timeline into this PNG file.
    #[arg(long, value_name = "FILE")]
    chart: Option<std::path::PathBuf>,
    /// Print JSON for scripts.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Row {
    metric: String,
    sealtls: f64,
    openssl: f64,
    ratio: f64,
}

pub(crate) fn fail(what: String) -> Failure {
    Failure::new(FailureClass::Config, what, "install openssl and make sure loopback ports are free")
}

/// A server process that is killed when dropped.
pub(crate) struct Peer(Child);

impl Peer {
    /// Kills it at once (SIGKILL), as a crash would; it is reaped on drop.
    pub(crate) fn kill(&mut self) {
        let _ = self.0.kill();
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        // Asked to stop first: a killed nginx master leaves its workers running.
        let pid = rustix::process::Pid::from_child(&self.0);
        if rustix::process::kill_process(pid, rustix::process::Signal::TERM).is_ok() {
            for _ in 0..60 {
                if let Ok(Some(_)) = self.0.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn free_port() -> Result<SocketAddr, Failure> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| fail(format!("no free port: {e}")))?;
    l.local_addr().map_err(|e| fail(e.to_string()))
}

pub(crate) async fn wait_ready(addr: SocketAddr) -> Result<(), Failure> {
    for _ in 0..100 {
        if TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(fail(format!("the server under test did not listen on {addr}")))
}

#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Contender {
    Sealtls,
    Openssl,
}

pub(crate) async fn start(who: Contender, dir: &Path, sink: bool) -> Result<(Peer, SocketAddr), Failure> {
    let addr = free_port()?;
    let cert = dir.join("localhost.pem");
    let key = dir.join("localhost.key");
    let mut cmd = match who {
        Contender::Sealtls => {
            let mut c = Command::new(std::env::current_exe().map_err(|e| fail(e.to_string()))?);
            c.args(["serve", "--listen", &addr.to_string(), "--mode", if sink { "sink" } else { "echo" }]);
            c.arg("--cert").arg(&cert).arg("--key").arg(&key);
            c
        }
        Contender::Openssl => {
            let mut c = Command::new("openssl");
            c.args(["s_server", "-quiet", "-accept", &addr.to_string()]);
            c.arg("-cert").arg(&cert).arg("-key").arg(&key);
            c
        }
    };
    // s_server stops at end of stdin: hand it a pipe that stays open.
    let child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| fail(format!("cannot start server: {e}")))?;
    let peer = Peer(child);
    wait_ready(addr).await?;
    Ok((peer, addr))
}

pub(crate) fn client_config(dir: &Path) -> Result<Arc<ClientConfig>, Failure> {
    let mut roots = RootCertStore::empty();
    for cert in sealtls_pki::load_certs(&dir.join("ca.pem")).map_err(Failure::config)? {
        roots.add(cert).map_err(|e| fail(e.to_string()))?;
    }
    // Both servers get the same offer: TLS 1.3, X25519, no resumption.
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::X25519];
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| fail(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.resumption = Resumption::disabled();
    Ok(Arc::new(config))
}

pub(crate) async fn handshake_rate(addr: SocketAddr, config: Arc<ClientConfig>, seconds: u64, concurrency: usize) -> (f64, u64) {
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (config, done, failed) = (config.clone(), done.clone(), failed.clone());
            tokio::spawn(async move {
                let connector = TlsConnector::from(config);
                while Instant::now() < deadline {
                    let name = ServerName::try_from("localhost").expect("valid name");
                    let result = async {
                        let tcp = TcpStream::connect(addr).await?;
                        tcp.set_nodelay(true)?;
                        let mut tls = connector.connect(name, tcp).await?;
                        tls.shutdown().await
                    }
                    .await;
                    match result {
                        Ok(()) => done.fetch_add(1, Ordering::Relaxed),
                        Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    (done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64(), failed.load(Ordering::Relaxed))
}

async fn throughput(addr: SocketAddr, config: Arc<ClientConfig>, bytes: u64) -> Result<f64, Failure> {
    let net = |e: std::io::Error| Failure::new(FailureClass::Network, format!("throughput run failed: {e}"), "check the server under test");
    let tcp = TcpStream::connect(addr).await.map_err(net)?;
    tcp.set_nodelay(true).map_err(net)?;
    let name = ServerName::try_from("localhost").expect("valid name");
    let mut tls = TlsConnector::from(config).connect(name, tcp).await.map_err(net)?;
    let chunk = vec![0x5au8; 256 * 1024];
    let started = Instant::now();
    let mut sent = 0u64;
    while sent < bytes {
        let n = chunk.len().min((bytes - sent) as usize);
        tls.write_all(&chunk[..n]).await.map_err(net)?;
        sent += n as u64;
    }
    tls.shutdown().await.map_err(net)?;
    // The run ends when the server has read everything and closed.
    let mut rest = Vec::new();
    let _ = tls.read_to_end(&mut rest).await;
    Ok(bytes as f64 / (1024.0 * 1024.0) / started.elapsed().as_secs_f64())
}

pub async fn run(args: BenchArgs) -> Result<(), Failure> {
    let tmp = tempfile::tempdir().map_err(|e| fail(e.to_string()))?;
    let dir = tmp.path();
    init_ca(dir, "bench CA", KeyType::EcdsaP256, 2, false).map_err(Failure::config)?;
    issue_leaf(dir, LeafKind::Server, "localhost", &[], KeyType::EcdsaP256, 2, false).map_err(Failure::config)?;
    let config = client_config(dir)?;
    if args.what == "offload" {
        return offload::run(dir, config, &args).await;
    }
    if args.what == "keyless" {
        return keyless::run(dir, &args).await;
    }
    if args.what == "proxy" {
        return proxy::run(dir, &args).await;
    }
    if args.what == "pkcs11" {
        return pkcs11::run(dir, &args).await;
    }
    let mut rows = Vec::new();
    let contenders = [Contender::Sealtls, Contender::Openssl];

    if args.what != "throughput" {
        let mut rates = [0.0; 2];
        for (i, who) in contenders.iter().enumerate() {
            let (_peer, addr) = start(*who, dir, false).await?;
            handshake_rate(addr, config.clone(), 1, args.concurrency).await; // warm-up
            let (rate, failed) = handshake_rate(addr, config.clone(), args.seconds, args.concurrency).await;
            if failed > 0 {
                eprintln!("note: {failed} handshakes failed against {}", if *who == Contender::Sealtls { "sealtls" } else { "openssl" });
            }
            rates[i] = rate;
        }
        rows.push(Row {
            metric: "TLS 1.3 ECDSA P-256 full handshakes/s".into(),
            sealtls: rates[0],
            openssl: rates[1],
            ratio: rates[0] / rates[1],
        });
    }
    if args.what != "handshake" {
        let mut rates = [0.0; 2];
        for (i, who) in contenders.iter().enumerate() {
            let (_peer, addr) = start(*who, dir, true).await?;
            rates[i] = throughput(addr, config.clone(), args.bytes).await?;
        }
        let gib = args.bytes as f64 / (1u64 << 30) as f64;
        rows.push(Row {
            metric: format!("one-way throughput, {gib:.2} GiB, MiB/s"),
            sealtls: rates[0],
            openssl: rates[1],
            ratio: rates[0] / rates[1],
        });
    }

    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows).expect("rows serialise"));
    } else {
        println!("{:<42} {:>12} {:>18} {:>8}", "benchmark", "sealtls", "openssl s_server", "ratio");
        for r in &rows {
            println!("{:<42} {:>12.1} {:>18.1} {:>7.2}x", r.metric, r.sealtls, r.openssl, r.ratio);
        }
        println!("(same client in this process for both: TLS 1.3, X25519, no resumption, {} concurrent handshakes)", args.concurrency);
    }
    if args.what == "all" {
        offload::run(dir, config, &args).await?;
        keyless::run(dir, &args).await?;
        proxy::run(dir, &args).await?;
        pkcs11::run(dir, &args).await?;
    }
    Ok(())
}
