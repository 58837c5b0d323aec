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

/// Connections served at once; more are closed as they arrive.
const MAX_CONNECTIONS: usize = 32;
/// A client must send its request headers within this time.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection is closed after this long, whatever it is doing.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(15);

/// Serves the status endpoints on `bound` until `shutdown` completes; logs
/// `status listen=ADDR` first. Runs as tasks of the caller's runtime.
pub async fn serve(status: Arc<Status>, bound: Bound, shutdown: impl Future<Output = ()>) {
    info!(listen = %bound.address(), "status");
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
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
            warn!(limit = MAX_CONNECTIONS, "status: connection refused, too many open");
            continue;
        };
        let status = status.clone();
        connections.spawn(async move {
            match conn {
                Conn::Tcp(io) => serve_connection(status, io).await,
                Conn::Unix(io) => serve_connection(status, io).await,
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

async fn accept(bound: &Bound) -> std::io::Result<Conn> {
    match bound {
        Bound::Tcp(l) => l.accept().await.map(|(s, _)| Conn::Tcp(s)),
        Bound::Unix(s) => s.listener.accept().await.map(|(s, _)| Conn::Unix(s)),
    }
}

async fn serve_connection<I: AsyncRead + AsyncWrite + Unpin + Send + 'static>(status: Arc<Status>, io: I) {
    let service = hyper::service::service_fn(move |request| {
        let status = status.clone();
        async move { Ok::<_, Infallible>(respond(&status, request).await) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .keep_alive(false)
        .serve_connection(TokioIo::new(io), service);
    let _ = tokio::time::timeout(CONNECTION_TIMEOUT, connection).await;
}

fn text(code: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = code;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

async fn respond(status: &Status, request: Request<Incoming>) -> Response<Full<Bytes>> {
    const PLAIN: &str = "text/plain; charset=utf-8";
    if request.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, PLAIN, "only GET is served\n".into());
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
