//! `sealtls bench proxy`: `sealtls serve --target` against the TLS
//! terminating proxies a user would pick instead (haproxy, nginx's stream
//! module, stunnel), each in front of the same plain TCP backend with the
//! same certificate, driven by the same client load from a separate process,
//! in one run.
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use rustls::ClientConfig;
use sealtls_failure::{Failure, FailureClass};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::offload::{direct, median, round_trip};
use super::{client_config, fail, free_port, handshake_rate, wait_ready, BenchArgs, Peer};

/// The second handshake load, besides `--concurrency`.
const HIGH_CONCURRENCY: usize = 256;
/// Bytes each connection of the busy memory test echoes before going idle.
const BUSY_BYTES: u64 = 4 << 20;
/// Connections the client opens at once in the memory tests.
const OPEN_PARALLEL: usize = 64;
const GIB: f64 = (1u64 << 30) as f64;
/// Untimed round trips before the timed ones.
const WARM_UP: usize = 500;
/// First byte a client sends to the backend: count the bytes announced, then answer `DONE`.
const SINK: u8 = b'S';
/// First byte a client sends to the backend: echo everything.
const ECHO: u8 = b'E';
/// The sink's answer once every announced byte has arrived.
const DONE: u8 = b'K';

/// The servers compared; `sealtls serve --target` first, with its key and
/// then keyless (the key in a keyd on this machine).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Proxy {
    Sealtls,
    SealtlsKeyd,
    Haproxy,
    Nginx,
    Stunnel,
}

impl Proxy {
    const ALL: [Proxy; 5] = [Proxy::Sealtls, Proxy::SealtlsKeyd, Proxy::Haproxy, Proxy::Nginx, Proxy::Stunnel];

    fn name(self) -> &'static str {
        NAMES[self as usize]
    }
}

/// The servers' names for `--proxies`, in the order of [`Proxy::ALL`].
pub(super) const NAMES: [&str; 5] = ["sealtls", KEYLESS, "haproxy", "nginx", "stunnel"];

/// The name of `serve --target --keyd` in the table.
const KEYLESS: &str = "sealtls-keyd";

/// Where, under the bench directory, the keyless server's keyd keeps its store and socket.
const KEYD_STORE: &str = "proxy-keyd";

/// `sealtls bench-client`: one client load, run in its own process so that
/// the servers' figures do not include the client's work or memory.
#[derive(Args)]
pub struct ClientArgs {
    /// handshakes, throughput, latency or hold.
    #[arg(value_parser = ["handshakes", "throughput", "latency", "hold"])]
    job: String,
    /// The server under test.
    #[arg(long)]
    addr: SocketAddr,
    /// The bench directory (its ca.pem is trusted).
    #[arg(long)]
    dir: PathBuf,
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Bytes: sent one way (throughput) or echoed per connection (hold).
    #[arg(long, default_value_t = 0)]
    bytes: u64,
    #[arg(long, default_value_t = 1000)]
    rounds: usize,
    /// Connections held open (hold).
    #[arg(long, default_value_t = 0)]
    count: usize,
}

/// What a client job prints, one JSON line.
#[derive(Serialize, Deserialize, Default)]
pub(super) struct Measured {
    pub(super) value: f64,
    second: f64,
    pub(super) failed: u64,
}

fn broken(e: impl std::fmt::Display) -> Failure {
    Failure::new(FailureClass::Network, format!("benchmark connection failed: {e}"), "check the proxy under test")
}

fn print(m: &Measured) {
    println!("{}", serde_json::to_string(m).expect("figures serialise"));
}

/// Runs one client job and prints its figures.
pub async fn client(args: ClientArgs) -> Result<(), Failure> {
    let config = client_config(&args.dir)?;
    match args.job.as_str() {
        "handshakes" => {
            handshake_rate(args.addr, config.clone(), 1, args.concurrency).await; // warm-up
            let (rate, failed) = handshake_rate(args.addr, config, args.seconds, args.concurrency).await;
            print(&Measured { value: rate, second: 0.0, failed });
        }
        "throughput" => print(&Measured { value: one_way(args.addr, config, args.bytes).await?, ..Default::default() }),
        "latency" => {
            let (p50, p99) = echo_latency(args.addr, config, args.rounds).await?;
            print(&Measured { value: p50, second: p99, failed: 0 });
        }
        _ => hold(args.addr, config, args.count, args.bytes).await?,
    }
    Ok(())
}

