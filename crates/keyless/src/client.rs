//! A keyd client: a small pool of connections, each carrying pipelined
//! requests matched to their responses by request id. Connections are
//! opened on first use and again after keyd comes back.
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use sealtls_custody_proto::{decode_frame, ErrorCode, Request, Response};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use zeroize::Zeroize;

use crate::metrics::KeylessMetrics;

/// Where keyd listens.
#[derive(Clone)]
pub enum KeydEndpoint {
    /// Its Unix socket.
    Unix(PathBuf),
    /// Its mutual-TLS listener.
    Tls {
        /// HOST:PORT.
        addr: String,
        /// The name keyd's certificate must carry.
        server_name: ServerName<'static>,
        /// Trust for keyd and this client's certificate.
        config: Arc<ClientConfig>,
    },
}

impl std::fmt::Display for KeydEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unix(p) => write!(f, "unix:{}", p.display()),
            Self::Tls { addr, .. } => write!(f, "tls://{addr}"),
        }
    }
}

/// Why a call to keyd did not give an answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum KeydError {
    /// No connection could be made, or it broke.
    #[error("keyd at {endpoint} is unreachable: {detail}")]
    Unreachable {
        /// Where keyd was expected.
        endpoint: String,
        /// What happened.
        detail: String,
    },
    /// keyd answered with an error.
    #[error("keyd refused: {message} ({code})")]
    Refused {
        /// The protocol's code.
        code: ErrorCode,
        /// keyd's explanation.
        message: String,
    },
    /// No answer within the time limit.
    #[error("keyd at {0} did not answer within {1:?}")]
    Timeout(String, Duration),
    /// The TLS session with keyd was refused, by keyd (our certificate) or
    /// by us (keyd's), explained.
    #[error("keyd at {endpoint}: {}", failure.what)]
    Tls {
        /// Where keyd was expected.
        endpoint: String,
        /// What went wrong, with its class and remedy.
        failure: sealtls_endpoint::Failure,
    },
    /// Blocking calls need a multi-thread tokio runtime.
    #[error("keyless signing needs a multi-thread tokio runtime")]
    Runtime,
}

/// Where an answer goes: an async caller, or a thread blocked in rustls's signer.
enum Waiter {
    Async(oneshot::Sender<Response>),
    Blocking(std::sync::mpsc::SyncSender<Response>),
}

impl Waiter {
    fn answer(self, r: Response) {
        match self {
            Self::Async(tx) => drop(tx.send(r)),
            Self::Blocking(tx) => drop(tx.try_send(r)),
        }
    }
}

/// The waiters of a connection's requests by id; `None` once the connection
/// is closed, so that no request can be queued behind its end.
type Pending = Arc<Mutex<Option<HashMap<u64, Waiter>>>>;

/// One connection to keyd.
struct Conn {
    tx: mpsc::UnboundedSender<Vec<u8>>,
    pending: Pending,
    alive: Arc<AtomicBool>,
    /// The TLS alert keyd closed the connection with, if it sent one.
    alert: Arc<Mutex<Option<std::io::Error>>>,
}

/// A pool of pipelined connections to keyd.
pub struct KeydClient {
    endpoint: KeydEndpoint,
    slots: Vec<tokio::sync::Mutex<Option<Arc<Conn>>>>,
    next_slot: AtomicUsize,
    next_id: AtomicU64,
    timeout: Duration,
    metrics: KeylessMetrics,
}

impl KeydClient {
    /// A client with `pool` connections (at least one), each call answered within `timeout`.
    pub fn new(endpoint: KeydEndpoint, pool: usize, timeout: Duration) -> Arc<Self> {
        let slots = (0..pool.max(1)).map(|_| tokio::sync::Mutex::new(None)).collect();
        Arc::new(Self {
            endpoint,
            slots,
            next_slot: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            timeout,
            metrics: KeylessMetrics::default(),
        })
    }

    /// Where keyd is.
    pub fn endpoint(&self) -> &KeydEndpoint {
        &self.endpoint
    }

    /// What this client counts, to be registered for Prometheus.
    pub fn metrics(&self) -> &KeylessMetrics {
        &self.metrics
    }

    /// Whether keyd answers a PING now (opening a connection if none is up).
    pub async fn ping(&self) -> Result<(), KeydError> {
        match self.call(&Request::Ping(b"health".to_vec())).await? {
            Response::Pong(_) => Ok(()),
            other => Err(self.unreachable(format!("keyd answered PING with {:?}", other.op()))),
        }
    }

