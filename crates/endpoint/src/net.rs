//! Socket set-up shared by servers and clients.
use std::future::Future;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

/// rustls pulls at most 4 KiB per read; while bulk data flows, a buffer of
/// this size under it turns four or more syscalls per 16 KiB record into one
/// per buffer fill. It exists only while data keeps coming (see [`Buffered`]).
pub const READ_BUFFER: usize = 256 * 1024;

/// A read that waits takes at most this much (see [`TrafficBuffer`]).
const SMALL_READ: usize = 2 * 1024;

/// How long a connection that failed is read from (and its bytes dropped)
/// after our last bytes, so that an alert is not lost to a reset.
const LINGER: Duration = Duration::from_millis(500);

/// At most this much is read and dropped while lingering.
const LINGER_BYTES: usize = 256 * 1024;

/// A TCP stream with a read buffer sized by traffic, as handed to rustls.
/// A read that fills rustls's request means more is coming: the next read
/// fills a [`READ_BUFFER`] instead, and rustls is served from it. Once it is
/// drained and the socket has nothing more, the buffer is freed, so an idle
/// connection holds none. It counts the bytes written, so that a failed
/// handshake can tell whether rustls sent anything.
pub struct Buffered {
    tcp: TcpStream,
    /// Bytes read ahead, handed out from `ahead_pos`; no allocation unless
    /// bulk data is flowing.
    ahead: Vec<u8>,
    ahead_pos: usize,
    /// The last read filled the caller's buffer: the next one reads ahead.
    streaming: bool,
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
        self.idle_for_or_until(limit, None).await;
    }

    /// Completes once no byte has moved for `limit` (`true`; never for a
    /// zero limit) or at `end` (`false`), whichever comes first. One timer
    /// serves both, so a session waiting on its limits holds one.
    pub async fn idle_for_or_until(&self, limit: Duration, end: Option<tokio::time::Instant>) -> bool {
        loop {
            let now = tokio::time::Instant::now();
            let quiet = self.epoch.elapsed().saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::Relaxed)));
            if !limit.is_zero() && quiet >= limit {
                return true;
            }
            if end.is_some_and(|end| now >= end) {
                return false;
            }
            let idle_at = (!limit.is_zero()).then(|| now + (limit - quiet));
            match idle_at.into_iter().chain(end).min() {
                Some(wake) => tokio::time::sleep_until(wake).await,
                None => return std::future::pending().await,
            }
        }
    }
}

impl Buffered {
    /// Reads more bytes to look at; later reads return them again first.
    pub async fn peek_more(&mut self) -> std::io::Result<usize> {
        self.replay.reserve(4096);
        self.tcp.read_buf(&mut self.replay).await
    }

    /// What [`Self::peek_more`] has read so far.
    pub fn peeked(&self) -> &[u8] {
        &self.replay
    }

    /// Takes the looked-at bytes not yet handed out, for a caller that feeds
    /// them to rustls itself; reads then continue from the socket.
    pub fn take_peeked(&mut self) -> Vec<u8> {
        let mut rest = std::mem::take(&mut self.replay);
        rest.drain(..std::mem::take(&mut self.replayed));
        rest
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
        let tcp = &mut self.tcp;
        if tokio::time::timeout(LINGER, async {
            tcp.flush().await?;
            tcp.shutdown().await
        })
        .await
        .is_err()
        {
            return;
        }
        // On the heap: a buffer in this future would enlarge every session's.
        let mut scratch = vec![0u8; 16 * 1024];
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
        if self.ahead_pos < self.ahead.len() {
            self.hand_out(buf);
            return Poll::Ready(Ok(()));
        }
        if self.streaming {
            return self.read_ahead(cx, buf);
        }
        let (before, wanted) = (buf.filled().len(), buf.remaining());
        let polled = Pin::new(&mut self.tcp).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.activity.moved();
            self.streaming = n == wanted;
        }
        polled
    }
}

impl Buffered {
    /// Copies read-ahead bytes into `buf`.
    fn hand_out(&mut self, buf: &mut ReadBuf<'_>) {
        let n = buf.remaining().min(self.ahead.len() - self.ahead_pos);
        buf.put_slice(&self.ahead[self.ahead_pos..self.ahead_pos + n]);
        self.ahead_pos += n;
    }