/// MiB/s of `bytes` sent one way into the backend, until it confirms the last byte.
async fn one_way(addr: SocketAddr, config: Arc<ClientConfig>, bytes: u64) -> Result<f64, Failure> {
    let mut tls = direct(addr, config).await?;
    let chunk = vec![0x5au8; 256 * 1024];
    let started = Instant::now();
    tls.write_all(&[SINK]).await.map_err(broken)?;
    tls.write_u64(bytes).await.map_err(broken)?;
    let mut sent = 0u64;
    while sent < bytes {
        let n = chunk.len().min((bytes - sent) as usize);
        tls.write_all(&chunk[..n]).await.map_err(broken)?;
        sent += n as u64;
    }
    tls.flush().await.map_err(broken)?;
    let mut done = [0u8];
    tls.read_exact(&mut done).await.map_err(broken)?;
    if done[0] != DONE {
        return Err(broken("the backend did not confirm the bytes"));
    }
    Ok(bytes as f64 / (1024.0 * 1024.0) / started.elapsed().as_secs_f64())
}

/// p50 and p99 of small echo round trips through the proxy, microseconds.
async fn echo_latency(addr: SocketAddr, config: Arc<ClientConfig>, rounds: usize) -> Result<(f64, f64), Failure> {
    let mut tls = direct(addr, config).await?;
    tls.write_all(&[ECHO]).await.map_err(broken)?;
    let mut times = Vec::with_capacity(rounds);
    for i in 0..WARM_UP + rounds.max(1) {
        let t = round_trip(&mut tls).await?;
        if i >= WARM_UP {
            times.push(t);
        }
    }
    let p50 = median(&mut times);
    Ok((p50, times[(times.len() * 99 / 100).min(times.len() - 1)]))
}

/// Opens `count` connections, echoes `bytes` through each (64 KiB at a
/// time) and one small round trip, so that every path reaches the backend;
/// prints how many are open, then holds them until stdin closes.
async fn hold(addr: SocketAddr, config: Arc<ClientConfig>, count: usize, bytes: u64) -> Result<(), Failure> {
    let gate = Arc::new(Semaphore::new(OPEN_PARALLEL));
    let tasks: Vec<_> = (0..count)
        .map(|_| {
            let (gate, config) = (gate.clone(), config.clone());
            tokio::spawn(async move {
                let _permit = gate.acquire_owned().await.expect("never closed");
                let mut tls = direct(addr, config).await?;
                tls.write_all(&[ECHO]).await.map_err(broken)?;
                let mut buf = vec![0x33u8; 64 * 1024];
                let mut left = bytes;
                while left > 0 {
                    let n = buf.len().min(left as usize);
                    tls.write_all(&buf[..n]).await.map_err(broken)?;
                    tls.flush().await.map_err(broken)?;
                    tls.read_exact(&mut buf[..n]).await.map_err(broken)?;
                    left -= n as u64;
                }
                round_trip(&mut tls).await?;
                Ok::<_, Failure>(tls)
            })
        })
        .collect();
    let mut open = Vec::with_capacity(count);
    let mut failed = 0;
    for t in tasks {
        match t.await {
            Ok(Ok(tls)) => open.push(tls),
            _ => failed += 1,
        }
    }
    print(&Measured { value: open.len() as f64, second: 0.0, failed });
    let mut rest = Vec::new();
    let _ = tokio::io::stdin().read_to_end(&mut rest).await;
    drop(open);
    Ok(())
}

/// The plain TCP backend every proxy forwards to, in this process. A
/// connection's first byte says what it wants: `SINK` (then a u64 count) or
/// `ECHO`.
async fn backend() -> Result<(SocketAddr, tokio::task::JoinHandle<()>), Failure> {
    let listener = TcpListener::bind("127.0.0.1:0").await.map_err(|e| fail(format!("backend: {e}")))?;
    let addr = listener.local_addr().map_err(|e| fail(e.to_string()))?;
    let task = tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((tcp, _)) => drop(tokio::spawn(serve_backend(tcp))),
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    });
    Ok((addr, task))
}