    fn unreachable(&self, detail: impl std::fmt::Display) -> KeydError {
        KeydError::Unreachable { endpoint: self.endpoint.to_string(), detail: detail.to_string() }
    }

    /// A TLS error explained, when it is one (a refused certificate, an alert).
    fn tls_failure(&self, e: &std::io::Error) -> Option<KeydError> {
        use rustls::AlertDescription as A;
        use sealtls_endpoint::explain::{alert_name, explain, tls_error, Side};
        let endpoint = self.endpoint.to_string();
        let failure = match tls_error(e)? {
            // A certificate alert from keyd is about ours: the client sends one over TLS.
            rustls::Error::AlertReceived(
                alert @ (A::UnknownCA
                | A::BadCertificate
                | A::CertificateUnknown
                | A::UnsupportedCertificate
                | A::CertificateExpired
                | A::CertificateRevoked
                | A::CertificateRequired
                | A::AccessDenied),
            ) => sealtls_endpoint::Failure::new(
                sealtls_endpoint::FailureClass::Rejected,
                format!("keyd refused our client certificate (alert {})", alert_name(*alert)),
                "use a certificate issued by a CA keyd trusts for this caller",
            ),
            _ => explain(e, &Default::default(), Side::Client, &endpoint),
        };
        Some(KeydError::Tls { endpoint, failure })
    }

    /// Why `conn` closed: the alert keyd sent (our certificate refused, in
    /// TLS 1.3 only after the handshake), or just that it closed.
    fn closed(&self, conn: &Conn) -> KeydError {
        let alert = conn.alert.lock().expect("alert lock");
        alert.as_ref().and_then(|e| self.tls_failure(e)).unwrap_or_else(|| self.unreachable("keyd closed the connection"))
    }

    async fn conn(&self) -> Result<Arc<Conn>, KeydError> {
        let slot = &self.slots[self.next_slot.fetch_add(1, Ordering::Relaxed) % self.slots.len()];
        let mut held = slot.lock().await;
        if let Some(c) = held.as_ref().filter(|c| c.alive.load(Ordering::Acquire)) {
            return Ok(c.clone());
        }
        let conn = Arc::new(match &self.endpoint {
            KeydEndpoint::Unix(path) => {
                let stream = tokio::net::UnixStream::connect(path).await.map_err(|e| self.unreachable(e))?;
                start(stream)
            }
            KeydEndpoint::Tls { addr, server_name, config } => {
                let tcp = tokio::net::TcpStream::connect(addr.as_str()).await.map_err(|e| self.unreachable(e))?;
                let _ = tcp.set_nodelay(true);
                let tls = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(server_name.clone(), tcp)
                    .await
                    .map_err(|e| self.tls_failure(&e).unwrap_or_else(|| self.unreachable(format!("TLS handshake: {e}"))))?;
                start(tls)
            }
        });
        *held = Some(conn.clone());
        Ok(conn)
    }

    /// A connection that is up, without waiting for a slot or connecting.
    fn live_conn(&self) -> Option<Arc<Conn>> {
        let slot = &self.slots[self.next_slot.fetch_add(1, Ordering::Relaxed) % self.slots.len()];
        slot.try_lock().ok()?.as_ref().filter(|c| c.alive.load(Ordering::Acquire)).cloned()
    }

