//! `sealtls bench offload`: the same echo traffic through the offload
//! daemon and from a direct rustls client, to the same server, in one run.
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use sealtls_failure::{Failure, FailureClass};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::{fail, start, BenchArgs, Contender, Peer};

/// Application writes in the throughput test, the same for both clients.
const CHUNK: usize = 64 * 1024;
/// Bytes per round trip in the latency test.
const SMALL: usize = 32;
/// Untimed round trips before the timed ones.
const WARM_UP: usize = 500;

#[derive(Serialize)]
struct Row {
    metric: String,
    offload: f64,
    direct: f64,
    ratio: f64,
}

fn broken(e: impl std::fmt::Display) -> Failure {
    Failure::new(FailureClass::Network, format!("benchmark connection failed: {e}"), "check the offload daemon's log")
}

/// Starts `sealtls offload` on a socket in `dir`, trusting the bench CA.
async fn start_daemon(dir: &Path, clients: usize) -> Result<(Peer, std::path::PathBuf), Failure> {
    let socket = dir.join("offload.sock");
    let exe = std::env::current_exe().map_err(|e| fail(e.to_string()))?;
    let child = Command::new(exe)
        .args(["offload", "--max-clients", &(clients + 1).to_string(), "--socket"])
        .arg(&socket)
        .arg("--trust")
        .arg(dir.join("ca.pem"))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| fail(format!("cannot start the offload daemon: {e}")))?;
    let peer = Peer(child);
    for _ in 0..100 {
        if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
            // That probe held a slot for a moment; let the daemon free it.
            tokio::time::sleep(Duration::from_millis(50)).await;
            return Ok((peer, socket));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(fail(format!("the offload daemon did not listen on {}", socket.display())))
}