async fn serve_backend(mut tcp: TcpStream) -> std::io::Result<()> {
    let _ = tcp.set_nodelay(true);
    let mut kind = [0u8];
    if tcp.read(&mut kind).await? == 0 {
        return Ok(());
    }
    if kind[0] == SINK {
        let mut left = tcp.read_u64().await?;
        let mut buf = vec![0u8; 256 * 1024];
        while left > 0 {
            let n = tcp.read(&mut buf[..left.min(256 * 1024) as usize]).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            left -= n as u64;
        }
        return tcp.write_all(&[DONE]).await;
    }
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = tcp.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        tcp.write_all(&buf[..n]).await?;
    }
}

/// Raises this process's descriptor limit (children inherit it) to `want`,
/// or as far as allowed; returns the limit in force.
fn raise_fd_limit(want: u64) -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let now = getrlimit(Resource::Nofile);
    let Some(current) = now.current else { return want };
    if current >= want {
        return current;
    }
    let hard = now.maximum.unwrap_or(u64::MAX);
    if setrlimit(Resource::Nofile, Rlimit { current: Some(want), maximum: Some(want.max(hard)) }).is_ok() {
        return want;
    }
    let _ = setrlimit(Resource::Nofile, Rlimit { current: Some(hard), maximum: Some(hard) });
    getrlimit(Resource::Nofile).current.unwrap_or(want)
}

/// Where a peer's program is, or why it is skipped.
fn find_peer(who: Proxy, args: &BenchArgs) -> Result<PathBuf, String> {
    let names: &[&str] = match who {
        Proxy::Sealtls | Proxy::SealtlsKeyd => {
            return args.server_binary.clone().map_or_else(|| std::env::current_exe().map_err(|e| e.to_string()), Ok)
        }
        Proxy::Haproxy => &["haproxy"],
        Proxy::Nginx => &["nginx"],
        Proxy::Stunnel => &["stunnel4", "stunnel"],
    };
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> = std::env::split_paths(&path).chain(["/usr/sbin".into(), "/usr/bin".into()]).collect();
    let found = names.iter().flat_map(|n| dirs.iter().map(move |d| d.join(n))).find(|p| p.is_file());
    match (who, found) {
        (Proxy::Nginx, Some(_)) if !Path::new(NGINX_STREAM).is_file() => {
            Err(format!("{NGINX_STREAM} is missing (apt-get install libnginx-mod-stream)"))
        }
        (_, Some(p)) => Ok(p),
        (Proxy::Stunnel, None) => Err("not installed (apt-get install stunnel4)".into()),
        (_, None) => Err(format!("not installed (apt-get install {})", who.name())),
    }
}

const NGINX_STREAM: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";

/// The TLS 1.3 suites every server is told to prefer, in sealtls's own order,
/// so that all of them negotiate the same one (TLS_AES_128_GCM_SHA256) with
/// the bench client, which offers AES-256-GCM first.
const SUITES: &str = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256";

