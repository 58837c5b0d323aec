//! The HTTP side: hyper's HTTP/1 server with a header read timeout, a time
//! limit per connection and a bounded number of connections.
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::prometheus_text;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::addr::Bound;
use crate::report::Status;

/// How much a status client may take.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections served at once; as many more are answered 503 and
    /// closed, and beyond that they are closed as they arrive.
    pub connections: usize,
    /// A client must send its request headers within this time.
    pub header_timeout: Duration,
    /// A connection is closed after this long, whatever it is doing.
    pub connection_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self { connections: 32, header_timeout: Duration::from_secs(5), connection_timeout: Duration::from_secs(15) }
    }
}

/// Serves the status endpoints on `bound` with the default [`Limits`] until
/// `shutdown` completes; logs `status listen=ADDR` first. Runs as tasks of
/// the caller's runtime.
pub async fn serve(status: Arc<Status>, bound: Bound, shutdown: impl Future<Output = ()>) {
    serve_with(status, bound, Limits::default(), shutdown).await
}

/// [`serve`] with these limits.
pub async fn serve_with(status: Arc<Status>, bound: Bound, limits: Limits, shutdown: impl Future<Output = ()>) {
    info!(listen = %bound.address(), "status");
    let limit = Arc::new(Semaphore::new(limits.connections));
    let busy_answers = Arc::new(Semaphore::new(limits.connections));
    let mut refused = Refusals::default();
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            accepted = accept(&bound) => accepted,
        };
        let conn = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                // Out of descriptors, say: wait instead of spinning.
                warn!(error = %e, "status: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            refused.count(limits.connections);
            // A prober gets an answer it can read (503) rather than a reset, while that stays cheap.
            if let Ok(answering) = busy_answers.clone().try_acquire_owned() {
                connections.spawn(async move {
                    match conn {
                        Conn::Tcp(io) => answer_busy(io).await,
                        Conn::Unix(io) => answer_busy(io).await,
                    }
                    drop(answering);
                });
            }
            continue;
        };
        let status = status.clone();
        connections.spawn(async move {
            match conn {
                Conn::Tcp(io) => serve_connection(status, io, limits).await,
                Conn::Unix(io) => serve_connection(status, io, limits).await,
            }
            drop(permit);
        });
        while connections.try_join_next().is_some() {}
    }
    connections.shutdown().await;
}

enum Conn {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

/// Connections turned away, logged at most once per [`Refusals::EVERY`].
#[derive(Default)]
struct Refusals {
    since_logged: u64,
    logged_at: Option<std::time::Instant>,
}

impl Refusals {
    const EVERY: Duration = Duration::from_secs(10);

    fn count(&mut self, limit: usize) {
        self.since_logged += 1;
        if self.logged_at.is_none_or(|at| at.elapsed() >= Self::EVERY) {
            warn!(limit, refused = self.since_logged, "status: connections turned away, too many open");
            (self.since_logged, self.logged_at) = (0, Some(std::time::Instant::now()));
        }
    }
}

/// Answers 503 to a connection over the limit: reads what the client sent
/// (so that closing does not reset the answer away), writes, closes; all
/// within a second.
async fn answer_busy<I: AsyncRead + AsyncWrite + Unpin>(mut io: I) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\nRetry-After: 1\r\n\
Connection: close\r\nContent-Length: 43\r\n\r\nbusy: too many status connections are open\n";
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let mut request = [0u8; 4096];
        let _ = io.read(&mut request).await;
        io.write_all(BUSY).await?;
        io.shutdown().await?;
        while io.read(&mut request).await? > 0 {}
        Ok::<_, std::io::Error>(())
    })
    .await;
}

async fn accept(bound: &Bound) -> std::io::Result<Conn> {
    match bound {
        Bound::Tcp(l) => l.accept().await.map(|(s, _)| Conn::Tcp(s)),
        Bound::Unix(s) => s.listener.accept().await.map(|(s, _)| Conn::Unix(s)),
    }
}

