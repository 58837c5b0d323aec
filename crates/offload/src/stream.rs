//! The async API: [`connect`] gives an [`OffloadStream`], a TLS connection
//! run by the daemon that reads and writes like any tokio stream.
//!
//! Connecting uses the same calls as [`crate::Client`] (with WAIT instead
//! of polling); the session then runs in the protocol's streaming mode.
use std::collections::VecDeque;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use sealtls_offload_proto::proto::{decode_response, encode_send, split_bulk, Bulk, Op, Request, Response};
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

/// Wakes the task waiting in `slot` unless it is the one running (`cx`):
/// waking oneself only costs a needless trip through the scheduler.
fn wake_other(slot: &mut Option<Waker>, cx: &Context<'_>) {
    if let Some(w) = slot.take_if(|w| !w.will_wake(cx.waker())) {
        w.wake();
    }
}

/// Reads from the daemon's socket into the spare capacity of `rx`.
fn read_into_rx(wire: &mut Wire, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
    loop {
        match wire.io.poll_read_ready(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        }
        match wire.io.try_read_buf(&mut wire.rx) {
            Ok(n) => return Poll::Ready(Ok(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Poll::Ready(Err(e)),
        }
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
        let receive_window = RECEIVE_WINDOW_BUFFERS * self.buffer_size;
        let send_window = match self.wire.call(&Request::Stream { window: receive_window as u32 }).await? {
            Response::Streaming { code: Code::Success, send_window } => send_window as usize,
            Response::Streaming { code, .. } => return Err(self.explain(Error::code(code)).await),
            other => return Err(answer::unexpected(other, "a STREAM answer")),
        };
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
            receive_window,
            consumed: 0,
            end: None,
            send_window,
            in_flight: 0,
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

/// Queued SEND bytes that make a write go out at once.
const FLUSH_AT: usize = 64 * 1024;

/// Receive credit granted to the daemon, in buffers.
const RECEIVE_WINDOW_BUFFERS: usize = 8;

/// A TLS connection run by the offload daemon, in the protocol's streaming
/// mode: the daemon pushes what arrives (within the credit this side
/// grants as it consumes) and takes SENDs within its send window, so data
/// moves without a round trip per call.
///
/// Written bytes are queued for the daemon until 64 KiB are waiting, the
/// stream is read, flushed or shut down: flush after a request you expect
/// an answer to, as with a `BufWriter`.
pub struct OffloadStream {
    wire: Wire,
    badge: u32,
    buffer_size: usize,
    session: String,
    tx: Vec<u8>,
    sent: usize,
    /// Answers still due, in order (DISCONNECT).
    expected: VecDeque<Op>,
    inbound: Vec<u8>,
    taken: usize,
    receive_window: usize,
    /// Bytes read by the application and not yet returned as credit.
    consumed: usize,
    /// `Some(None)`: the server closed cleanly; `Some(Some(e))`: it broke.
    end: Option<Option<Error>>,
    send_window: usize,
    in_flight: usize,
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

    fn lose(&mut self, error: Error) -> Error {
        self.lost = Some(error.clone());
        self.wake_both();
        error
    }

    fn wake_both(&mut self) {
        for waker in [self.reader.take(), self.writer.take()].into_iter().flatten() {
            waker.wake();
        }
    }

    /// Sends what is queued and takes every frame that has arrived.
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
            self.take_frames(cx)?;
            if self.expected.is_empty() && self.reader.is_none() && self.writer.is_none() {
                return Ok(());
            }
            self.wire.rx.reserve(READ_CHUNK);
            match read_into_rx(&mut self.wire, cx) {
                Poll::Ready(Ok(0)) => return Err(self.lose(daemon_gone(None))),
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Err(self.lose(daemon_gone(Some(e)))),
                Poll::Pending => return Ok(()),
            }
        }
    }

    /// Takes every complete frame in the receive buffer; pushed data goes
    /// straight from there to the inbound queue.
    fn take_frames(&mut self, cx: &Context<'_>) -> Result<()> {
        let rx = std::mem::take(&mut self.wire.rx);
        let mut start = 0;
        let result = loop {
            if let Some((Bulk::Data(data), used)) = split_bulk(&rx[start..], self.wire.max_body) {
                start += used;
                if self.taken == self.inbound.len() {
                    self.inbound.clear();
                    self.taken = 0;
                }
                self.inbound.extend_from_slice(data);
                wake_other(&mut self.reader, cx);
                continue;
            }
            match decode_response(&rx[start..], self.wire.max_body) {
                Ok(Some((frame, used))) => {
                    start += used;
                    if let Err(e) = self.dispatch(frame, cx) {
                        break Err(e);
                    }
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(self.lose(Error::explained(Code::Generic, format!("bad frame from the offload daemon: {e}")))),
            }
        };
        self.wire.rx = rx;
        self.wire.rx.drain(..start);
        result
    }

    fn dispatch(&mut self, frame: Response, cx: &Context<'_>) -> Result<()> {
        match frame {
            Response::Data { code, .. } => {
                self.end = Some((code != Code::ConnectionClosed).then(|| Error::code(code)));
                self.wake_both();
            }
            Response::Sent(n) => {
                self.in_flight = self.in_flight.saturating_sub(n as usize);
                wake_other(&mut self.writer, cx);
            }
            Response::Goodbye { .. } => return Err(self.lose(answer::unexpected(frame, "no goodbye"))),
            other => match self.expected.pop_front() {
                Some(op) => {
                    self.disconnected = Some(answer::status(other, op));
                    wake_other(&mut self.writer, cx);
                }
                None => return Err(self.lose(answer::unexpected(other, "no answer"))),
            },
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

    /// Copies received bytes into `buf`, returning credit to the daemon once
    /// half the window is consumed; or reports the end.
    fn take_inbound(&mut self, buf: &mut ReadBuf<'_>) -> Option<io::Result<()>> {
        if self.taken < self.inbound.len() {
            let n = buf.remaining().min(self.inbound.len() - self.taken);
            buf.put_slice(&self.inbound[self.taken..self.taken + n]);
            self.taken += n;
            self.consumed += n;
            if self.consumed >= self.receive_window / 2 {
                Request::Credit(self.consumed as u32).encode(&mut self.tx);
                self.consumed = 0;
            }
            return Some(Ok(()));
        }
        match &self.end {
            Some(None) => Some(Ok(())),
            Some(Some(e)) => Some(Err(e.clone().into())),
            None => None,
        }
    }
}

impl AsyncRead for OffloadStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.taken == this.inbound.len() && this.end.is_none() {
            this.reader = Some(cx.waker().clone());
            if let Err(e) = this.drive(cx) {
                this.reader = None;
                return Poll::Ready(Err(e.into()));
            }
        }
        match this.take_inbound(buf) {
            Some(done) => {
                this.reader = None;
                // Hands over returned credit; a failure shows on the next call.
                let _ = this.drive(cx);
                this.hand_over(true);
                Poll::Ready(done)
            }
            None => Poll::Pending,
        }
    }
}

impl AsyncWrite for OffloadStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.in_flight >= this.send_window {
            this.writer = Some(cx.waker().clone());
            if let Err(e) = this.drive(cx) {
                this.writer = None;
                return Poll::Ready(Err(e.into()));
            }
        }
        if let Some(end) = &this.end {
            let e = end.clone().unwrap_or_else(|| Error::code(Code::ConnectionClosed));
            return Poll::Ready(Err(e.into()));
        }
        let room = this.send_window - this.in_flight.min(this.send_window);
        if room == 0 {
            return Poll::Pending;
        }
        this.writer = None;
        let n = data.len().min(room);
        for frame in data[..n].chunks(this.buffer_size) {
            encode_send(&mut this.tx, frame);
        }
        this.in_flight += n;
        // Small writes wait in `tx` for the next call (or flush) to travel together.
        if this.tx.len() >= FLUSH_AT {
            if let Err(e) = this.drive(cx) {
                return Poll::Ready(Err(e.into()));
            }
            this.hand_over(false);
        }
        Poll::Ready(Ok(n))
    }

    /// Hands every queued byte to the daemon.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.drive(cx).map_err(io::Error::from)?;
        if this.tx.is_empty() {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }

    /// Ends the TLS session: the daemon sends what is queued, then
    /// close_notify (DISCONNECT).
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.writer = Some(cx.waker().clone());
        if this.disconnected.is_none() && !this.expected.contains(&Op::Disconnect) {
            Request::Disconnect.encode(&mut this.tx);
            this.expected.push_back(Op::Disconnect);
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
