//! `sealtls bench keyless`: keyd's signing rate against raw aws-lc-rs, and
//! keyless handshakes against the same server holding its key and against
//! openssl s_server, locally and with keyd 1 ms away, all in one run.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sealtls_custody_proto::{KeyId, Request, Response, Scheme, Selector};
use sealtls_failure::Failure;
use sealtls_keyless::{KeydClient, KeydEndpoint};
use sealtls_pki::issue::{issue_leaf, KeyType, LeafKind};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{client_config, fail, failover, free_port, handshake_rate, start, wait_ready, BenchArgs, Contender, Peer};

/// Requests in flight in the signing test.
const SIGN_WINDOW: usize = 256;
/// Added one-way latency between a remote edge and keyd.
const ONE_WAY: Duration = Duration::from_millis(1);
/// Concurrent handshakes in the remote test.
const REMOTE_CONCURRENCY: usize = 64;

#[derive(Serialize)]
struct Row {
    metric: String,
    value: f64,
    against: String,
    reference: f64,
    ratio: f64,
}

fn exe() -> Result<PathBuf, Failure> {
    std::env::current_exe().map_err(|e| fail(e.to_string()))
}

/// Starts keyd on the store `dir/NAME` (its own device secret), optionally
/// on one CPU, with a mutual-TLS listener.
pub(super) async fn start_keyd(dir: &Path, name: &str, cpu: Option<usize>) -> Result<(Peer, PathBuf, SocketAddr), Failure> {
    let store = dir.join(name);
    let socket = store.join("keyd.sock");
    let tls = free_port()?;
    let mut cmd = match cpu {
        Some(c) => {
            let mut t = Command::new("taskset");
            t.args(["-c", &c.to_string()]).arg(exe()?);
            t
        }
        None => Command::new(exe()?),
    };
    cmd.arg("keyd")
        .arg("--data-dir")
        .arg(store.join("data"))
        .arg("--device-key")
        .arg(store.join("device.key"))
        .arg("--socket")
        .arg(&socket);
    cmd.args(["--listen-tls", &tls.to_string()])
        .arg("--tls-cert")
        .arg(dir.join("localhost.pem"))
        .arg("--tls-key")
        .arg(dir.join("localhost.key"));
    cmd.arg("--client-ca").arg(dir.join("ca.pem"));
    let child = cmd
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| fail(format!("cannot start keyd: {e}")))?;
    let peer = Peer(child);
    wait_ready(tls).await?;
    Ok((peer, socket, tls))
}

/// Installs the bench key in the keyd at `socket`.
pub(super) async fn put_key(socket: &Path, key_der: &[u8], chain: &[Vec<u8>]) -> Result<KeyId, Failure> {
    let admin = KeydClient::new(KeydEndpoint::Unix(socket.to_owned()), 1, Duration::from_secs(10));
    let put = Request::Put { domain: "localhost".into(), key: zeroize::Zeroizing::new(key_der.to_vec()), chain: chain.to_vec() };
    match admin.call(&put).await {
        Ok(Response::Stored(id)) => Ok(id),
        _ => Err(fail("keyd did not take the bench key".into())),
    }
}

/// `--keyd` flags for an edge reaching keyds over mutual TLS at `ports`.
fn remote_flags(dir: &Path, ports: &[u16]) -> Vec<String> {
    let d = |f: &str| dir.join(f).display().to_string();
    let mut flags: Vec<String> = ports.iter().flat_map(|p| ["--keyd".into(), format!("tls://localhost:{p}")]).collect();
    flags.extend(["--keyd-ca".into(), d("ca.pem"), "--keyd-cert".into(), d("edge.pem"), "--keyd-key".into(), d("edge.key")]);
    flags
}

/// `sealtls serve --keyd ...` on a free port.
async fn start_keyless(keyd: &[String]) -> Result<(Peer, SocketAddr), Failure> {
    let addr = free_port()?;
    let child = Command::new(exe()?)
        .args(["serve", "--listen", &addr.to_string(), "--mode", "echo"])
        .args(keyd)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| fail(format!("cannot start the keyless server: {e}")))?;
    let peer = Peer(child);
    wait_ready(addr).await?;
    Ok((peer, addr))
}

