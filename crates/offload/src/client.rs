//! The non-blocking API, call for call TRENTOS TlsServer's: each call is
//! one request to the daemon, answered at once; work still under way is
//! reported as [`Code::WouldBlock`] and the caller calls again.
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use sealtls_offload_proto::proto::{decode_response, encode_write, Op, Request, Response, READABLE, WRITABLE};
use sealtls_offload_proto::Code;

use crate::answer;
use crate::error::{Error, Result};

/// How long the daemon may take to answer a call that it answers at once.
const ANSWER_LIMIT: Duration = Duration::from_secs(30);

/// A client of the offload daemon holding one slot.
#[derive(Debug)]
pub struct Client {
    stream: UnixStream,
    badge: u32,
    buffer_size: usize,
    rx: Vec<u8>,
    tx: Vec<u8>,
    /// Set once the conversation with the daemon is over; why.
    lost: Option<Error>,
}

pub(crate) fn open_error(path: &Path, e: &std::io::Error) -> Error {
    match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => Error::explained(
            Code::NotFound,
            format!(
                "no offload daemon at {0}: {e} (fix: start `sealtls offload --socket {0}`, or use the socket the daemon listens on)",
                path.display()
            ),
        ),
        _ => Error::explained(
            Code::Generic,
            format!("cannot reach the offload daemon at {}: {e} (is `sealtls offload` running there?)", path.display()),
        ),
    }
}

impl Client {
    /// `init()`: connects to the daemon at `socket` and takes a slot.
    /// OUT_OF_BOUNDS when all slots are taken, NOT_FOUND when no daemon
    /// listens there.
    pub fn open(socket: impl AsRef<Path>) -> Result<Self> {
        let path = socket.as_ref();
        let stream = UnixStream::connect(path).map_err(|e| open_error(path, &e))?;
        stream.set_read_timeout(Some(ANSWER_LIMIT)).map_err(|e| open_error(path, &e))?;
        let mut client = Self { stream, badge: 0, buffer_size: 0, rx: Vec::new(), tx: Vec::new(), lost: None };
        let (badge, buffer_size) = answer::welcome(client.answer()?)?;
        client.badge = badge;
        client.buffer_size = buffer_size;
        Ok(client)
    }

    /// This client's badge (101, 102, ...).
    pub fn badge(&self) -> u32 {
        self.badge
    }

    /// Largest `write` or `read` size the daemon accepts.
    pub fn buffer_size(&self) -> usize {
        self.buffer_size
    }

    fn lose(&mut self, error: Error) -> Error {
        self.lost = Some(error.clone());
        error
    }