pub(super) async fn direct(
    addr: std::net::SocketAddr,
    config: Arc<ClientConfig>,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, Failure> {
    let tcp = TcpStream::connect(addr).await.map_err(broken)?;
    tcp.set_nodelay(true).map_err(broken)?;
    let name = ServerName::try_from("localhost").expect("valid name");
    TlsConnector::from(config).connect(name, tcp).await.map_err(broken)
}

/// Sends `bytes` and reads them back at the same time.
async fn echo_through(stream: impl AsyncRead + AsyncWrite, bytes: u64) -> Result<(), Failure> {
    let (mut rd, mut wr) = tokio::io::split(stream);
    let send = async {
        let chunk = vec![0x5au8; CHUNK];
        let mut sent = 0u64;
        while sent < bytes {
            let n = CHUNK.min((bytes - sent) as usize);
            wr.write_all(&chunk[..n]).await?;
            sent += n as u64;
        }
        // Both streams buffer: the last bytes go out on flush.
        wr.flush().await
    };
    let receive = async {
        let mut buf = vec![0u8; CHUNK];
        let mut got = 0u64;
        while got < bytes {
            match rd.read(&mut buf).await? {
                0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                n => got += n as u64,
            }
        }
        Ok(())
    };
    tokio::try_join!(send, receive).map_err(broken)?;
    Ok(())
}

/// MiB/s of echo through `clients` streams in parallel, `bytes` in all.
async fn parallel<S, F>(clients: usize, bytes: u64, open: impl Fn() -> F) -> Result<f64, Failure>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
    F: std::future::Future<Output = Result<S, Failure>>,
{
    let mut streams = Vec::new();
    for _ in 0..clients {
        streams.push(open().await?);
    }
    let share = bytes / clients as u64;
    let started = Instant::now();
    let tasks: Vec<_> = streams.into_iter().map(|s| tokio::spawn(echo_through(s, share))).collect();
    for t in tasks {
        t.await.map_err(|e| fail(e.to_string()))??;
    }
    Ok((share * clients as u64) as f64 / (1024.0 * 1024.0) / started.elapsed().as_secs_f64())
}

/// One small write and its echo, in microseconds.
pub(super) async fn round_trip(stream: &mut (impl AsyncRead + AsyncWrite + Unpin)) -> Result<f64, Failure> {
    let out = [0x42u8; SMALL];
    let mut back = [0u8; SMALL];
    let t = Instant::now();
    stream.write_all(&out).await.map_err(broken)?;
    stream.flush().await.map_err(broken)?;
    stream.read_exact(&mut back).await.map_err(broken)?;
    Ok(t.elapsed().as_secs_f64() * 1e6)
}

/// The same with the blocking, TlsServer-style calls.
fn blocking_round_trip(c: &mut sealtls_offload::Client) -> Result<f64, Failure> {
    let out = [0x42u8; SMALL];
    let mut back = [0u8; SMALL];
    let t = Instant::now();
    let mut sent = 0;
    while sent < SMALL {
        sent += c.write(&out[sent..]).map_err(broken)?;
    }
    let mut got = 0;
    while got < SMALL {
        got += c.read_wait(&mut back[got..]).map_err(broken)?;
    }
    Ok(t.elapsed().as_secs_f64() * 1e6)
}

fn blocking_client(socket: &Path, port: u16) -> Result<sealtls_offload::Client, Failure> {
    use sealtls_offload::Client;
    let mut c = Client::open(socket).map_err(broken)?;
    let until = |call: &mut dyn FnMut(&mut Client) -> sealtls_offload::Result<()>, c: &mut Client| loop {
        match call(c) {
            Err(e) if e.is_would_block() => c.wait(false, false)?,
            other => return other,
        }
    };
    until(&mut |c| c.connect("localhost", port), &mut c).map_err(broken)?;
    until(&mut |c| c.handshake(), &mut c).map_err(broken)?;
    Ok(c)
}

/// Round trips are timed in blocks of this many, the three kinds in turns.
const BLOCK: usize = 100;

/// Median round trips, direct and both ways through the daemon, timed in
/// alternating blocks so that all three see the same machine.
async fn latencies(addr: std::net::SocketAddr, config: Arc<ClientConfig>, socket: &Path, rounds: usize) -> Result<[f64; 3], Failure> {
    let mut direct_stream = direct(addr, config).await?;
    let mut offload_stream = sealtls_offload::connect(socket, "localhost", addr.port()).await.map_err(broken)?;
    let (socket, port) = (socket.to_owned(), addr.port());
    let mut blocking = tokio::task::spawn_blocking(move || blocking_client(&socket, port)).await.map_err(|e| fail(e.to_string()))??;
    let mut times: [Vec<f64>; 3] = Default::default();
    let blocks = (WARM_UP + rounds).div_ceil(BLOCK);
    for block in 0..blocks {
        let timed = block * BLOCK >= WARM_UP;
        for _ in 0..BLOCK {
            let t = round_trip(&mut direct_stream).await?;
            if timed {
                times[0].push(t);
            }
        }
        for _ in 0..BLOCK {
            let t = round_trip(&mut offload_stream).await?;
            if timed {
                times[1].push(t);
            }
        }
        let (client, block_times) = tokio::task::spawn_blocking(move || {
            let mut list = Vec::with_capacity(BLOCK);
            for _ in 0..BLOCK {
                list.push(blocking_round_trip(&mut blocking)?);
            }
            Ok::<_, Failure>((blocking, list))
        })
        .await
        .map_err(|e| fail(e.to_string()))??;
        blocking = client;
        if timed {
            times[2].extend(block_times);
        }
    }
    Ok(times.map(|mut list| median(&mut list)))
}

pub(super) fn median(times: &mut [f64]) -> f64 {
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

pub(super) async fn run(dir: &Path, config: Arc<ClientConfig>, args: &BenchArgs) -> Result<(), Failure> {
    let (_server, addr) = start(Contender::Sealtls, dir, false).await?;
    let (_daemon, socket) = start_daemon(dir, args.clients).await?;
    let port = addr.port();
    let gib = args.bytes as f64 / (1u64 << 30) as f64;

    eprintln!("offload: echo of {gib:.2} GiB over {} parallel clients, direct then through the daemon", args.clients);
    let direct_rate = parallel(args.clients, args.bytes, || direct(addr, config.clone())).await?;
    let offload_rate =
        parallel(args.clients, args.bytes, || async { sealtls_offload::connect(&socket, "localhost", port).await.map_err(broken) }).await?;

    eprintln!("offload: {} small round trips each way, in turns", args.rounds);
    let [direct_rtt, offload_rtt, blocking_rtt] = latencies(addr, config, &socket, args.rounds).await?;

    let rows = vec![
        Row {
            metric: format!("echo throughput, {gib:.2} GiB, {} clients, MiB/s", args.clients),
            offload: offload_rate,
            direct: direct_rate,
            ratio: offload_rate / direct_rate,
        },
        Row {
            metric: format!("{SMALL}-byte round trip, async API, median us"),
            offload: offload_rtt,
            direct: direct_rtt,
            ratio: offload_rtt / direct_rtt,
        },
        Row {
            metric: format!("{SMALL}-byte round trip, blocking API, median us"),
            offload: blocking_rtt,
            direct: direct_rtt,
            ratio: blocking_rtt / direct_rtt,
        },
    ];
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows).expect("rows serialise"));
        return Ok(());
    }
    println!("{:<50} {:>14} {:>14} {:>8}", "offload benchmark", "via daemon", "direct rustls", "ratio");
    for r in &rows {
        println!("{:<50} {:>14.1} {:>14.1} {:>7.2}x", r.metric, r.offload, r.direct, r.ratio);
    }
    println!(
        "added latency per round trip (median): async API {:.1} us, blocking API {:.1} us",
        offload_rtt - direct_rtt,
        blocking_rtt - direct_rtt
    );
    println!("(same echo server, sealtls serve --mode echo; the daemon is a separate process; {} timed round trips of each kind, in alternating blocks of {BLOCK}, after {WARM_UP} untimed)", args.rounds);
    Ok(())
}