/// Signatures per second through keyd with `SIGN_WINDOW` requests in
/// flight, the load generated on CPU 1 (keyd is on CPU 0).
fn keyd_sign_rate(socket: PathBuf, key: KeyId, seconds: u64) -> f64 {
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).on_thread_start(|| pin_to(1)).enable_all().build().expect("runtime");
    runtime.block_on(async move {
        let client = KeydClient::new(KeydEndpoint::Unix(socket), 2, Duration::from_secs(10));
        let done = Arc::new(AtomicU64::new(0));
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let started = Instant::now();
        let tasks: Vec<_> = (0..SIGN_WINDOW)
            .map(|i| {
                let (client, done) = (client.clone(), done.clone());
                tokio::spawn(async move {
                    let request = Request::Sign { key: Selector::KeyId(key), scheme: Scheme::EcdsaP256Sha256, message: vec![i as u8; 130] };
                    while Instant::now() < deadline {
                        if matches!(client.call(&request).await, Ok(Response::Signature(_))) {
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for t in tasks {
            let _ = t.await;
        }
        done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
    })
}

/// ECDSA P-256 signatures per second by aws-lc-rs on one thread on CPU 0.
fn raw_sign_rate(key_der: &[u8], seconds: u64) -> f64 {
    use aws_lc_rs::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
    pin_to(0);
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, key_der).expect("bench key parses");
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < Duration::from_secs(seconds) {
        for _ in 0..100 {
            let _ = key.sign(&rng, &[7u8; 130]);
        }
        n += 100;
    }
    n as f64 / started.elapsed().as_secs_f64()
}

fn pin_to(cpu: usize) {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    let _ = rustix::thread::sched_setaffinity(None, &set);
}

/// Forwards TCP connections to `upstream`, holding every chunk `ONE_WAY` in each direction.
async fn delaying_proxy(upstream: SocketAddr) -> Result<SocketAddr, Failure> {
    let listener = TcpListener::bind("127.0.0.1:0").await.map_err(|e| fail(e.to_string()))?;
    let addr = listener.local_addr().map_err(|e| fail(e.to_string()))?;
    tokio::spawn(async move {
        while let Ok((down, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(up) = TcpStream::connect(upstream).await else { return };
                let _ = (down.set_nodelay(true), up.set_nodelay(true));
                let (dr, dw) = down.into_split();
                let (ur, uw) = up.into_split();
                tokio::join!(delayed_pump(dr, uw), delayed_pump(ur, dw));
            });
        }
    });
    Ok(addr)
}

async fn delayed_pump(mut from: tokio::net::tcp::OwnedReadHalf, mut to: tokio::net::tcp::OwnedWriteHalf) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let writer = tokio::spawn(async move {
        while let Some((due, bytes)) = rx.recv().await {
            tokio::time::sleep_until(due.into()).await;
            if to.write_all(&bytes).await.is_err() {
                break;
            }
        }
    });
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 || tx.send((Instant::now() + ONE_WAY, buf[..n].to_vec())).is_err() {
            break;
        }
    }
    drop(tx);
    let _ = writer.await;
}

pub async fn run(dir: &Path, args: &BenchArgs) -> Result<(), Failure> {
    issue_leaf(dir, LeafKind::Client, "edge", &[], KeyType::EcdsaP256, 2, false).map_err(Failure::config)?;
    let config = client_config(dir)?;
    let key_der = sealtls_pki::load_key(&dir.join("localhost.key")).map_err(Failure::config)?;
    let chain: Vec<Vec<u8>> =
        sealtls_pki::load_certs(&dir.join("localhost.pem")).map_err(Failure::config)?.iter().map(|c| c.to_vec()).collect();
    let mut rows = Vec::new();

    // 1. Signatures per second, keyd alone on CPU 0.
    {
        let (_keyd, socket, _) = start_keyd(dir, "keyd-a", Some(0)).await?;
        let id = put_key(&socket, key_der.secret_der(), &chain).await?;
        let seconds = args.seconds;
        let keyd_rate = tokio::task::spawn_blocking(move || keyd_sign_rate(socket, id, seconds)).await.map_err(|e| fail(e.to_string()))?;
        let der = key_der.secret_der().to_vec();
        let raw = tokio::task::spawn_blocking(move || raw_sign_rate(&der, seconds)).await.map_err(|e| fail(e.to_string()))?;
        rows.push(Row {
            metric: "keyd ECDSA P-256 signatures/s, 1 core, Unix socket".into(),
            value: keyd_rate,
            against: "raw aws-lc-rs, 1 thread".into(),
            reference: raw,
            ratio: keyd_rate / raw,
        });
    }

    // 2. Full handshakes: keyless with keyd local, the key in-process, openssl s_server.
    let (keyd_a, socket, keyd_tls) = start_keyd(dir, "keyd-a", None).await?;
    let rate = |addr: SocketAddr, concurrency: usize| {
        let config = config.clone();
        async move {
            handshake_rate(addr, config.clone(), 1, concurrency).await;
            handshake_rate(addr, config, args.seconds, concurrency).await.0
        }
    };
    let keyless_local = {
        let (_server, addr) = start_keyless(&["--keyd".into(), format!("unix:{}", socket.display())]).await?;
        rate(addr, args.concurrency).await
    };
    let in_process = {
        let (_server, addr) = start(Contender::Sealtls, dir, false).await?;
        rate(addr, args.concurrency).await
    };
    let openssl = {
        let (_server, addr) = start(Contender::Openssl, dir, false).await?;
        rate(addr, args.concurrency).await
    };
    rows.push(Row {
        metric: "TLS 1.3 handshakes/s, keyless (local keyd)".into(),
        value: keyless_local,
        against: "key in-process".into(),
        reference: in_process,
        ratio: keyless_local / in_process,
    });
    rows.push(Row {
        metric: "TLS 1.3 handshakes/s, keyless (local keyd)".into(),
        value: keyless_local,
        against: "openssl s_server".into(),
        reference: openssl,
        ratio: keyless_local / openssl,
    });

    // 3. keyd over mutual TLS, 1 ms away each way, against keyd local, both at 64 concurrent handshakes.
    let local64 = {
        let (_server, addr) = start_keyless(&["--keyd".into(), format!("unix:{}", socket.display())]).await?;
        rate(addr, REMOTE_CONCURRENCY).await
    };
    let proxy = delaying_proxy(keyd_tls).await?;
    let remote64 = {
        let (_server, addr) = start_keyless(&remote_flags(dir, &[proxy.port()])).await?;
        rate(addr, REMOTE_CONCURRENCY).await
    };
    rows.push(Row {
        metric: "handshakes/s, keyd 1 ms away (mTLS), 64 conc.".into(),
        value: remote64,
        against: "keyd local, 64 conc.".into(),
        reference: local64,
        ratio: remote64 / local64,
    });

    // 4. A second keyd with the same key: what it costs while healthy, locally and 1 ms away.
    let (keyd_b, socket_b, keyd_b_tls) = start_keyd(dir, "keyd-b", None).await?;
    put_key(&socket_b, key_der.secret_der(), &chain).await?;
    let both_local = ["--keyd".into(), format!("unix:{}", socket.display()), "--keyd".into(), format!("unix:{}", socket_b.display())];
    let two_local = {
        let (_server, addr) = start_keyless(&both_local).await?;
        rate(addr, args.concurrency).await
    };
    rows.push(Row {
        metric: "TLS 1.3 handshakes/s, two local keyds".into(),
        value: two_local,
        against: "one local keyd".into(),
        reference: keyless_local,
        ratio: two_local / keyless_local,
    });
    let proxy_b = delaying_proxy(keyd_b_tls).await?;
    let two_remote = {
        let (_server, addr) = start_keyless(&remote_flags(dir, &[proxy.port(), proxy_b.port()])).await?;
        rate(addr, REMOTE_CONCURRENCY).await
    };
    rows.push(Row {
        metric: "handshakes/s, two keyds 1 ms away (mTLS), 64 conc.".into(),
        value: two_remote,
        against: "one keyd local, 64 conc.".into(),
        reference: local64,
        ratio: two_remote / local64,
    });

    // 5. One of two keyds SIGKILLed under load: handshakes per 100 ms around it.
    let timeline = {
        let (_server, addr) = start_keyless(&both_local).await?;
        handshake_rate(addr, config.clone(), 1, args.concurrency).await;
        let total = Duration::from_secs(args.seconds.max(3));
        failover::run(addr, config.clone(), args.concurrency, total, total / 3, keyd_a).await
    };
    drop(keyd_b);
    let failed: u64 = timeline.failed.iter().sum();
    rows.push(Row {
        metric: "failed handshakes around a keyd SIGKILL".into(),
        value: failed as f64,
        against: "handshakes that succeeded".into(),
        reference: timeline.ok.iter().sum::<u64>() as f64,
        ratio: failed as f64 / timeline.ok.iter().sum::<u64>().max(1) as f64,
    });
    if let Some(file) = &args.chart {
        failover::png_chart(&timeline, file)?;
    }

    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows).expect("rows serialise"));
    } else {
        println!("{:<48} {:>10}   {:<26} {:>10} {:>8}", "benchmark", "value", "against", "value", "ratio");
        for r in &rows {
            println!("{:<48} {:>10.0}   {:<26} {:>10.0} {:>7.2}x", r.metric, r.value, r.against, r.reference, r.ratio);
        }
        println!("(handshakes: TLS 1.3, ECDSA P-256, X25519, no resumption, {} concurrent unless noted; gokeyless publishes about 10,000 signatures/s per core)", args.concurrency);
        println!();
        print!("{}", failover::text_chart(&timeline));
        println!(
            "failures went on for {} ms after the kill; the slowest handshake took {} ms{}",
            timeline.failure_window().as_millis(),
            timeline.slowest_ms,
            args.chart.as_ref().map(|f| format!("; chart written to {}", f.display())).unwrap_or_default()
        );
    }
    Ok(())
}