    /// Fills the read-ahead buffer (allocating it if needed) and serves
    /// `buf` from it; frees it when the socket has nothing to read.
    fn read_ahead(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        self.ahead.clear();
        self.ahead_pos = 0;
        self.ahead.reserve_exact(READ_BUFFER);
        loop {
            match self.tcp.poll_read_ready(cx) {
                Poll::Pending => {
                    // Idle again: the memory goes back until data flows.
                    (self.ahead, self.streaming) = (Vec::new(), false);
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {}
            }
            // Reads into the spare capacity: nothing is zeroed first.
            match self.tcp.try_read_buf(&mut self.ahead) {
                Ok(0) => {
                    (self.ahead, self.streaming) = (Vec::new(), false);
                    return Poll::Ready(Ok(()));
                }
                Ok(_) => {
                    self.activity.moved();
                    self.hand_out(buf);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for Buffered {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.tcp).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            self.written += n as u64;
            self.activity.moved();
        }
        polled
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = polled {
            self.written += n as u64;
            self.activity.moved();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// Prepares an accepted or connected socket for TLS traffic.
pub fn buffered(tcp: TcpStream) -> Buffered {
    // Handshake flights and echoes are latency-bound: do not wait for more data.
    let _ = tcp.set_nodelay(true);
    Buffered {
        tcp,
        ahead: Vec::new(),
        ahead_pos: 0,
        streaming: false,
        written: 0,
        activity: Arc::new(Activity::new()),
        replay: Vec::new(),
        replayed: 0,
    }
}

/// A read buffer sized by traffic, for copy loops: a read that waits holds no
/// buffer (it reads up to 2 KiB through a per-thread scratch buffer and keeps
/// only what came); a read that fills that brings in the large buffer for the
/// next reads, which is dropped as soon as a read would wait (before waiting)
/// or comes back less than a quarter full. An idle connection holds none.
#[derive(Debug)]
pub struct TrafficBuffer {
    buf: Vec<u8>,
    large: usize,
    /// The size the next read uses.
    next: usize,
}

impl TrafficBuffer {
    /// A buffer that grows to `large` bytes while reads fill it.
    pub fn new(large: usize) -> Self {
        Self { buf: Vec::new(), large, next: SMALL_READ.min(large) }
    }

    /// Reads once from `from`; empty at end of stream.
    pub async fn read<R: AsyncRead + Unpin + ?Sized>(&mut self, from: &mut R) -> std::io::Result<&[u8]> {
        if self.next > SMALL_READ {
            if self.buf.capacity() != self.next {
                self.buf = Vec::with_capacity(self.next);
            }
            self.buf.clear();
            // Bulk: take what is there now, as much as fits (a TLS stream hands
            // out about a record per read, and each write wakes the reader on
            // the other side); never wait holding the large buffer.
            let buf = &mut self.buf;
            let now = std::future::poll_fn(|cx| Poll::Ready(fill_now(&mut *from, buf, cx))).await;
            if let Some(n) = now {
                if n? < self.large / 4 {
                    self.next = SMALL_READ;
                }
                return Ok(&self.buf);
            }
            self.next = SMALL_READ;
        }
        // Wait holding nothing: the read goes through this thread's scratch
        // buffer within one poll, and only the bytes read are kept.
        self.buf = Vec::new();
        let buf = &mut self.buf;
        let n = std::future::poll_fn(|cx| {
            SCRATCH.with_borrow_mut(|scratch| {
                let mut read = ReadBuf::new(&mut scratch[..]);
                match Pin::new(&mut *from).poll_read(cx, &mut read) {
                    Poll::Ready(Ok(())) => {
                        buf.extend_from_slice(read.filled());
                        Poll::Ready(Ok(read.filled().len()))
                    }
                    Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                    Poll::Pending => Poll::Pending,
                }
            })
        })
        .await?;
        if n == SMALL_READ && self.large > SMALL_READ {
            self.next = self.large;
        }
        Ok(&self.buf)
    }
}

/// Reads from `from` into `buf`'s spare capacity until it is full, the
/// stream ends or a read would wait: the bytes read, or `None` when none
/// were there. An error after some bytes waits for the next read.
fn fill_now<R: AsyncRead + Unpin + ?Sized>(from: &mut R, buf: &mut Vec<u8>, cx: &mut Context<'_>) -> Option<std::io::Result<usize>> {
    let mut total = 0;
    while buf.len() < buf.capacity() {
        let mut read = std::pin::pin!(from.read_buf(&mut *buf));
        match read.as_mut().poll(cx) {
            Poll::Ready(Ok(0)) => return Some(Ok(total)),
            Poll::Ready(Ok(n)) => total += n,
            Poll::Ready(Err(e)) if total == 0 => return Some(Err(e)),
            Poll::Ready(Err(_)) => break,
            Poll::Pending if total == 0 => return None,
            Poll::Pending => break,
        }
    }
    Some(Ok(total))
}

thread_local! {
    /// Where a [`TrafficBuffer`] that waits for data reads into.
    static SCRATCH: std::cell::RefCell<[u8; SMALL_READ]> = const { std::cell::RefCell::new([0; SMALL_READ]) };
}

/// Accepts connections until `shutdown` completes and runs `serve` on each
/// as a task of its own, at most `limit` at once: while all are busy, new
/// connections wait in the listen backlog. `serve` gets the connection's
/// slot, to hold until it is done; its future is spawned as it is (wrapping
/// it would store it twice in every task). A failed accept (out of
/// descriptors, a connection reset before it was taken) is logged and the
/// loop goes on. Returns the tasks still running, for the caller to close.
pub async fn accept_until<C, A, F, S, T>(mut accept: A, limit: usize, shutdown: impl Future<Output = ()>, mut serve: S) -> JoinSet<()>
where
    A: FnMut() -> F,
    F: Future<Output = std::io::Result<C>>,
    S: FnMut(C, OwnedSemaphorePermit) -> T,
    T: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(limit.max(1)));
    let mut tasks = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            p = slots.clone().acquire_owned() => p.expect("semaphore is never closed"),
        };
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            a = accept() => a,
        };
        match accepted {
            Ok(connection) => {
                tasks.spawn(serve(connection, permit));
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        while tasks.try_join_next().is_some() {}
    }
    tasks
}

/// How long open sessions get to end by themselves once a server or tunnel stops.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Waits up to `grace` for `sessions` to end, then cuts the rest, with one
/// log line saying how many.
pub async fn finish_within(mut sessions: JoinSet<()>, grace: Duration) {
    let _ = tokio::time::timeout(grace, async { while sessions.join_next().await.is_some() {} }).await;
    if !sessions.is_empty() {
        tracing::warn!(
            open = sessions.len(),
            grace_ms = grace.as_millis() as u64,
            "sessions still open after the shutdown grace period were cut"
        );
    }
    sessions.shutdown().await;
}

pub use sealtls_listen::bind;

#[cfg(test)]
mod tests {
    use super::*;

    /// Waits for `limits`, failing the test rather than hanging.
    async fn within_10s<F: Future<Output = bool>>(limits: F) -> bool {
        tokio::time::timeout(Duration::from_secs(10), limits).await.expect("a limit is reached")
    }

    #[tokio::test]
    async fn the_earlier_of_idleness_and_the_end_of_life_is_reported() {
        let activity = Activity::new();
        let far = tokio::time::Instant::now() + Duration::from_secs(60);
        assert!(within_10s(activity.idle_for_or_until(Duration::from_millis(50), Some(far))).await, "idle first");
        let soon = tokio::time::Instant::now() + Duration::from_millis(50);
        assert!(!within_10s(activity.idle_for_or_until(Duration::from_secs(60), Some(soon))).await, "the end comes first");
        let soon = tokio::time::Instant::now() + Duration::from_millis(50);
        assert!(!within_10s(activity.idle_for_or_until(Duration::ZERO, Some(soon))).await, "no idle limit: only the end");
        let never = activity.idle_for_or_until(Duration::ZERO, None);
        assert!(tokio::time::timeout(Duration::from_millis(100), never).await.is_err(), "neither limit: it waits for ever");
    }

    #[tokio::test]
    async fn bytes_moving_put_idleness_off() {
        // Bytes move for 800 ms, longer than the 300 ms limit.
        let activity = Arc::new(Activity::new());
        let mover = {
            let activity = activity.clone();
            tokio::spawn(async move {
                for _ in 0..40 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    activity.moved();
                }
            })
        };
        assert!(within_10s(activity.idle_for_or_until(Duration::from_millis(300), None)).await);
        assert!(mover.is_finished(), "not idle while bytes moved every 20 ms");
    }

    #[tokio::test]
    async fn traffic_buffer_grows_while_reads_fill_it_and_waits_with_none() {
        let (mut tx, mut rx) = tokio::io::duplex(1 << 20);
        let mut buf = TrafficBuffer::new(64 * 1024);
        tx.write_all(&[1u8; 100]).await.unwrap();
        assert_eq!(buf.read(&mut rx).await.unwrap(), &[1u8; 100][..]);
        tx.write_all(&vec![2u8; 200 * 1024]).await.unwrap();
        assert_eq!(buf.read(&mut rx).await.unwrap().len(), SMALL_READ, "the first read after a quiet spell is small");
        assert_eq!(buf.read(&mut rx).await.unwrap().len(), 64 * 1024, "a filled small read brings in the large buffer");
        let mut got = SMALL_READ + 64 * 1024;
        while got < 200 * 1024 {
            got += buf.read(&mut rx).await.unwrap().len();
        }
        assert!(tokio::time::timeout(Duration::from_millis(50), buf.read(&mut rx)).await.is_err());
        assert_eq!(buf.buf.capacity(), 0, "an idle reader waits holding no buffer");
        drop(tx);
        assert!(buf.read(&mut rx).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn buffered_reads_ahead_only_while_data_flows() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut peer = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let mut io = buffered(listener.accept().await.unwrap().0);
        let data: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
        let writer = tokio::spawn(async move {
            peer.write_all(&data).await.unwrap();
            (peer, data)
        });
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        let mut read_ahead = false;
        while got.len() < 1 << 20 {
            let n = io.read(&mut chunk).await.unwrap();
            got.extend_from_slice(&chunk[..n]);
            read_ahead |= io.ahead.capacity() >= READ_BUFFER;
        }
        let (mut peer, data) = writer.await.unwrap();
        assert!(got == data, "bytes arrive in order");
        assert!(read_ahead, "bulk data is read ahead");
        assert!(tokio::time::timeout(Duration::from_millis(50), io.read(&mut chunk)).await.is_err());
        assert_eq!(io.ahead.capacity(), 0, "an idle connection holds no read buffer");
        peer.write_all(b"more").await.unwrap();
        let n = io.read(&mut chunk).await.unwrap();
        assert_eq!(&chunk[..n], b"more");
        assert_eq!(io.ahead.capacity(), 0, "a short message is read straight into the caller's buffer");
    }
}