/// Starts `who` on a free port, terminating TLS 1.3 with the bench
/// certificate and forwarding to `backend`, ready for `max_conn` clients.
async fn start_proxy(who: Proxy, program: &Path, dir: &Path, backend: SocketAddr, max_conn: usize) -> Result<(Peer, SocketAddr), Failure> {
    let addr = free_port()?;
    let d = |f: &str| dir.join(f).display().to_string();
    let (cert, key) = (d("localhost.pem"), d("localhost.key"));
    let write = |name: &str, text: String| std::fs::write(dir.join(name), text).map_err(|e| fail(format!("{name}: {e}")));
    // nginx counts client and backend connections; haproxy counts sessions, and needs two descriptors for each.
    let (fds, sessions) = (2 * max_conn + 100, max_conn + 100);
    let mut cmd = Command::new(program);
    match who {
        Proxy::Sealtls | Proxy::SealtlsKeyd => {
            cmd.args(["serve", "--listen", &addr.to_string(), "--target", &backend.to_string()]);
            if who == Proxy::Sealtls {
                cmd.args(["--cert", &cert, "--key", &key]);
            } else {
                cmd.arg("--keyd").arg(format!("unix:{}", keyd_socket(dir).display()));
            }
            cmd.args(["--max-connections", &(max_conn + 100).to_string()]);
            // Warnings and errors only, as the peers below are configured: no line per session.
            cmd.env("RUST_LOG", "warn");
        }
        Proxy::Haproxy => {
            let bundle = [std::fs::read_to_string(&cert), std::fs::read_to_string(&key)];
            let [Ok(c), Ok(k)] = bundle else { return Err(fail("cannot read the bench certificate".into())) };
            write("haproxy.pem", format!("{c}{k}"))?;
            write(
                "haproxy.cfg",
                format!(
                    "global\n  nbthread 2\n  maxconn {sessions}\n\ndefaults\n  mode tcp\n  maxconn {sessions}\n  timeout connect 5s\n  \
                     timeout client 300s\n  timeout server 300s\n\nfrontend tls\n  bind {addr} ssl crt {} ssl-min-ver TLSv1.3 ciphersuites {SUITES}\n  \
                     default_backend plain\n\nbackend plain\n  server backend {backend}\n",
                    d("haproxy.pem")
                ),
            )?;
            cmd.args(["-db", "-f", &d("haproxy.cfg")]);
        }
        Proxy::Nginx => {
            write(
                "nginx.conf",
                format!(
                    "load_module {NGINX_STREAM};\nworker_processes 2;\nworker_rlimit_nofile {fds};\ndaemon off;\npid {};\n\
                     error_log {} error;\nevents {{ worker_connections {fds}; }}\nstream {{\n  server {{\n    listen {addr} ssl;\n    \
                     ssl_certificate {cert};\n    ssl_certificate_key {key};\n    ssl_protocols TLSv1.3;\n    \
                     ssl_conf_command Ciphersuites {SUITES};\n    ssl_prefer_server_ciphers on;\n    proxy_pass {backend};\n  }}\n}}\n",
                    d("nginx.pid"),
                    d("nginx-error.log")
                ),
            )?;
            cmd.arg("-p").arg(dir).args(["-c", &d("nginx.conf"), "-e", &d("nginx-error.log")]);
        }
        Proxy::Stunnel => {
            write(
                "stunnel.conf",
                format!(
                    "foreground = yes\npid = {}\ndebug = 3\nsocket = l:TCP_NODELAY=1\nsocket = r:TCP_NODELAY=1\n\n[proxy]\n\
                     accept = {addr}\nconnect = {backend}\ncert = {cert}\nkey = {key}\nsslVersionMin = TLSv1.3\nTIMEOUTidle = 300\n\
                     ciphersuites = {SUITES}\noptions = CIPHER_SERVER_PREFERENCE\n",
                    d("stunnel.pid")
                ),
            )?;
            cmd.arg(d("stunnel.conf"));
        }
    }
    let log = std::fs::File::create(dir.join(format!("{}.log", who.name()))).map_err(|e| fail(e.to_string()))?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| fail(format!("cannot start {}: {e}", who.name())))?;
    let peer = Peer(child);
    wait_ready(addr).await.map_err(|_| {
        let log = std::fs::read_to_string(dir.join(format!("{}.log", who.name()))).unwrap_or_default();
        fail(format!("{} did not listen on {addr}: {}", who.name(), log.trim()))
    })?;
    // Let workers settle before memory is read.
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok((peer, addr))
}

/// Runs a client job in a child process and reads its figures.
pub(super) async fn run_client(job: &str, addr: SocketAddr, dir: &Path, extra: &[String]) -> Result<Measured, Failure> {
    let output = client_command(job, addr, dir, extra)?
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .await
        .map_err(|e| fail(format!("bench client: {e}")))?;
    let text = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(text.lines().last().unwrap_or_default())
        .map_err(|_| broken(format!("the {job} client failed ({})", output.status)))
}

fn client_command(job: &str, addr: SocketAddr, dir: &Path, extra: &[String]) -> Result<tokio::process::Command, Failure> {
    let mut cmd = tokio::process::Command::new(std::env::current_exe().map_err(|e| fail(e.to_string()))?);
    cmd.args(["bench-client", job, "--addr", &addr.to_string(), "--dir"]).arg(dir).args(extra);
    cmd.stdout(Stdio::piped()).kill_on_drop(true);
    Ok(cmd)
}

