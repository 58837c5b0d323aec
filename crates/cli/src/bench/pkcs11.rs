//! `sealtls bench pkcs11`: nginx with its private key in a file against the
//! same nginx signing through libsealtls_pkcs11.so and a local keyd, same
//! client load from a separate process (TLS 1.3, ECDSA P-256, full
//! handshakes), in one run.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use sealtls_failure::{Failure, FailureClass};
use serde::Serialize;

use super::keyless::{put_key, start_keyd};
use super::proxy::run_client;
use super::{fail, free_port, wait_ready, BenchArgs, Peer};

/// The handshake loads compared.
const CONCURRENCY: [usize; 2] = [16, 64];

#[derive(Serialize)]
struct Row {
    concurrency: usize,
    key_file: f64,
    keyd_module: f64,
    ratio: f64,
    failed: u64,
}

fn missing(what: String, fix: &str) -> Failure {
    Failure::new(FailureClass::Config, what, fix)
}

fn nginx() -> Result<PathBuf, Failure> {
    let path = PathBuf::from("/usr/sbin/nginx");
    if path.exists() {
        return Ok(path);
    }
    Err(missing("nginx is not installed (/usr/sbin/nginx)".into(), "apt-get install nginx"))
}

/// nginx terminating TLS 1.3 with the bench certificate and `key` (a file, or
/// an engine URI), two workers, on a free port.
async fn start_nginx(
    program: &Path,
    dir: &Path,
    name: &str,
    key: &str,
    openssl_conf: &Path,
    keyd: &Path,
) -> Result<(Peer, SocketAddr), Failure> {
    let addr = free_port()?;
    let prefix = dir.join(name);
    std::fs::create_dir_all(prefix.join("logs")).map_err(|e| fail(format!("{}: {e}", prefix.display())))?;
    let d = |f: &str| prefix.join(f).display().to_string();
    // As root, workers would run as nobody and could not reach keyd's socket (0660, keyd's user).
    let user = if rustix::process::geteuid().is_root() { "user root;\n" } else { "" };
    let conf = format!(
        "{user}worker_processes 2;\ndaemon off;\npid {pid};\nerror_log {log} error;\nevents {{ worker_connections 1024; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {tmp}; proxy_temp_path {tmp}; fastcgi_temp_path {tmp}; uwsgi_temp_path {tmp}; scgi_temp_path {tmp};\n\
         server {{\n    listen {addr} ssl;\n    ssl_protocols TLSv1.3;\n    ssl_certificate {cert};\n    ssl_certificate_key \"{key}\";\n\
         location / {{ return 200; }}\n  }}\n}}\n",
        pid = d("nginx.pid"),
        log = d("logs/error.log"),
        tmp = d("tmp"),
        cert = dir.join("localhost.pem").display(),
    );
    std::fs::write(prefix.join("nginx.conf"), conf).map_err(|e| fail(e.to_string()))?;
    let child = Command::new(program)
        .arg("-p")
        .arg(&prefix)
        .args(["-c", &d("nginx.conf"), "-e", &d("logs/error.log")])
        .env("OPENSSL_CONF", openssl_conf)
        // The master reads the module's settings; its workers inherit them.
        .env("SEALTLS_PKCS11_KEYD", format!("unix:{}", keyd.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| fail(format!("cannot start nginx: {e}")))?;
    let peer = Peer(child);
    wait_ready(addr).await.map_err(|_| {
        let log = std::fs::read_to_string(prefix.join("logs/error.log")).unwrap_or_default();
        fail(format!("nginx ({name}) did not listen on {addr}: {}", log.trim()))
    })?;
    // Let both workers start before the load does.
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok((peer, addr))
}

/// Rounds per load: the two servers take turns, so that a machine that
/// slows down for a while slows both.
const ROUNDS: usize = 3;

/// Median handshakes per second of [`ROUNDS`] runs against each address at
/// `concurrency`, taking turns, and how many handshakes failed in all.
async fn take_turns(addrs: [SocketAddr; 2], dir: &Path, seconds: u64, concurrency: usize) -> Result<([f64; 2], u64), Failure> {
    let mut runs = [Vec::new(), Vec::new()];
    let mut failed = 0;
    for _ in 0..ROUNDS {
        for (i, addr) in addrs.iter().enumerate() {
            let extra = ["--seconds".into(), seconds.to_string(), "--concurrency".into(), concurrency.to_string()];
            let m = run_client("handshakes", *addr, dir, &extra).await?;
            runs[i].push(m.value);
            failed += m.failed;
        }
    }
    Ok((runs.map(|mut r| super::offload::median(&mut r)), failed))
}

pub(super) async fn run(dir: &Path, args: &BenchArgs) -> Result<(), Failure> {
    let (program, module) = (nginx()?, crate::pkcs11::module(args.pkcs11_module.clone())?);
    let openssl_conf = dir.join("openssl-pkcs11.cnf");
    std::fs::write(&openssl_conf, crate::pkcs11::openssl_conf(&module)?).map_err(|e| fail(e.to_string()))?;
    let key_der = sealtls_pki::load_key(&dir.join("localhost.key")).map_err(Failure::config)?;
    let chain: Vec<Vec<u8>> =
        sealtls_pki::load_certs(&dir.join("localhost.pem")).map_err(Failure::config)?.iter().map(|c| c.to_vec()).collect();
    let (_keyd, socket, _) = start_keyd(dir, "keyd-pkcs11", None).await?;
    put_key(&socket, key_der.secret_der(), &chain).await?;

    let (_with_file, file) =
        start_nginx(&program, dir, "nginx-file", &dir.join("localhost.key").display().to_string(), &openssl_conf, &socket).await?;
    let uri = "engine:pkcs11:pkcs11:token=sealtls;object=localhost;type=private";
    let (_with_keyd, keyd) = start_nginx(&program, dir, "nginx-keyd", uri, &openssl_conf, &socket).await?;
    let mut rows = Vec::new();
    for concurrency in CONCURRENCY {
        eprintln!("pkcs11: {concurrency} concurrent, {ROUNDS} rounds each: nginx with the key file, then through {}", module.display());
        let ([key_file, keyd_module], failed) = take_turns([file, keyd], dir, args.seconds, concurrency).await?;
        rows.push(Row { concurrency, key_file, keyd_module, ratio: keyd_module / key_file, failed });
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows).expect("rows serialise"));
        return Ok(());
    }
    println!("{:<46} {:>14} {:>16} {:>8}", "nginx, TLS 1.3 ECDSA P-256 full handshakes/s", "key in a file", "keyd via PKCS#11", "ratio");
    for r in &rows {
        println!("{:<46} {:>14.1} {:>16.1} {:>7.2}x", format!("{} concurrent", r.concurrency), r.key_file, r.keyd_module, r.ratio);
        if r.failed > 0 {
            println!("  note: {} handshakes failed", r.failed);
        }
    }
    println!(
        "(medians of {ROUNDS} alternating runs; same nginx, 2 workers; client in a separate process: TLS 1.3, X25519, \
         no resumption, certificate verified; keyd local over its Unix socket)"
    );
    Ok(())
}
