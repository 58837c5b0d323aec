//! Socket set-up shared by servers and clients.
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, ReadBuf};
use tokio::net::TcpStream;

/// rustls pulls at most 4 KiB per read; a buffer under it turns four or more
/// syscalls per 16 KiB record into one per buffer fill.
pub const READ_BUFFER: usize = 256 * 1024;

/// How long a connection that failed is read from (and its bytes dropped)
/// after our last bytes, so that an alert is not lost to a reset.
const LINGER: Duration = Duration::from_millis(500);

/// At most this much is read and dropped while lingering.
const LINGER_BYTES: usize = 256 * 1024;

/// A TCP stream with a read buffer, as handed to rustls. It counts the bytes
/// written, so that a failed handshake can tell whether rustls sent anything.
pub struct Buffered {
    inner: BufReader<TcpStream>,
    written: u64,
    activity: Arc<Activity>,
    /// Bytes looked at before the handshake, handed out again first.
    replay: Vec<u8>,
    replayed: usize,
}

/// When bytes last moved on a connection, in either direction.
#[derive(Debug)]
pub struct Activity {
    epoch: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self { epoch: Instant::now(), last_ms: AtomicU64::new(0) }
    }

    fn moved(&self) {
        self.last_ms.store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Completes once no byte has moved for `limit`; never for a zero limit.
    pub async fn idle_for(&self, limit: Duration) {
        if limit.is_zero() {
            return std::future::pending().await;
        }
        loop {
            let quiet = self.epoch.elapsed().saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::Relaxed)));
            if quiet >= limit {
                return;
            }
            tokio::time::sleep(limit - quiet).await;
        }
    }
}

impl Buffered {
    /// Reads more bytes to look at; later reads return them again first.
    pub async fn peek_more(&mut self) -> std::io::Result<usize> {
        let mut chunk = [0u8; 4096];
        let n = self.inner.read(&mut chunk).await?;
        self.replay.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// What [`Self::peek_more`] has read so far.
    pub fn peeked(&self) -> &[u8] {
        &self.replay
    }

    /// The connection's activity clock, for idle limits.
    pub fn activity(&self) -> Arc<Activity> {
        self.activity.clone()
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Closes a connection that failed: our last bytes (an alert) are
    /// flushed, our side is shut down, and what the peer still sends is read
    /// for a moment, because closing a socket with unread data sends a reset
    /// that can destroy the alert before the peer reads it.
    pub async fn close_lingering(mut self) {
        let tcp = self.inner.get_mut();
        if tokio::time::timeout(LINGER, async {
            tcp.flush().await?;
            tcp.shutdown().await
        })
        .await
        .is_err()
        {
            return;
        }
        let mut scratch = [0u8; 16 * 1024];
        let mut dropped = 0;
        let deadline = tokio::time::Instant::now() + LINGER;
        while dropped < LINGER_BYTES {
            match tokio::time::timeout_at(deadline, tcp.read(&mut scratch)).await {
                Ok(Ok(n)) if n > 0 => dropped += n,
                _ => return,
            }
        }
    }
}

impl AsyncRead for Buffered {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        if self.replayed < self.replay.len() {
            let n = buf.remaining().min(self.replay.len() - self.replayed);
            buf.put_slice(&self.replay[self.replayed..self.replayed + n]);
            self.replayed += n;
            if self.replayed == self.replay.len() {
                (self.replay, self.replayed) = (Vec::new(), 0);
            }
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.moved();
        }
        polled
    }
}

impl AsyncWrite for Buffered {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            self.written += n as u64;
            self.activity.moved();
        }
        polled
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = polled {
            self.written += n as u64;
            self.activity.moved();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Prepares an accepted or connected socket for TLS traffic.
pub fn buffered(tcp: TcpStream) -> Buffered {
    // Handshake flights and echoes are latency-bound: do not wait for more data.
    let _ = tcp.set_nodelay(true);
    Buffered {
        inner: BufReader::with_capacity(READ_BUFFER, tcp),
        written: 0,
        activity: Arc::new(Activity::new()),
        replay: Vec::new(),
        replayed: 0,
    }
}

pub use sealtls_listen::bind;