/// A process and all its descendants (nginx's workers).
fn process_tree(pid: u32) -> HashSet<u32> {
    let mut tree = HashSet::from([pid]);
    let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let p: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
            let ppid = stat.rsplit_once(") ")?.1.split_whitespace().nth(1)?.parse().ok()?;
            Some((p, ppid))
        })
        .collect();
    loop {
        let before = tree.len();
        for (p, ppid) in &parents {
            if tree.contains(ppid) {
                tree.insert(*p);
            }
        }
        if tree.len() == before {
            return tree;
        }
    }
}

/// PSS in KiB of a process and all its descendants.
fn pss_kib(pid: u32) -> u64 {
    process_tree(pid)
        .iter()
        .filter_map(|p| {
            let rollup = std::fs::read_to_string(format!("/proc/{p}/smaps_rollup")).ok()?;
            rollup.lines().find_map(|l| l.strip_prefix("Pss:")?.trim().strip_suffix("kB")?.trim().parse::<u64>().ok())
        })
        .sum()
}

/// Clock ticks in fields 14 to 17 of `/proc/PID/stat`: utime, stime, and
/// cutime, cstime (the children it has waited for).
fn stat_ticks(pid: u32) -> Option<[u64; 4]> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 14 is the 12th after the command's ") ".
    let mut after = stat.rsplit_once(") ")?.1.split_whitespace().skip(11);
    let mut ticks = [0; 4];
    for slot in &mut ticks {
        *slot = after.next()?.parse().ok()?;
    }
    Some(ticks)
}

fn seconds(ticks: u64) -> f64 {
    ticks as f64 / rustix::param::clock_ticks_per_second() as f64
}

/// CPU seconds used so far by a process and all its descendants: (user, kernel).
fn cpu_seconds(pid: u32) -> (f64, f64) {
    let (user, kernel) = process_tree(pid).iter().filter_map(|p| stat_ticks(*p)).fold((0, 0), |(u, k), t| (u + t[0], k + t[1]));
    (seconds(user), seconds(kernel))
}

/// CPU seconds of the load so far: this process (the backend) and the
/// client processes it has waited for.
fn load_seconds() -> f64 {
    seconds(stat_ticks(std::process::id()).map_or(0, |t| t.iter().sum()))
}

/// Memory for `count` connections held open through a fresh `who`, each
/// having echoed `bytes`: (KiB of PSS added per connection, total PSS KiB
/// per connection, connections open).
async fn memory(
    who: Proxy,
    program: &Path,
    dir: &Path,
    backend: SocketAddr,
    count: usize,
    bytes: u64,
) -> Result<(f64, f64, usize), Failure> {
    let (peer, addr) = start_proxy(who, program, dir, backend, count).await?;
    let pid = peer.0.id();
    let before = pss_kib(pid);
    let extra = ["--count".to_string(), count.to_string(), "--bytes".into(), bytes.to_string()];
    let mut child =
        client_command("hold", addr, dir, &extra)?.stdin(Stdio::piped()).spawn().map_err(|e| fail(format!("bench client: {e}")))?;
    let stdout = child.stdout.take().expect("piped");
    let line = BufReader::new(stdout).lines().next_line().await.map_err(broken)?.unwrap_or_default();
    let held: Measured = serde_json::from_str(&line).map_err(|_| broken("the hold client failed"))?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = pss_kib(pid);
    drop(child.stdin.take());
    let _ = child.wait().await;
    if held.failed > 0 {
        eprintln!("note: {}: {} of {count} connections failed to open", who.name(), held.failed);
    }
    let open = (held.value as usize).max(1);
    Ok((after.saturating_sub(before) as f64 / open as f64, after as f64 / open as f64, held.value as usize))
}

/// One metric across all servers.
#[derive(Serialize)]
struct Row {
    metric: String,
    higher_is_better: bool,
    values: Vec<(String, Option<f64>)>,
    best_peer: Option<String>,
    /// sealtls against the best peer, > 1 when sealtls is better.
    ratio: Option<f64>,
    /// Keyless termination against sealtls with its key, > 1 when keyless is better.
    keyless_ratio: Option<f64>,
}

