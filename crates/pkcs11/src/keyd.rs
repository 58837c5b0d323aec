//! A blocking keyd client for a module that lives in someone else's
//! process: it starts no thread, keeps a few idle connections, bounds the
//! connect and the wait for each answer, and in a forked child opens its own connections
//! (writing on the parent's would interleave with the parent's requests).
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::{ClientConfig, ClientConnection, StreamOwned};
use rustls_pki_types::ServerName;
use sealtls_custody_proto::{decode_frame, message_parts, ErrorCode, Request, Response};

use crate::config::Config;

/// Idle connections kept per process; more concurrent callers open more and close the extra.
const MAX_IDLE: usize = 4;
/// How often the same complaint may reach stderr.
const COMPLAINT_PERIOD: Duration = Duration::from_secs(30);

/// Why keyd gave no signature.
#[derive(Debug)]
pub(crate) enum KeydError {
    /// No connection, a broken one, or no answer in time.
    Unreachable(String),
    /// keyd answered with an error.
    Refused { code: ErrorCode, message: String },
}

enum Target {
    Unix(PathBuf),
    Tls { addr: String, server_name: ServerName<'static>, config: Arc<ClientConfig> },
}

enum Conn {
    Unix(UnixStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Conn {
    /// The socket underneath, whose timeouts bound each read and write.
    fn socket(&self) -> socket2::SockRef<'_> {
        match self {
            Self::Unix(s) => socket2::SockRef::from(s),
            Self::Tls(s) => socket2::SockRef::from(&s.sock),
        }
    }

    fn set_timeout(&self, t: Duration) -> io::Result<()> {
        self.socket().set_read_timeout(Some(t))?;
        self.socket().set_write_timeout(Some(t))
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Unix(s) => s.read(buf),
            Self::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Unix(s) => s.write(buf),
            Self::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Unix(s) => s.flush(),
            Self::Tls(s) => s.flush(),
        }
    }
}

/// Idle connections, owned by the process that opened them.
struct Pool {
    pid: u32,
    idle: Vec<Conn>,
}

/// keyd, as the module reaches it.
pub(crate) struct Keyd {
    endpoint: String,
    target: Target,
    timeout: Duration,
    pool: Mutex<Pool>,
    next_id: AtomicU64,
    /// When each complaint last reached stderr.
    complaints: Mutex<HashMap<String, Instant>>,
}

impl Keyd {
    /// A client for the configured keyd; reads the TLS files now, connects on first use.
    pub(crate) fn new(config: &Config) -> Result<Self, String> {
        let target = match (&config.tls, config.keyd.strip_prefix("unix:"), config.keyd.strip_prefix("tls://")) {
            (_, Some(path), _) => Target::Unix(PathBuf::from(path)),
            (Some(files), _, Some(addr)) => {
                let host = sealtls_endpoint::client::host_of(addr).map_err(|f| f.to_string())?;
                let server_name = ServerName::try_from(host.to_string()).map_err(|e| format!("keyd {addr}: {e}"))?;
                let config = sealtls_endpoint::client::keyd_client_config(&files.ca, &files.cert, &files.key).map_err(|f| f.to_string())?;
                Target::Tls { addr: addr.to_string(), server_name, config: Arc::new(config) }
            }
            _ => return Err(format!("{}: keyd {:?} is neither unix:PATH nor tls://HOST:PORT", config.origin, config.keyd)),
        };
        Ok(Self {
            endpoint: config.keyd.clone(),
            target,
            timeout: config.timeout,
            pool: Mutex::new(Pool { pid: std::process::id(), idle: Vec::new() }),
            next_id: AtomicU64::new(1),
            complaints: Mutex::new(HashMap::new()),
        })
    }

    /// Asks keyd once; a reused connection that turns out dead is replaced once.
    pub(crate) fn call(&self, request: &Request) -> Result<Response, KeydError> {
        let deadline = Instant::now() + self.timeout;
        let pid = std::process::id();
        let result = match self.idle(pid) {
            Some(conn) => match self.exchange(conn, request, deadline) {
                Ok(answer) => Ok(answer),
                // keyd may have closed an idle connection (restart, idle limit): try a new one.
                Err(_) => self.fresh_exchange(request, deadline),
            },
            None => self.fresh_exchange(request, deadline),
        };
        match result {
            Ok((response, conn)) => {
                self.recycle(conn, pid);
                self.complaints.lock().unwrap_or_else(|e| e.into_inner()).remove("unreachable");
                match response {
                    Response::Error { code, message } => Err(KeydError::Refused { code, message }),
                    other => Ok(other),
                }
            }
            // A read that ran into the deadline: keyd is there but silent.
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                Err(KeydError::Unreachable(format!("keyd at {} did not answer within {} ms", self.endpoint, self.timeout.as_millis())))
            }
            Err(e) => Err(KeydError::Unreachable(format!("keyd at {} is unreachable: {e}", self.endpoint))),
        }
    }

