//! A `Session` driven over one end of a socket pair, as a client would,
//! against TLS servers on free loopback ports: the codes of every call in
//! the states of `Slot`, held calls, streaming and GOODBYE.
use std::net::SocketAddr;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::SingleCertAndKey;
use sealtls_endpoint::server::{Mode, Server, ServerOptions};
use sealtls_endpoint::settings::{certified_key, Anchors, ClientSettings, ServerSettings, ServerTls};
use sealtls_endpoint::{ClientAuthMode, TlsVersions};
use sealtls_offload_proto::proto::decode_response;

use super::*;
use crate::upstream::Dialer;

const BUFFER: usize = 1024;
/// How long a test waits for something that should happen at once.
const PROMPTLY: Duration = Duration::from_secs(10);

struct Ca {
    der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

fn ca() -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, "offload test CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let der = params.self_signed(&key).unwrap().der().clone();
    Ca { issuer: Issuer::from_ca_cert_der(&der, key).unwrap(), der }
}

/// A TLS server for 127.0.0.1 on a free port, for the rest of the test.
async fn server(ca: &Ca, mode: Mode) -> SocketAddr {
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap().signed_by(&key, &ca.issuer).unwrap();
    let key = PrivateKeyDer::from(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let certified = certified_key(vec![cert.der().clone()], &key, "cert", "key").unwrap();
    let settings = ServerSettings {
        identity: Arc::new(SingleCertAndKey::from(Arc::unwrap_or_clone(certified))),
        client_ca: None,
        client_auth: ClientAuthMode::None,
        versions: TlsVersions::Any,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let options = ServerOptions { mode, ..Default::default() };
    tokio::spawn(Server::new(ServerTls::new(settings).unwrap(), options).run(listener, std::future::pending()));
    addr
}

/// The client's end of a session whose daemon trusts `trust`.
struct Client {
    stream: UnixStream,
    buf: Vec<u8>,
    stop: watch::Sender<bool>,
}

impl Client {
    async fn start(trust: &Ca) -> Self {
        let tls = ClientSettings {
            trust: Anchors { origin: "offload test CA".into(), certs: vec![trust.der.clone()] },
            identity: None,
            versions: TlsVersions::Any,
            legacy_v1_leaf: false,
            name_check: true,
        };
        let dialer = Arc::new(Dialer::new(tls, PROMPTLY, PROMPTLY));
        let shared = Arc::new(Shared { dialer, buffer_size: BUFFER, answer_timeout: PROMPTLY, metrics: Default::default() });
        let (ours, theirs) = UnixStream::pair().unwrap();
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(Session::new(shared, 101).run(theirs, stopped));
        let mut client = Self { stream: ours, buf: Vec::new(), stop };
        let welcome = client.recv().await;
        assert_eq!(welcome, Response::Welcome { code: Code::Success, badge: 101, buffer_size: BUFFER as u32 });
        client
    }

    async fn send(&mut self, request: Request) {
        let mut frame = Vec::new();
        request.encode(&mut frame);
        self.stream.write_all(&frame).await.unwrap();
    }

    /// The next frame from the daemon.
    async fn recv(&mut self) -> Response {
        tokio::time::timeout(PROMPTLY, async {
            loop {
                if let Some((response, n)) = decode_response(&self.buf, BUFFER + BODY_OVERHEAD).unwrap() {
                    self.buf.drain(..n);
                    return response;
                }
                assert_ne!(self.stream.read_buf(&mut self.buf).await.unwrap(), 0, "the daemon closed the socket");
            }
        })
        .await
        .expect("no answer from the session")
    }

    /// Sends `request` and returns its answer.
    async fn call(&mut self, request: Request) -> Response {
        self.send(request).await;
        self.recv().await
    }

    /// The code of a status answer to `request`.
    async fn status(&mut self, request: Request) -> Code {
        match self.call(request).await {
            Response::Status { code, .. } => code,
            other => panic!("{other:?}"),
        }
    }

    async fn detail(&mut self) -> String {
        match self.call(Request::Detail).await {
            Response::Text { op: Op::Detail, code: Code::Success, text } => text,
            other => panic!("{other:?}"),
        }
    }

    /// CONNECT polled with WAIT, as the protocol intends.
    async fn connect(&mut self, addr: SocketAddr) -> Code {
        let connect = || Request::Connect { host: addr.ip().to_string(), port: addr.port() };
        assert_eq!(self.status(connect()).await, Code::WouldBlock);
        assert_eq!(self.status(Request::Wait { interest: READABLE }).await, Code::Success);
        self.status(connect()).await
    }

    /// HANDSHAKE polled with WAIT.
    async fn handshake(&mut self) -> Code {
        assert_eq!(self.status(Request::Handshake).await, Code::WouldBlock);
        assert_eq!(self.status(Request::Wait { interest: READABLE }).await, Code::Success);
        self.status(Request::Handshake).await
    }

    /// Reads with the wait flag until `n` bytes came.
    async fn read_exactly(&mut self, n: usize) -> Vec<u8> {
        let mut got = Vec::new();
        while got.len() < n {
            match self.call(Request::Read { size: BUFFER as u32, wait: true }).await {
                Response::Read { code: Code::Success, data } => got.extend_from_slice(&data),
                other => panic!("{other:?}"),
            }
        }
        got
    }

    /// Expects GOODBYE, then the end of the socket.
    async fn goodbye(&mut self) -> (Code, String) {
        let Response::Goodbye { code, reason } = self.recv().await else { panic!("expected GOODBYE") };
        let mut rest = Vec::new();
        let n = tokio::time::timeout(PROMPTLY, self.stream.read_to_end(&mut rest)).await.expect("the socket stays open").unwrap();
        assert_eq!(n, 0, "nothing after GOODBYE");
        (code, reason)
    }
}

#[tokio::test]
async fn connect_handshake_write_read_and_disconnect_give_the_table_codes() {
    let ca = ca();
    let addr = server(&ca, Mode::Echo).await;
    let mut c = Client::start(&ca).await;

    // DISCONNECTED: nothing to transfer, nothing to close, bad parameters refused.
    assert_eq!(c.status(Request::Connect { host: String::new(), port: addr.port() }).await, Code::InvalidParameter);
    assert_eq!(c.status(Request::Connect { host: "127.0.0.1".into(), port: 0 }).await, Code::InvalidParameter);
    assert_eq!(c.call(Request::Write(b"x".to_vec())).await, Response::Written { code: Code::InvalidState, taken: 0 });
    assert_eq!(c.call(Request::Read { size: 10, wait: false }).await, Response::Read { code: Code::InvalidState, data: vec![] });
    assert_eq!(c.status(Request::Disconnect).await, Code::InvalidState);
    assert_eq!(c.status(Request::Handshake).await, Code::InvalidState);
    assert_eq!(c.status(Request::Reset).await, Code::InvalidState);
    assert_eq!(c.call(Request::Session).await, Response::Text { op: Op::Session, code: Code::InvalidState, text: String::new() });
    // Nothing is under way: WAIT answers at once.
    assert_eq!(c.status(Request::Wait { interest: READABLE }).await, Code::Success);

    assert_eq!(c.connect(addr).await, Code::Success);
    assert_eq!(c.status(Request::Connect { host: "127.0.0.1".into(), port: addr.port() }).await, Code::InvalidState);
    assert_eq!(c.call(Request::Write(b"x".to_vec())).await, Response::Written { code: Code::InvalidState, taken: 0 });

    assert_eq!(c.handshake().await, Code::Success);
    assert_eq!(c.status(Request::Handshake).await, Code::OperationDenied);
    match c.call(Request::Session).await {
        Response::Text { op: Op::Session, code: Code::Success, text } => assert!(text.contains("verified"), "{text}"),
        other => panic!("{other:?}"),
    }

    // HANDSHAKED: sizes are checked, data goes through the echo server and back.
    assert_eq!(c.call(Request::Write(vec![])).await, Response::Written { code: Code::InvalidParameter, taken: 0 });
    assert_eq!(c.call(Request::Write(vec![0; BUFFER + 1])).await, Response::Written { code: Code::InvalidParameter, taken: 0 });
    assert_eq!(c.call(Request::Read { size: 0, wait: false }).await, Response::Read { code: Code::InvalidParameter, data: vec![] });
    let big = Request::Read { size: BUFFER as u32 + 1, wait: false };
    assert_eq!(c.call(big).await, Response::Read { code: Code::InvalidParameter, data: vec![] });
    assert_eq!(c.call(Request::Write(b"hello".to_vec())).await, Response::Written { code: Code::Success, taken: 5 });
    assert_eq!(c.read_exactly(5).await, b"hello");
    assert_eq!(c.call(Request::Read { size: 10, wait: false }).await, Response::Read { code: Code::WouldBlock, data: vec![] });
    // A full buffer's worth, read back in small pieces.
    let block: Vec<u8> = (0..BUFFER).map(|i| i as u8).collect();
    assert_eq!(c.call(Request::Write(block.clone())).await, Response::Written { code: Code::Success, taken: BUFFER as u32 });
    assert_eq!(c.status(Request::Wait { interest: READABLE | WRITABLE }).await, Code::Success);
    assert_eq!(c.read_exactly(BUFFER).await, block);
    assert_eq!(c.detail().await, "");

    assert_eq!(c.status(Request::Disconnect).await, Code::Success);
    assert_eq!(c.call(Request::Read { size: 10, wait: false }).await, Response::Read { code: Code::InvalidState, data: vec![] });
    assert_eq!(c.status(Request::Disconnect).await, Code::InvalidState);
    // The slot can connect again.
    assert_eq!(c.connect(addr).await, Code::Success);
    assert_eq!(c.handshake().await, Code::Success);
}

#[tokio::test]
async fn held_calls_are_answered_would_block_when_the_next_request_comes() {
    let ca = ca();
    let addr = server(&ca, Mode::Echo).await;
    let mut c = Client::start(&ca).await;
    assert_eq!(c.connect(addr).await, Code::Success);
    assert_eq!(c.handshake().await, Code::Success);

    // Nothing to read: READ with the wait flag is held, and answered first when DETAIL comes.
    c.send(Request::Read { size: 100, wait: true }).await;
    c.send(Request::Detail).await;
    assert_eq!(c.recv().await, Response::Read { code: Code::WouldBlock, data: vec![] });
    assert!(matches!(c.recv().await, Response::Text { op: Op::Detail, .. }));
    // The same for WAIT.
    c.send(Request::Wait { interest: READABLE }).await;
    c.send(Request::Detail).await;
    assert_eq!(c.recv().await, Response::Status { op: Op::Wait, code: Code::WouldBlock });
    assert!(matches!(c.recv().await, Response::Text { op: Op::Detail, .. }));
    // Writable holds at once.
    assert_eq!(c.status(Request::Wait { interest: WRITABLE }).await, Code::Success);

    // A held READ is answered once the echo arrives.
    assert_eq!(c.call(Request::Write(b"ping".to_vec())).await, Response::Written { code: Code::Success, taken: 4 });
    let mut got = Vec::new();
    while got.len() < 4 {
        match c.call(Request::Read { size: 100, wait: true }).await {
            Response::Read { code: Code::Success, data } => got.extend_from_slice(&data),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(got, b"ping");
}

#[tokio::test]
async fn a_refused_connect_is_network_conn_shutdown_with_the_reason_in_detail() {
    let ca = ca();
    // A port nobody listens on.
    let addr = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let mut c = Client::start(&ca).await;
    assert_eq!(c.connect(addr).await, Code::NetworkConnShutdown);
    let detail = c.detail().await;
    assert!(detail.contains(&addr.to_string()), "{detail}");
    // Back to DISCONNECTED.
    assert_eq!(c.status(Request::Disconnect).await, Code::InvalidState);
}

#[tokio::test]
async fn a_server_the_daemon_does_not_trust_aborts_the_handshake() {
    let (ours, theirs) = (ca(), ca());
    let addr = server(&theirs, Mode::Echo).await;
    let mut c = Client::start(&ours).await;
    assert_eq!(c.connect(addr).await, Code::Success);
    assert_eq!(c.handshake().await, Code::Aborted);
    let detail = c.detail().await;
    assert!(detail.contains("fix:"), "{detail}");
    // The connection was closed: DISCONNECTED.
    assert_eq!(c.status(Request::Handshake).await, Code::InvalidState);
    assert_eq!(c.status(Request::Disconnect).await, Code::InvalidState);
}

#[tokio::test]
async fn the_server_closing_is_connection_closed_and_reset_reconnects() {
    let ca = ca();
    // This server sends close_notify right after the handshake.
    let addr = server(&ca, Mode::Handshake).await;
    let mut c = Client::start(&ca).await;
    assert_eq!(c.connect(addr).await, Code::Success);
    assert_eq!(c.handshake().await, Code::Success);
    assert_eq!(c.call(Request::Read { size: 10, wait: true }).await, Response::Read { code: Code::ConnectionClosed, data: vec![] });
    assert_eq!(c.call(Request::Write(b"x".to_vec())).await, Response::Written { code: Code::ConnectionClosed, taken: 0 });

    // RESET: a fresh TCP connection to the same server, ready for the next handshake.
    assert_eq!(c.status(Request::Reset).await, Code::Success);
    assert_eq!(c.handshake().await, Code::Success);
    assert_eq!(c.call(Request::Read { size: 10, wait: true }).await, Response::Read { code: Code::ConnectionClosed, data: vec![] });
}

#[tokio::test]
async fn streaming_pushes_data_within_credit() {
    let ca = ca();
    let addr = server(&ca, Mode::Echo).await;
    let mut c = Client::start(&ca).await;
    assert_eq!(c.call(Request::Stream { window: 100 }).await, Response::Streaming { code: Code::InvalidState, send_window: 0 });
    assert_eq!(c.connect(addr).await, Code::Success);
    assert_eq!(c.handshake().await, Code::Success);

    let window = 4 * BUFFER as u32;
    assert_eq!(c.call(Request::Stream { window: 3 }).await, Response::Streaming { code: Code::Success, send_window: window });
    c.send(Request::Send(b"streamed".to_vec())).await;
    // Three bytes of credit: three bytes pushed, the rest after CREDIT.
    assert_eq!(c.recv().await, Response::Data { code: Code::Success, data: b"str".to_vec() });
    c.send(Request::Credit(100)).await;
    let mut got = Vec::new();
    while got.len() < 5 {
        match c.recv().await {
            Response::Data { code: Code::Success, data } => got.extend_from_slice(&data),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(got, b"eamed");
    assert_eq!(c.status(Request::Disconnect).await, Code::Success);
}

#[tokio::test]
async fn a_bad_frame_or_a_send_before_stream_gets_goodbye() {
    let ca = ca();
    let mut c = Client::start(&ca).await;
    c.stream.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let (code, reason) = c.goodbye().await;
    assert_eq!(code, Code::InvalidParameter);
    assert!(reason.contains("bad frame"), "{reason}");

    let mut c = Client::start(&ca).await;
    c.send(Request::Send(b"early".to_vec())).await;
    let (code, reason) = c.goodbye().await;
    assert_eq!(code, Code::InvalidParameter);
    assert!(reason.contains("SEND before STREAM"), "{reason}");

    // A frame longer than the buffer size plus the overhead.
    let mut c = Client::start(&ca).await;
    c.send(Request::Write(vec![0; BUFFER + BODY_OVERHEAD + 1])).await;
    assert_eq!(c.goodbye().await.0, Code::InvalidParameter);
}

#[tokio::test]
async fn the_daemon_stopping_says_goodbye() {
    let ca = ca();
    let mut c = Client::start(&ca).await;
    c.stop.send(true).unwrap();
    let (code, reason) = c.goodbye().await;
    assert_eq!(code, Code::Aborted);
    assert!(reason.contains("shutting down"), "{reason}");
}