#[derive(Serialize)]
struct Report {
    skipped: Vec<(String, String)>,
    rows: Vec<Row>,
    idle_connections: usize,
    idle_pss_total_kib_per_connection: Vec<(String, f64)>,
}

fn row(metric: String, higher_is_better: bool, values: Vec<(String, Option<f64>)>) -> Row {
    let value_of = |name: &str| values.iter().find(|(n, _)| n == name).and_then(|(_, v)| *v);
    let own = value_of("sealtls");
    let better = |a: f64, b: f64| if higher_is_better { a > b } else { a < b };
    let best = values.iter().filter(|(n, _)| n != "sealtls" && n != KEYLESS).filter_map(|(n, v)| v.map(|v| (n.clone(), v))).fold(
        None::<(String, f64)>,
        |acc, (n, v)| match acc {
            Some((_, b)) if !better(v, b) => acc,
            _ => Some((n, v)),
        },
    );
    let ratio = |ours: Option<f64>, against: Option<f64>| match (ours, against) {
        (Some(s), Some(b)) if higher_is_better => Some(s / b),
        (Some(s), Some(b)) => Some(b / s),
        _ => None,
    };
    let keyless_ratio = ratio(value_of(KEYLESS), own);
    Row { metric, higher_is_better, ratio: ratio(own, best.as_ref().map(|b| b.1)), best_peer: best.map(|(n, _)| n), keyless_ratio, values }
}

/// Rounds of the timed loads: the servers take turns, so that a machine
/// whose speed drifts (as VMs do) slows each of them alike; each figure is
/// the median of its rounds.
const ROUNDS: usize = 3;

#[derive(Default)]
struct Samples {
    handshakes: Vec<f64>,
    handshakes_high: Vec<f64>,
    one_way: Vec<f64>,
    cpu_per_gib: Vec<f64>,
    kernel_per_gib: Vec<f64>,
    load_per_gib: Vec<f64>,
    p50: Vec<f64>,
    p99: Vec<f64>,
}

#[derive(Default)]
struct Figures {
    handshakes: Option<f64>,
    handshakes_high: Option<f64>,
    one_way: Option<f64>,
    cpu_per_gib: Option<f64>,
    kernel_per_gib: Option<f64>,
    load_per_gib: Option<f64>,
    p50: Option<f64>,
    p99: Option<f64>,
    idle: Option<(f64, f64, usize)>,
    busy: Option<(f64, f64, usize)>,
}

/// Keeps a figure, or says why there is none.
fn keep<T>(who: Proxy, what: &str, r: Result<T, Failure>) -> Option<T> {
    r.map_err(|f| eprintln!("note: {} {what}: {f}", who.name())).ok()
}

/// One round of the timed loads against `who` at `addr`.
async fn timed_round(who: Proxy, pid: u32, addr: SocketAddr, dir: &Path, args: &BenchArgs, into: &mut Samples) {
    for (concurrency, slot) in [(args.concurrency, &mut into.handshakes), (HIGH_CONCURRENCY, &mut into.handshakes_high)] {
        let extra = ["--seconds".into(), args.seconds.to_string(), "--concurrency".into(), concurrency.to_string()];
        if let Some(m) = keep(who, "handshakes", run_client("handshakes", addr, dir, &extra).await) {
            if m.failed > 0 {
                eprintln!("note: {} handshakes failed against {}", m.failed, who.name());
            }
            slot.push(m.value);
        }
    }
    let extra = ["--bytes".into(), args.bytes.to_string()];
    let (cpu_before, load_before) = (cpu_seconds(pid), load_seconds());
    if let Some(m) = keep(who, "one-way transfer", run_client("throughput", addr, dir, &extra).await) {
        into.one_way.push(m.value);
        let (after, gib) = (cpu_seconds(pid), args.bytes as f64 / GIB);
        into.cpu_per_gib.push((after.0 + after.1 - cpu_before.0 - cpu_before.1) / gib);
        into.kernel_per_gib.push((after.1 - cpu_before.1) / gib);
        into.load_per_gib.push((load_seconds() - load_before) / gib);
    }
    let extra = ["--rounds".into(), args.rounds.to_string()];
    if let Some(m) = keep(who, "latency", run_client("latency", addr, dir, &extra).await) {
        into.p50.push(m.value);
        into.p99.push(m.second);
    }
}

