//! Streaming a file through an echo or sink server, with progress and an
//! end-to-end check.
use std::path::Path;
use std::time::Instant;

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

/// A server that sends nothing for this long is given up on.
const QUIET_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

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

async fn write_file<W: AsyncWrite + Unpin>(path: &Path, out: &mut W, bar: &ProgressBar, count_progress: bool) -> std::io::Result<(u64, Vec<u8>)> {
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

async fn read_echo<R: AsyncRead + Unpin>(input: &mut R, expected: u64, bar: &ProgressBar) -> std::io::Result<(u64, Vec<u8>)> {
    let mut buf = vec![0u8; CHUNK];
    let mut hash = Context::new(&SHA256);
    let mut total = 0u64;
    while total < expected {
        let n = tokio::time::timeout(QUIET_LIMIT, input.read(&mut buf))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "the server stopped sending"))??;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        total += n as u64;
        bar.set_position(total);
    }
    Ok((total, hash.finish().as_ref().to_vec()))
}

/// Sends the file at `path` over `stream` and checks what the server did
/// with it. `peer` names the server in messages.
pub async fn send_file(stream: ClientStream, path: &Path, expect: Expect, show_progress: bool, peer: &str) -> Result<TransferReport, Failure> {
    let size = std::fs::metadata(path)
        .map_err(|e| Failure::new(FailureClass::Config, format!("{}: cannot read: {e}", path.display()), "give an existing, readable file with --file"))?
        .len();
    let bar = progress_bar(size, show_progress);
    let started = Instant::now();
    let net_err = |e: std::io::Error| explain(&e, &Default::default(), Side::Client, peer);
    let (mut rd, mut wr) = tokio::io::split(stream);
    let (sent, digest, confirmed) = match expect {
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
                    format!("the echo differs from what was sent: {} bytes with sha256 {} sent, {} bytes with sha256 {} returned", w.0, hex(&w.1), r.0, hex(&r.1)),
                    "the server is not a byte-exact echo, or the data was altered in transit",
                ));
            }
            (w.0, w.1, r.0)
        }
        Expect::Sink => {
            let (sent, digest) = write_file(path, &mut wr, &bar, true).await.map_err(net_err)?;
            wr.shutdown().await.map_err(net_err)?;
            let mut reply = Vec::new();
            tokio::time::timeout(QUIET_LIMIT, rd.read_to_end(&mut reply))
                .await
                .map_err(|_| net_err(std::io::ErrorKind::TimedOut.into()))?
                .map_err(net_err)?;
            if reply != sink_report(sent).as_bytes() {
                return Err(Failure::new(
                    FailureClass::DataMismatch,
                    format!("the sink did not confirm {sent} bytes; it answered {:?}", String::from_utf8_lossy(&reply[..reply.len().min(80)])),
                    "use a sealtls server in --mode sink, or --expect echo for an echo server",
                ));
            }
            (sent, digest, sent)
        }
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
