//! The async API: [`connect`] gives an [`OffloadStream`], a TLS connection
//! run by the daemon that reads and writes like any tokio stream.
//!
//! Underneath it sends the same calls as [`crate::Client`], pipelined: a
//! READ that waits for data (answered when data arrives, or WOULD_BLOCK when
//! the next call interrupts it), WRITE, and WAIT when the daemon's queue
//! towards the server is full, so nothing polls in a loop.
use std::collections::VecDeque;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use sealtls_offload_proto::proto::{decode_response, encode_write, Op, Request, Response, WRITABLE};
use sealtls_offload_proto::Code;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::UnixStream;

use crate::answer;
use crate::error::{Error, Result};

/// Bytes read from the daemon's socket at a time.
const READ_CHUNK: usize = 64 * 1024;

/// The daemon's socket and the bytes read from it but not yet decoded.
struct Wire {
    io: UnixStream,
    rx: Vec<u8>,
    max_body: usize,
}

impl Wire {
    /// Decodes the next complete answer in `rx`.
    fn decode(&mut self) -> Result<Option<Response>> {
        match decode_response(&self.rx, self.max_body) {
            Ok(Some((response, used))) => {
                self.rx.drain(..used);
                Ok(Some(response))
            }
            Ok(None) => Ok(None),
            Err(e) => Err(Error::explained(Code::Generic, format!("bad answer from the offload daemon: {e}"))),
        }
    }

    async fn answer(&mut self) -> Result<Response> {
        loop {
            if let Some(response) = self.decode()? {
                return Ok(response);
            }
            self.rx.reserve(READ_CHUNK);
            match self.io.read_buf(&mut self.rx).await {
                Ok(0) => return Err(daemon_gone(None)),
                Ok(_) => {}
                Err(e) => return Err(daemon_gone(Some(e))),
            }
        }
    }

    async fn call(&mut self, request: &Request) -> Result<Response> {
        let mut frame = Vec::new();
        request.encode(&mut frame);
        self.io.write_all(&frame).await.map_err(|e| daemon_gone(Some(e)))?;
        self.answer().await
    }
}

fn daemon_gone(e: Option<io::Error>) -> Error {
    match e {
        Some(e) => Error::explained(Code::Generic, format!("lost the offload daemon: {e}")),
        None => Error::explained(Code::Generic, "the offload daemon closed the connection"),
    }
}

/// A slot at the daemon, before it is connected anywhere.
pub struct AsyncClient {
    wire: Wire,
    badge: u32,
    buffer_size: usize,
}

impl AsyncClient {
    /// Connects to the daemon at `socket` and takes a slot.
    pub async fn open(socket: impl AsRef<Path>) -> Result<Self> {
        let path = socket.as_ref();
        let io = UnixStream::connect(path).await.map_err(|e| crate::client::open_error(path, &e))?;
        let mut wire = Wire { io, rx: Vec::new(), max_body: answer::max_body(0) };
        let (badge, buffer_size) = answer::welcome(wire.answer().await?)?;
        wire.max_body = answer::max_body(buffer_size);
        Ok(Self { wire, badge, buffer_size })
    }

    /// This client's badge.
    pub fn badge(&self) -> u32 {
        self.badge
    }

    /// Adds the daemon's explanation to a failed connect or handshake.
    async fn explain(&mut self, error: Error) -> Error {
        if error.detail.is_some() {
            return error;
        }
        match self.wire.call(&Request::Detail).await.and_then(|r| answer::text(r, Op::Detail)) {
            Ok(text) if !text.is_empty() => Error { detail: Some(text), ..error },
            _ => error,
        }
    }

    /// Calls `request` until it stops answering WOULD_BLOCK, waiting in between.
    async fn complete(&mut self, request: Request, op: Op) -> Result<()> {
        loop {
            let response = self.wire.call(&request).await?;
            match answer::status(response, op) {
                Err(e) if e.is_would_block() => {
                    let response = self.wire.call(&Request::Wait { interest: 0 }).await?;
                    answer::status(response, Op::Wait)?;
                }
                Err(e) => return Err(self.explain(e).await),
                Ok(()) => return Ok(()),
            }
        }
    }