fn median_of(mut samples: Vec<f64>) -> Option<f64> {
    (!samples.is_empty()).then(|| super::offload::median(&mut samples))
}

pub(super) async fn run(dir: &Path, args: &BenchArgs) -> Result<(), Failure> {
    let most = args.idle_connections.max(args.busy_connections) as u64;
    let limit = raise_fd_limit(2 * most + 1024);
    let idle = args.idle_connections.min((limit.saturating_sub(1024) / 2) as usize);
    if idle < args.idle_connections {
        eprintln!("note: the descriptor limit is {limit} (raising it was refused): idle connections lowered to {idle}; run as root or raise `ulimit -Hn`");
    }
    let (backend, backend_task) = backend().await?;
    let mut skipped = Vec::new();
    // One keyd, kept to the end, for every start of the keyless server; its memory is not the server's.
    let keyd = match args.proxies.iter().any(|p| p == KEYLESS) {
        true => start_keyd_with_bench_key(dir).await.map_err(|f| {
            eprintln!("skipped: {KEYLESS}: {f}");
            skipped.push((KEYLESS.to_string(), f.to_string()));
        }),
        false => Err(()),
    };
    let mut running = Vec::new();
    for who in Proxy::ALL.into_iter().filter(|w| args.proxies.iter().any(|p| p == w.name())) {
        if who == Proxy::SealtlsKeyd && keyd.is_err() {
            continue;
        }
        let started = match find_peer(who, args) {
            Ok(program) => start_proxy(who, &program, dir, backend, HIGH_CONCURRENCY).await.map(|(peer, addr)| (program, peer, addr)),
            Err(why) => Err(fail(why)),
        };
        match started {
            Ok((program, peer, addr)) => {
                eprintln!("proxy: {} ({}) on {addr}", who.name(), program.display());
                running.push((who, program, peer, addr, Samples::default()));
            }
            Err(f) => {
                eprintln!("skipped: {}: {f}", who.name());
                skipped.push((who.name().to_string(), f.to_string()));
            }
        }
    }
    for round in 1..=ROUNDS {
        for (who, _, peer, addr, samples) in running.iter_mut() {
            eprintln!("proxy: round {round} of {ROUNDS}: {}", who.name());
            timed_round(*who, peer.0.id(), *addr, dir, args, samples).await;
        }
    }
    // Memory is read one server at a time, each freshly started, nothing else under load.
    let mut figures = Vec::new();
    for (who, program, peer, _, samples) in running {
        drop(peer);
        let mut f = Figures {
            handshakes: median_of(samples.handshakes),
            handshakes_high: median_of(samples.handshakes_high),
            one_way: median_of(samples.one_way),
            cpu_per_gib: median_of(samples.cpu_per_gib),
            kernel_per_gib: median_of(samples.kernel_per_gib),
            load_per_gib: median_of(samples.load_per_gib),
            p50: median_of(samples.p50),
            p99: median_of(samples.p99),
            ..Figures::default()
        };
        if idle > 0 {
            eprintln!("proxy: memory of {} with {idle} idle connections", who.name());
            f.idle = keep(who, "idle memory", memory(who, &program, dir, backend, idle, 0).await);
        }
        if args.busy_connections > 0 {
            f.busy = keep(who, "memory after traffic", memory(who, &program, dir, backend, args.busy_connections, BUSY_BYTES).await);
        }
        figures.push((who, f));
    }
    backend_task.abort();
    drop(keyd);

    let column = |pick: &dyn Fn(&Figures) -> Option<f64>| figures.iter().map(|(w, f)| (w.name().to_string(), pick(f))).collect::<Vec<_>>();
    let gib = args.bytes as f64 / GIB;
    let rows = vec![
        row(format!("full handshakes/s, {} concurrent", args.concurrency), true, column(&|f| f.handshakes)),
        row(format!("full handshakes/s, {HIGH_CONCURRENCY} concurrent"), true, column(&|f| f.handshakes_high)),
        row(format!("one-way {gib:.2} GiB into the backend, MiB/s"), true, column(&|f| f.one_way)),
        row("server CPU per GiB of that transfer, s".into(), false, column(&|f| f.cpu_per_gib)),
        row("  of which in the kernel, s".into(), false, column(&|f| f.kernel_per_gib)),
        row("client and backend CPU per GiB of it, s (same load)".into(), false, column(&|f| f.load_per_gib)),
        row("echo round trip p50, us (32 B)".into(), false, column(&|f| f.p50)),
        row("echo round trip p99, us (32 B)".into(), false, column(&|f| f.p99)),
        row(format!("PSS added per idle connection, KiB ({idle})"), false, column(&|f| f.idle.map(|m| m.0))),
        row(
            format!("PSS added per connection after {} MiB echoed, KiB ({})", BUSY_BYTES >> 20, args.busy_connections),
            false,
            column(&|f| f.busy.map(|m| m.0)),
        ),
    ];
    let totals = figures.iter().filter_map(|(w, f)| Some((w.name().to_string(), f.idle?.1))).collect::<Vec<_>>();
    if args.json {
        let report = Report { skipped, rows, idle_connections: idle, idle_pss_total_kib_per_connection: totals };
        println!("{}", serde_json::to_string_pretty(&report).expect("report serialises"));
        return Ok(());
    }
    let names: Vec<&str> = figures.iter().map(|(w, _)| w.name()).collect();
    print!("{:<56}", "proxy benchmark");
    for n in &names {
        print!(" {n:>9}");
    }
    println!(" {:>10} {:>13} {:>9}", "best peer", "sealtls/best", "keyd/key");
    for r in &rows {
        print!("{:<56}", r.metric);
        for (_, v) in &r.values {
            match v {
                Some(v) if *v < 10.0 => print!(" {v:>9.2}"),
                Some(v) => print!(" {v:>9.1}"),
                None => print!(" {:>9}", "-"),
            }
        }
        let times = |x: Option<f64>| x.map(|x| format!("{x:.2}x")).unwrap_or_else(|| "-".into());
        println!(" {:>10} {:>13} {:>9}", r.best_peer.as_deref().unwrap_or("-"), times(r.ratio), times(r.keyless_ratio));
    }
    for (n, total) in &totals {
        println!("{n}: whole-process PSS / idle connections = {total:.1} KiB");
    }
    for (n, why) in &skipped {
        println!("skipped: {n}: {why}");
    }
    println!(
        "(medians of {ROUNDS} rounds taken in turns; ratios: > 1 means sealtls is better, for latency and memory too; keyd/key: \
         {KEYLESS} (`serve --target --keyd`, the key in a local keyd) against sealtls with its key; client in a separate process: TLS 1.3, X25519, no resumption, certificate verified; backend: plain TCP in the bench process)"
    );
    Ok(())
}