async fn serve_connection<I: AsyncRead + AsyncWrite + Unpin + Send + 'static>(status: Arc<Status>, io: I, limits: Limits) {
    let service = hyper::service::service_fn(move |request| {
        let status = status.clone();
        async move { Ok::<_, Infallible>(respond(&status, request).await) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(false)
        .serve_connection(TokioIo::new(io), service);
    let _ = tokio::time::timeout(limits.connection_timeout, connection).await;
}

fn text(code: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = code;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

async fn respond(status: &Status, request: Request<Incoming>) -> Response<Full<Bytes>> {
    const PLAIN: &str = "text/plain; charset=utf-8";
    // hyper sends no body in answer to HEAD.
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut refused = text(StatusCode::METHOD_NOT_ALLOWED, PLAIN, "only GET and HEAD are served\n".into());
        refused.headers_mut().insert(hyper::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return refused;
    }
    match request.uri().path() {
        "/metrics" => {
            let mut body = String::new();
            match prometheus_text::encode(&mut body, &status.registry) {
                Ok(()) => text(StatusCode::OK, prometheus_text::CONTENT_TYPE, body),
                Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, PLAIN, "the metrics could not be encoded\n".into()),
            }
        }
        "/_status" => {
            let report = status.report().await;
            text(StatusCode::OK, "application/json", format!("{report:#}\n"))
        }
        "/_health" => match status.problems().await {
            problems if problems.is_empty() => text(StatusCode::OK, PLAIN, "ok\n".into()),
            problems => text(StatusCode::SERVICE_UNAVAILABLE, PLAIN, problems.join("\n") + "\n"),
        },
        _ => text(StatusCode::NOT_FOUND, PLAIN, "not found: try /metrics, /_status or /_health\n".into()),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use prometheus_client::registry::Registry;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;
    use crate::addr::{bind, StatusAddr};
    use crate::report::Listener;

    async fn start(limits: Limits) -> (Arc<Status>, String) {
        let bound = bind(&StatusAddr::Tcp("127.0.0.1:0".parse().unwrap()), false).await.unwrap();
        let addr = bound.address();
        let status = Status::new("test", Registry::default());
        tokio::spawn(serve_with(status.clone(), bound, limits, std::future::pending()));
        (status, addr)
    }

    /// The whole answer to one request, the connection closed by the server.
    async fn get(addr: &str, path: &str) -> String {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
        let mut out = String::new();
        tokio::time::timeout(Duration::from_secs(5), tcp.read_to_string(&mut out)).await.unwrap().unwrap();
        out
    }

    /// Whether the server closes `tcp` within `limit`.
    async fn closed_within(tcp: &mut TcpStream, limit: Duration) -> bool {
        let mut buf = [0u8; 256];
        matches!(tokio::time::timeout(limit, tcp.read(&mut buf)).await, Ok(Ok(0) | Err(_)))
    }

    #[tokio::test]
    async fn health_names_a_stopped_listener() {
        let (status, addr) = start(Limits::default()).await;
        let running = status.add(Listener::new("127.0.0.1:4433", "echo"));
        assert!(get(&addr, "/_health").await.starts_with("HTTP/1.1 200"));
        running.stop("the listener failed");
        let answer = get(&addr, "/_health").await;
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(answer.contains("127.0.0.1:4433 (echo) is down: the listener failed"), "{answer}");
        assert!(get(&addr, "/_status").await.contains("\"up\": false"));
    }

    #[tokio::test]
    async fn silent_connections_are_closed_and_excess_ones_answered_busy() {
        let limits = Limits { connections: 1, header_timeout: Duration::from_millis(200), connection_timeout: Duration::from_secs(1) };
        let (_status, addr) = start(limits).await;
        let started = Instant::now();
        let mut silent = TcpStream::connect(&addr).await.unwrap();
        // The one slot is taken: a prober is told so at once, with an answer it can read.
        let busy = get(&addr, "/_health").await;
        assert!(
            busy.starts_with("HTTP/1.1 503") && busy.contains("Retry-After: 1") && busy.ends_with("too many status connections are open\n"),
            "{busy}"
        );
        assert!(closed_within(&mut silent, Duration::from_secs(3)).await, "a client that sends nothing was kept");
        // Closed by the header timeout, not the connection's time limit.
        assert!(started.elapsed() < Duration::from_millis(900), "{:?}", started.elapsed());
        // Its slot is free again.
        assert!(get(&addr, "/metrics").await.starts_with("HTTP/1.1 200"));
    }

    #[tokio::test]
    async fn head_is_served_and_other_methods_are_told_what_is() {
        let (_status, addr) = start(Limits::default()).await;
        let ask = |method: &'static str| {
            let addr = addr.clone();
            async move {
                let mut tcp = TcpStream::connect(&addr).await.unwrap();
                tcp.write_all(format!("{method} /_health HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n").as_bytes()).await.unwrap();
                let mut out = String::new();
                tokio::time::timeout(Duration::from_secs(5), tcp.read_to_string(&mut out)).await.unwrap().unwrap();
                out
            }
        };
        let head = ask("HEAD").await;
        assert!(head.starts_with("HTTP/1.1 200") && head.ends_with("\r\n\r\n"), "a HEAD answer has no body: {head}");
        let post = ask("POST").await;
        assert!(post.starts_with("HTTP/1.1 405") && post.to_lowercase().contains("allow: get, head"), "{post}");
    }
}