    /// Writes `what` to stderr unless the same `kind` of complaint was written within the last 30 seconds.
    pub(crate) fn complain(&self, kind: &str, what: &str) {
        let mut last = self.complaints.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if last.get(kind).is_some_and(|t| now.duration_since(*t) < COMPLAINT_PERIOD) {
            return;
        }
        if last.len() > 64 {
            last.clear();
        }
        last.insert(kind.to_string(), now);
        eprintln!("sealtls-pkcs11[{}]: {what}", std::process::id());
    }

    fn fresh_exchange(&self, request: &Request, deadline: Instant) -> io::Result<(Response, Conn)> {
        let conn = self.connect(deadline)?;
        self.exchange(conn, request, deadline)
    }

    /// An idle connection of process `pid` (this one); a forked child drops its parent's.
    fn idle(&self, pid: u32) -> Option<Conn> {
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        if pool.pid != pid {
            // Closing the child's copies of the descriptors leaves the parent's connections open.
            pool.idle.clear();
            pool.pid = pid;
        }
        pool.idle.pop()
    }

    fn recycle(&self, conn: Conn, pid: u32) {
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        if pool.pid == pid && pool.idle.len() < MAX_IDLE {
            pool.idle.push(conn);
        }
    }

    /// Drops every idle connection (C_Finalize).
    pub(crate) fn close_all(&self) {
        self.pool.lock().unwrap_or_else(|e| e.into_inner()).idle.clear();
    }

    fn connect(&self, deadline: Instant) -> io::Result<Conn> {
        remaining(deadline)?;
        match &self.target {
            Target::Unix(path) => {
                // A blocking connect to a Unix socket whose backlog is full waits
                // for as long as the send timeout allows: set it first.
                let socket = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None)?;
                socket.set_write_timeout(Some(remaining(deadline)?))?;
                socket.connect(&socket2::SockAddr::unix(path)?)?;
                let conn = Conn::Unix(UnixStream::from(std::os::fd::OwnedFd::from(socket)));
                conn.set_timeout(self.timeout)?;
                Ok(conn)
            }
            Target::Tls { addr, server_name, config } => {
                let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{addr} resolves to no address"));
                for sa in addr.to_socket_addrs()? {
                    match TcpStream::connect_timeout(&sa, remaining(deadline)?) {
                        Ok(tcp) => {
                            tcp.set_nodelay(true)?;
                            let tls = ClientConnection::new(config.clone(), server_name.clone()).map_err(io::Error::other)?;
                            let mut conn = Conn::Tls(Box::new(StreamOwned::new(tls, tcp)));
                            conn.set_timeout(remaining(deadline)?)?;
                            if let Conn::Tls(s) = &mut conn {
                                while s.conn.is_handshaking() {
                                    s.conn.complete_io(&mut s.sock)?;
                                }
                            }
                            conn.set_timeout(self.timeout)?;
                            return Ok(conn);
                        }
                        Err(e) => last = e,
                    }
                }
                Err(last)
            }
        }
    }

    /// One request and its answer: the write within the socket's timeout,
    /// the answer within `timeout` of the request going out (the first read
    /// by the socket's own timeout, set at connect; later ones by the time left).
    fn exchange(&self, mut conn: Conn, request: &Request, deadline: Instant) -> io::Result<(Response, Conn)> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut out = Vec::with_capacity(256);
        request.encode(id, &mut out);
        remaining(deadline)?;
        conn.write_all(&out)?;
        conn.flush()?;
        let answer_by = Instant::now() + self.timeout;
        let mut buf = Vec::with_capacity(1024);
        let mut chunk = [0u8; 16 * 1024];
        loop {
            if !buf.is_empty() {
                conn.socket().set_read_timeout(Some(remaining(answer_by)?))?;
            }
            let n = conn.read(&mut chunk)?;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "keyd closed the connection"));
            }
            buf.extend_from_slice(&chunk[..n]);
            match decode_frame(&buf) {
                Ok(Some((frame, used))) => {
                    if frame.id != id || used != buf.len() {
                        return Err(io::Error::new(io::ErrorKind::InvalidData, "keyd answered another request"));
                    }
                    let response = Response::decode(&frame).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                    return Ok((response, conn));
                }
                Ok(None) => {}
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
            }
        }
    }
}

fn remaining(deadline: Instant) -> io::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::Error::new(io::ErrorKind::TimedOut, "no answer in time"));
    }
    Ok(left)
}

impl KeydError {
    /// For stderr: what happened, and keyd's advice when it gave one.
    pub(crate) fn describe(&self) -> String {
        match self {
            Self::Unreachable(why) => why.clone(),
            Self::Refused { code, message } => {
                let (what, fix) = message_parts(message);
                match fix {
                    Some(fix) => format!("keyd refused ({code}): {what}; {fix}"),
                    None => format!("keyd refused ({code}): {what}"),
                }
            }
        }
    }
}