    /// Has the daemon connect to `host:port` and complete the TLS handshake,
    /// verifying the server against the daemon's trust anchors (and, unless
    /// the daemon says otherwise, against `host`). A failure carries the
    /// daemon's explanation.
    pub async fn connect(mut self, host: &str, port: u16) -> Result<OffloadStream> {
        self.complete(Request::Connect { host: host.to_owned(), port }, Op::Connect).await?;
        self.complete(Request::Handshake, Op::Handshake).await?;
        let response = self.wire.call(&Request::Session).await?;
        let session = answer::text(response, Op::Session)?;
        Ok(OffloadStream {
            wire: self.wire,
            badge: self.badge,
            buffer_size: self.buffer_size,
            session,
            tx: Vec::new(),
            sent: 0,
            expected: VecDeque::new(),
            inbound: Vec::new(),
            taken: 0,
            read_end: None,
            written: None,
            write_blocked: false,
            disconnected: None,
            lost: None,
            reader: None,
            writer: None,
        })
    }
}

/// Opens a slot at the daemon listening on `socket` and connects it to
/// `host:port` over TLS.
pub async fn connect(socket: impl AsRef<Path>, host: &str, port: u16) -> Result<OffloadStream> {
    AsyncClient::open(socket).await?.connect(host, port).await
}

/// Answers the stream is waiting for, in the order the calls were sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expected {
    Read,
    Write,
    Wait,
    Disconnect,
}

/// A TLS connection run by the offload daemon.
///
/// As with other tokio streams, a write that returned `Pending` must be
/// repeated with the same bytes: they may already be on their way.
pub struct OffloadStream {
    wire: Wire,
    badge: u32,
    buffer_size: usize,
    session: String,
    tx: Vec<u8>,
    sent: usize,
    expected: VecDeque<Expected>,
    inbound: Vec<u8>,
    taken: usize,
    /// `Some(None)`: the server closed cleanly; `Some(Some(e))`: it broke.
    read_end: Option<Option<Error>>,
    written: Option<Result<usize>>,
    write_blocked: bool,
    disconnected: Option<Result<()>>,
    lost: Option<Error>,
    reader: Option<Waker>,
    writer: Option<Waker>,
}

impl OffloadStream {
    /// What the handshake negotiated and how the server was verified.
    pub fn session(&self) -> &str {
        &self.session
    }

    /// This client's badge.
    pub fn badge(&self) -> u32 {
        self.badge
    }

    fn expect(&mut self, request: &Request, expected: Expected) {
        request.encode(&mut self.tx);
        self.expected.push_back(expected);
    }

    fn lose(&mut self, error: Error) -> Error {
        self.lost = Some(error.clone());
        for waker in [self.reader.take(), self.writer.take()].into_iter().flatten() {
            waker.wake();
        }
        error
    }

    /// Sends what is queued and takes every answer that has arrived.
    fn drive(&mut self, cx: &mut Context<'_>) -> Result<()> {
        if let Some(lost) = &self.lost {
            return Err(lost.clone());
        }
        while self.sent < self.tx.len() {
            match Pin::new(&mut self.wire.io).poll_write(cx, &self.tx[self.sent..]) {
                Poll::Ready(Ok(n)) if n > 0 => self.sent += n,
                Poll::Ready(Ok(_)) => return Err(self.lose(daemon_gone(None))),
                Poll::Ready(Err(e)) => return Err(self.lose(daemon_gone(Some(e)))),
                Poll::Pending => break,
            }
        }
        if self.sent == self.tx.len() {
            self.tx.clear();
            self.sent = 0;
        }
        loop {
            loop {
                match self.wire.decode() {
                    Ok(Some(response)) => self.dispatch(response)?,
                    Ok(None) => break,
                    Err(e) => return Err(self.lose(e)),
                }
            }
            if self.expected.is_empty() {
                return Ok(());
            }
            let mut chunk = [0u8; READ_CHUNK];
            let mut buf = ReadBuf::new(&mut chunk);
            match Pin::new(&mut self.wire.io).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return Err(self.lose(daemon_gone(None))),
                Poll::Ready(Ok(())) => self.wire.rx.extend_from_slice(buf.filled()),
                Poll::Ready(Err(e)) => return Err(self.lose(daemon_gone(Some(e)))),
                Poll::Pending => return Ok(()),
            }
        }
    }

    fn dispatch(&mut self, response: Response) -> Result<()> {
        let Some(expected) = self.expected.pop_front().filter(|_| !matches!(response, Response::Goodbye { .. })) else {
            return Err(self.lose(answer::unexpected(response, "no answer")));
        };
        match expected {
            Expected::Read => {
                match answer::read(response) {
                    Ok(data) => {
                        self.inbound.drain(..self.taken);
                        self.taken = 0;
                        self.inbound.extend_from_slice(&data);
                    }
                    Err(e) if e.is_would_block() => {}
                    Err(e) if e.code == Code::ConnectionClosed => self.read_end = Some(None),
                    Err(e) => self.read_end = Some(Some(e)),
                }
                if let Some(w) = self.reader.take() {
                    w.wake();
                }
            }
            Expected::Write => {
                self.written = Some(answer::written(response));
                if let Some(w) = self.writer.take() {
                    w.wake();
                }
            }
            Expected::Wait => {
                self.write_blocked = false;
                answer::status(response, Op::Wait).or_else(|e| if e.is_would_block() { Ok(()) } else { Err(e) })?;
                if let Some(w) = self.writer.take() {
                    w.wake();
                }
            }
            Expected::Disconnect => {
                self.disconnected = Some(answer::status(response, Op::Disconnect));
                if let Some(w) = self.writer.take() {
                    w.wake();
                }
            }
        }
        Ok(())
    }

    /// When one side finishes, the other may be left waiting on a socket
    /// wake-up registered for this side: wake it so it registers its own.
    fn hand_over(&mut self, finished_reading: bool) {
        let other = if finished_reading { self.writer.take() } else { self.reader.take() };
        if let Some(w) = other {
            w.wake();
        }
    }

    fn take_inbound(&mut self, buf: &mut ReadBuf<'_>) -> Option<io::Result<()>> {
        if self.taken < self.inbound.len() {
            let n = buf.remaining().min(self.inbound.len() - self.taken);
            buf.put_slice(&self.inbound[self.taken..self.taken + n]);
            self.taken += n;
            return Some(Ok(()));
        }
        match &self.read_end {
            Some(None) => Some(Ok(())),
            Some(Some(e)) => Some(Err(e.clone().into())),
            None => None,
        }
    }
}

