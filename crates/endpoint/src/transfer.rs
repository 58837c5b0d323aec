//! Streaming a file through an echo or sink server, with progress and an
//! end-to-end check.
use std::path::Path;
use std::time::{Duration, Instant};

use aws_lc_rs::digest::{Context, SHA256};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::client::ClientStream;
use crate::explain::{explain, Failure, FailureClass, Side};
use crate::server::sink_report;

/// What the server is expected to do with the bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Send every byte back: the SHA-256 of what returns must match.
    Echo,
    /// Swallow the bytes and report the count after our close_notify.
    Sink,
}

/// The outcome of a transfer.
#[derive(Debug, Serialize)]
pub struct TransferReport {
    /// Bytes written.
    pub bytes_sent: u64,
    /// Bytes read back (echo) or acknowledged (sink).
    pub bytes_confirmed: u64,
    /// Wall time, seconds.
    pub seconds: f64,
    /// Throughput of the sent bytes, MiB/s.
    pub mib_per_s: f64,
    /// SHA-256 of the file.
    pub sha256: String,
}

const CHUNK: usize = 256 * 1024;

fn echo_not_sink() -> Failure {
    Failure::new(
        FailureClass::DataMismatch,
        "the server sends data back before the end of the file: it is an echo server, not a sink",
        "use --expect echo for an echo server",
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn progress_bar(total: u64, visible: bool) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{bar:40.cyan/blue} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}")
            .expect("template is valid"),
    );
    bar
}

async fn write_file<W: AsyncWrite + Unpin>(
    path: &Path,
    out: &mut W,
    bar: &ProgressBar,
    count_progress: bool,
) -> std::io::Result<(u64, Vec<u8>)> {
    let mut file = tokio::fs::File::open(path).await?;
    let mut buf = vec![0u8; CHUNK];
    let mut hash = Context::new(&SHA256);
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        out.write_all(&buf[..n]).await?;
        total += n as u64;
        if count_progress {
            bar.set_position(total);
        }
    }
    out.flush().await?;
    Ok((total, hash.finish().as_ref().to_vec()))
}

/// How long, once every byte has come back, the server has to close (or to
/// send more, which makes the echo wrong) before the echo counts as exact.
const ECHO_END_WAIT: Duration = Duration::from_secs(2);

/// Reads the echo: `expected` bytes, then whatever comes until the server
/// closes or stays quiet for [`ECHO_END_WAIT`], so that bytes beyond the
/// echo are counted (a server that closes after our close_notify ends it at once).
async fn read_echo<R: AsyncRead + Unpin>(input: &mut R, expected: u64, bar: &ProgressBar) -> std::io::Result<(u64, Vec<u8>)> {
    let mut buf = vec![0u8; CHUNK];
    let mut hash = Context::new(&SHA256);
    let mut total = 0u64;
    loop {
        let n = match total < expected {
            true => input.read(&mut buf).await?,
            // Every byte is back: the end may come as a close without close_notify too.
            false => match tokio::time::timeout(ECHO_END_WAIT, input.read(&mut buf)).await {
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
                Ok(read) => read?,
                Err(_) => 0,
            },
        };
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        total += n as u64;
        bar.set_position(total.min(expected));
    }
    Ok((total, hash.finish().as_ref().to_vec()))
}

/// Sends the file at `path` over `stream` and checks what the server did
/// with it. `peer` names the server in messages. The transfer ends with an
/// explanation once no byte has moved either way for `idle` (zero: never).
pub async fn send_file(
    stream: ClientStream,
    path: &Path,
    expect: Expect,
    show_progress: bool,
    peer: &str,
    idle: Duration,
) -> Result<TransferReport, Failure> {
    let size = std::fs::metadata(path)
        .map_err(|e| {
            Failure::new(
                FailureClass::Config,
                format!("{}: cannot read: {e}", path.display()),
                "give an existing, readable file with --file",
            )
        })?
        .len();
    let bar = progress_bar(size, show_progress);
    let started = Instant::now();
    let net_err = |e: std::io::Error| explain(&e, &Default::default(), Side::Client, peer);
    let activity = stream.get_ref().0.activity();
    let (mut rd, mut wr) = tokio::io::split(stream);
    let transfer = async {
        match expect {
            Expect::Echo => {
                // After the last byte, close_notify: an echo server flushes what is
                // pending and closes, so anything but an exact echo ends the read.
                let write = async {
                    let written = write_file(path, &mut wr, &bar, false).await?;
                    wr.shutdown().await?;
                    Ok(written)
                };
                let (w, r) = tokio::try_join!(write, read_echo(&mut rd, size, &bar)).map_err(net_err)?;
                if w.1 != r.1 || r.0 != w.0 {
                    return Err(Failure::new(
                        FailureClass::DataMismatch,
                        format!(
                            "the echo differs from what was sent: {} bytes with sha256 {} sent, {} bytes with sha256 {} returned",
                            w.0,
                            hex(&w.1),
                            r.0,
                            hex(&r.1)
                        ),
                        "the server is not a byte-exact echo, or the data was altered in transit",
                    ));
                }
                Ok((w.0, w.1, r.0))
            }
            Expect::Sink => {
                // A sink answers only after our close_notify; anything earlier
                // means the server sends data back, and it is read at once so
                // that neither side's buffers fill and stall the transfer.
                let write = async {
                    let written = write_file(path, &mut wr, &bar, true).await.map_err(net_err)?;
                    wr.shutdown().await.map_err(net_err)?;
                    Ok::<_, Failure>(written)
                };
                let mut reply = Vec::new();
                let mut buf = vec![0u8; 16 * 1024];
                let (sent, digest) = tokio::select! {
                    w = write => w?,
                    r = rd.read(&mut buf) => match r.map_err(net_err)? {
                        0 => return Err(Failure::new(
                            FailureClass::Network,
                            format!("the server {peer} closed the connection before the whole file was sent"),
                            "check the server's log; a sealtls sink stays open until the client's close_notify",
                        )),
                        _ => return Err(echo_not_sink()),
                    },
                };
                loop {
                    let n = rd.read(&mut buf).await.map_err(net_err)?;
                    if n == 0 {
                        break;
                    }
                    reply.extend_from_slice(&buf[..n]);
                    if reply.len() > 256 {
                        break;
                    }
                }
                if reply != sink_report(sent).as_bytes() {
                    return Err(Failure::new(
                        FailureClass::DataMismatch,
                        format!(
                            "the sink did not confirm {sent} bytes; it answered {:?}",
                            String::from_utf8_lossy(&reply[..reply.len().min(80)])
                        ),
                        "use a sealtls server in --mode sink, or --expect echo for an echo server",
                    ));
                }
                Ok((sent, digest, sent))
            }
        }
    };
    let (sent, digest, confirmed) = tokio::select! {
        r = transfer => r?,
        _ = activity.idle_for(idle) => return Err(Failure::new(
            FailureClass::Network,
            format!("no byte moved to or from {peer} for {} s: the transfer stalled", idle.as_secs()),
            match expect {
                Expect::Sink => "check that the server is a sink that reads everything (sealtls serve --mode sink); raise --idle-timeout for slow servers",
                Expect::Echo => "check that the server is an echo server that sends every byte back; raise --idle-timeout for slow servers",
            },
        )),
    };
    let mut stream = rd.unsplit(wr);
    let _ = stream.shutdown().await;
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    Ok(TransferReport {
        bytes_sent: sent,
        bytes_confirmed: confirmed,
        seconds,
        mib_per_s: sent as f64 / (1024.0 * 1024.0) / seconds.max(1e-9),
        sha256: hex(&digest),
    })
}