    /// Queues `request` on `conn`; the answer goes to `waiter`.
    fn submit(&self, conn: &Conn, request: &Request, waiter: Waiter) -> Result<u64, KeydError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut frame = Vec::new();
        request.encode(id, &mut frame);
        // Registered and sent under the lock the reader takes to close the
        // connection: a request is either answered or told of the close.
        let mut pending = conn.pending.lock().expect("pending lock");
        let Some(waiters) = pending.as_mut() else { return Err(self.unreachable("keyd closed the connection")) };
        if conn.tx.send(frame).is_err() {
            return Err(self.unreachable("the connection closed"));
        }
        waiters.insert(id, waiter);
        Ok(id)
    }

    fn timed_out(&self, conn: &Conn, id: u64) -> KeydError {
        if let Some(waiters) = conn.pending.lock().expect("pending lock").as_mut() {
            waiters.remove(&id);
        }
        KeydError::Timeout(self.endpoint.to_string(), self.timeout)
    }

    /// Sends `request` and waits for its answer; error answers become [`KeydError::Refused`].
    pub async fn call(&self, request: &Request) -> Result<Response, KeydError> {
        let call = self.metrics.start(matches!(request, Request::Sign { .. }));
        let result = self.call_once(request).await;
        call.end(&result);
        result
    }

    async fn call_once(&self, request: &Request) -> Result<Response, KeydError> {
        let conn = tokio::time::timeout(self.timeout, self.conn())
            .await
            .map_err(|_| KeydError::Timeout(self.endpoint.to_string(), self.timeout))??;
        let (tx, rx) = oneshot::channel();
        let id = self.submit(&conn, request, Waiter::Async(tx))?;
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(r)) => refused(r),
            Ok(Err(_)) => Err(self.closed(&conn)),
            Err(_) => Err(self.timed_out(&conn, id)),
        }
    }

    /// [`KeydClient::call`] from synchronous code running on a tokio
    /// worker (rustls's signer): the worker's other tasks move to another
    /// thread while this one waits.
    pub fn call_blocking(&self, request: &Request) -> Result<Response, KeydError> {
        let call = self.metrics.start(matches!(request, Request::Sign { .. }));
        let result = self.call_blocking_once(request);
        call.end(&result);
        result
    }

    fn call_blocking_once(&self, request: &Request) -> Result<Response, KeydError> {
        use tokio::runtime::{Handle, RuntimeFlavor};
        let handle = match Handle::try_current() {
            Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => h,
            _ => return Err(KeydError::Runtime),
        };
        let conn = match self.live_conn() {
            Some(c) => c,
            None => tokio::task::block_in_place(|| handle.block_on(tokio::time::timeout(self.timeout, self.conn())))
                .map_err(|_| KeydError::Timeout(self.endpoint.to_string(), self.timeout))??,
        };
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let id = self.submit(&conn, request, Waiter::Blocking(tx))?;
        match tokio::task::block_in_place(|| rx.recv_timeout(self.timeout)) {
            Ok(r) => refused(r),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(self.closed(&conn)),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(self.timed_out(&conn, id)),
        }
    }
}

/// Turns an error answer into [`KeydError::Refused`].
fn refused(r: Response) -> Result<Response, KeydError> {
    match r {
        Response::Error { code, message } => Err(KeydError::Refused { code, message }),
        r => Ok(r),
    }
}

/// Starts the reader and writer tasks of a connection.
fn start<S: AsyncRead + AsyncWrite + Send + 'static>(stream: S) -> Conn {
    let (mut rd, mut wr) = tokio::io::split(stream);
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let pending: Pending = Arc::new(Mutex::new(Some(HashMap::new())));
    let alive = Arc::new(AtomicBool::new(true));
    let alive_w = alive.clone();
    let alert = Arc::new(Mutex::new(None));
    let alert_r = alert.clone();
    tokio::spawn(async move {
        while let Some(mut batch) = rx.recv().await {
            while batch.len() < 64 * 1024 {
                let Ok(mut more) = rx.try_recv() else { break };
                batch.extend_from_slice(&more);
                more.zeroize();
            }
            let written = wr.write_all(&batch).await;
            // PUT frames carry private keys.
            batch.zeroize();
            if written.is_err() {
                break;
            }
        }
        alive_w.store(false, Ordering::Release);
    });
    let (pending_r, alive_r) = (pending.clone(), alive.clone());
    tokio::spawn(async move {
        let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
        'read: loop {
            buf.reserve(64 * 1024);
            match rd.read_buf(&mut buf).await {
                Ok(0) => break,
                Err(e) => {
                    *alert_r.lock().expect("alert lock") = Some(e);
                    break;
                }
                Ok(_) => {}
            }
            let mut used = 0;
            while let Ok(Some((frame, n))) = decode_frame(&buf[used..]) {
                used += n;
                let Ok(response) = Response::decode(&frame) else { break 'read };
                let waiter = pending_r.lock().expect("pending lock").as_mut().and_then(|w| w.remove(&frame.id));
                if let Some(waiter) = waiter {
                    waiter.answer(response);
                }
            }
            if decode_frame(&buf[used..]).is_err() {
                break;
            }
            buf.drain(..used);
        }
        alive_r.store(false, Ordering::Release);
        // Waiters see their sender dropped: "keyd closed the connection".
        pending_r.lock().expect("pending lock").take();
    });
    Conn { tx, pending, alive, alert }
}