    /// Reads the next answer.
    fn answer(&mut self) -> Result<Response> {
        if let Some(lost) = &self.lost {
            return Err(lost.clone());
        }
        let max = answer::max_body(self.buffer_size);
        loop {
            match decode_response(&self.rx, max) {
                Ok(Some((response, used))) => {
                    self.rx.drain(..used);
                    if let Response::Goodbye { .. } = response {
                        return Err(self.lose(answer::unexpected(response, "")));
                    }
                    return Ok(response);
                }
                Ok(None) => {}
                Err(e) => return Err(self.lose(Error::explained(Code::Generic, format!("bad answer from the offload daemon: {e}")))),
            }
            let mut chunk = [0u8; 16 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(self.lose(Error::explained(Code::Generic, "the offload daemon closed the connection"))),
                Ok(n) => self.rx.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    return Err(self.lose(Error::explained(
                        Code::Generic,
                        format!("the offload daemon did not answer within {} s", ANSWER_LIMIT.as_secs()),
                    )))
                }
                Err(e) => return Err(self.lose(Error::explained(Code::Generic, format!("lost the offload daemon: {e}")))),
            }
        }
    }

    fn send(&mut self) -> Result<()> {
        if let Some(lost) = &self.lost {
            return Err(lost.clone());
        }
        let result = self.stream.write_all(&self.tx);
        self.tx.clear();
        result.map_err(|e| self.lose(Error::explained(Code::Generic, format!("lost the offload daemon: {e}"))))
    }

    fn call(&mut self, request: &Request) -> Result<Response> {
        request.encode(&mut self.tx);
        self.send()?;
        self.answer()
    }

    fn status_call(&mut self, request: &Request, op: Op) -> Result<()> {
        let response = self.call(request)?;
        answer::status(response, op)
    }

    /// `connect(host, port)`: WOULD_BLOCK until the TCP connection is up,
    /// then SUCCESS once. INVALID_PARAMETER for an empty host or port 0.
    pub fn connect(&mut self, host: &str, port: u16) -> Result<()> {
        self.status_call(&Request::Connect { host: host.to_owned(), port }, Op::Connect)
    }

    /// `disconnect()`: closes the connection (close_notify if a session is up).
    pub fn disconnect(&mut self) -> Result<()> {
        self.status_call(&Request::Disconnect, Op::Disconnect)
    }

    /// `handshake()`: WOULD_BLOCK until the TLS handshake is done. ABORTED
    /// when it failed: [`Client::detail`] says why.
    pub fn handshake(&mut self) -> Result<()> {
        self.status_call(&Request::Handshake, Op::Handshake)
    }

    /// `reset()`: ends the TLS session; the next handshake starts a new one.
    pub fn reset(&mut self) -> Result<()> {
        self.status_call(&Request::Reset, Op::Reset)
    }

    /// `write(data)`: the number of bytes taken (at most the buffer size),
    /// or WOULD_BLOCK when the daemon's queue towards the server is full.
    pub fn write(&mut self, data: &[u8]) -> Result<usize> {
        encode_write(&mut self.tx, data);
        self.send()?;
        let response = self.answer()?;
        answer::written(response)
    }

    /// `read(buf)`: the number of bytes received into `buf` (at most the
    /// buffer size), WOULD_BLOCK when none are waiting, CONNECTION_CLOSED
    /// after the server's close_notify. `buf` is written only on success,
    /// so a loop repeating the call on WOULD_BLOCK can keep the same slice.
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize> {
        self.read_inner(buf, false)
    }

    /// Like [`Client::read`], but waits until data, the end of the stream
    /// or an error arrives.
    pub fn read_wait(&mut self, buf: &mut [u8]) -> Result<usize> {
        self.read_inner(buf, true)
    }

    fn read_inner(&mut self, buf: &mut [u8], wait: bool) -> Result<usize> {
        let size = u32::try_from(buf.len()).unwrap_or(u32::MAX);
        let response = self.call(&Request::Read { size, wait })?;
        let data = answer::read(response)?;
        if data.len() > buf.len() {
            return Err(self.lose(Error::explained(Code::Generic, "the offload daemon sent more bytes than asked for")));
        }
        buf[..data.len()].copy_from_slice(&data);
        Ok(data.len())
    }

    /// Blocks until a connect or handshake under way finishes, or until
    /// data can be read (`readable`) or written (`writable`).
    pub fn wait(&mut self, readable: bool, writable: bool) -> Result<()> {
        let interest = if readable { READABLE } else { 0 } | if writable { WRITABLE } else { 0 };
        Request::Wait { interest }.encode(&mut self.tx);
        self.send()?;
        // The answer may take as long as the server does.
        let _ = self.stream.set_read_timeout(None);
        let response = self.answer();
        let _ = self.stream.set_read_timeout(Some(ANSWER_LIMIT));
        answer::status(response?, Op::Wait)
    }

    /// Why the last call failed: the local reason if the daemon could not be
    /// asked, else the daemon's explanation (empty if nothing failed).
    pub fn detail(&mut self) -> Result<String> {
        if let Some(Error { detail: Some(what), .. }) = &self.lost {
            return Ok(what.clone());
        }
        let response = self.call(&Request::Detail)?;
        answer::text(response, Op::Detail)
    }

    /// What the TLS session negotiated and how the server was verified.
    pub fn session(&mut self) -> Result<String> {
        let response = self.call(&Request::Session)?;
        answer::text(response, Op::Session)
    }
}