/// keyd's socket for the keyless server.
fn keyd_socket(dir: &Path) -> PathBuf {
    dir.join(KEYD_STORE).join("keyd.sock")
}

/// Starts the keyless server's keyd and gives it the bench key for `localhost`.
async fn start_keyd_with_bench_key(dir: &Path) -> Result<Peer, Failure> {
    let key = sealtls_pki::load_key(&dir.join("localhost.key")).map_err(Failure::config)?;
    let chain: Vec<Vec<u8>> =
        sealtls_pki::load_certs(&dir.join("localhost.pem")).map_err(Failure::config)?.iter().map(|c| c.to_vec()).collect();
    let (keyd, socket, _) = super::keyless::start_keyd(dir, KEYD_STORE, None).await?;
    super::keyless::put_key(&socket, key.secret_der(), &chain).await?;
    Ok(keyd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_tree_holds_its_children() {
        let mut child = Command::new("sleep").arg("30").spawn().expect("sleep runs");
        let tree = process_tree(std::process::id());
        let _ = child.kill();
        let _ = child.wait();
        assert!(tree.contains(&std::process::id()) && tree.contains(&child.id()), "{tree:?} lacks {}", child.id());
    }

    #[test]
    fn cpu_seconds_count_the_work_done() {
        let me = std::process::id();
        let ((user, _), load) = (cpu_seconds(me), load_seconds());
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut x = 0u64;
        while cpu_seconds(me).0 - user < 0.05 || load_seconds() - load < 0.05 {
            assert!(Instant::now() < deadline, "50 ms of user CPU never showed");
            for i in 0..1_000_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
        }
    }
}