impl AsyncRead for OffloadStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(done) = this.take_inbound(buf) {
            return Poll::Ready(done);
        }
        this.reader = Some(cx.waker().clone());
        if !this.expected.contains(&Expected::Read) {
            let size = this.buffer_size as u32;
            this.expect(&Request::Read { size, wait: true }, Expected::Read);
        }
        if let Err(e) = this.drive(cx) {
            this.reader = None;
            return Poll::Ready(Err(e.into()));
        }
        match this.take_inbound(buf) {
            Some(done) => {
                this.reader = None;
                this.hand_over(true);
                Poll::Ready(done)
            }
            None => Poll::Pending,
        }
    }
}

impl OffloadStream {
    /// A WRITE answer, as poll_write's result; `None` after WOULD_BLOCK.
    fn take_written(&mut self) -> Option<io::Result<usize>> {
        match self.written.take()? {
            Ok(n) => Some(Ok(n)),
            Err(e) if e.is_would_block() => {
                self.write_blocked = true;
                None
            }
            Err(e) => Some(Err(e.into())),
        }
    }
}

impl AsyncWrite for OffloadStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        this.writer = Some(cx.waker().clone());
        // Two rounds: a WOULD_BLOCK answer found in the first leads to a WAIT in the second.
        for _ in 0..2 {
            if let Some(done) = this.take_written() {
                this.writer = None;
                this.hand_over(false);
                return Poll::Ready(done);
            }
            let waiting = this.expected.contains(&Expected::Write) || this.expected.contains(&Expected::Wait);
            if !waiting {
                if this.write_blocked {
                    this.expect(&Request::Wait { interest: WRITABLE }, Expected::Wait);
                } else {
                    encode_write(&mut this.tx, &data[..data.len().min(this.buffer_size)]);
                    this.expected.push_back(Expected::Write);
                }
            }
            if let Err(e) = this.drive(cx) {
                this.writer = None;
                return Poll::Ready(Err(e.into()));
            }
        }
        match this.take_written() {
            Some(done) => {
                this.writer = None;
                this.hand_over(false);
                Poll::Ready(done)
            }
            None => Poll::Pending,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Every write is confirmed before poll_write returns; only queued calls remain.
        let this = self.get_mut();
        this.drive(cx).map_err(io::Error::from)?;
        if this.tx.is_empty() {
            Poll::Ready(Ok(()))
        } else {
            this.writer = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    /// Ends the TLS session with close_notify (DISCONNECT).
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.writer = Some(cx.waker().clone());
        if this.disconnected.is_none() && !this.expected.contains(&Expected::Disconnect) {
            this.expect(&Request::Disconnect, Expected::Disconnect);
        }
        this.drive(cx).map_err(io::Error::from)?;
        match this.disconnected.take() {
            None => Poll::Pending,
            Some(result) => {
                this.writer = None;
                this.hand_over(false);
                // INVALID_STATE: the connection was already gone, which is what was asked.
                Poll::Ready(match result {
                    Err(e) if e.code != Code::InvalidState => Err(e.into()),
                    _ => Ok(()),
                })
            }
        }
    }
}
