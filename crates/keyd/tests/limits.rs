//! keyd's limits against clients that stall or flood, on the real server
//! over a Unix socket in a temporary directory (the device secret there too).
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sealtls_custody_proto::{decode_frame, Request, Response, Selector};
use sealtls_keyd::{Caller, Custody, Keyd, KeydLimits, KeydSettings, SealedFiles};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::oneshot;
use zeroize::Zeroizing;

/// How long a test waits for something that should happen at once.
const PROMPTLY: Duration = Duration::from_secs(5);

struct Running {
    dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// keyd with these limits, holding a key and certificate for `domain` if given.
    async fn start(limits: KeydLimits, domain: Option<&str>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = SealedFiles::open(&dir.path().join("data"), &dir.path().join("device.key")).unwrap();
        let custody = Custody::new(Box::new(store)).unwrap();
        if let Some(domain) = domain {
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
            let cert = rcgen::CertificateParams::new(vec![domain.to_string()]).unwrap().self_signed(&key).unwrap();
            let put = Request::Put { domain: domain.into(), key: Zeroizing::new(key.serialize_der()), chain: vec![cert.der().to_vec()] };
            let admin = Caller { admin: true, who: "the test".into(), peer: sealtls_keyd::Peer::Unknown };
            assert!(matches!(custody.handle(put, &admin), Response::Stored(_)));
        }
        let settings = KeydSettings { socket: dir.path().join("keyd.sock"), tls: None, admin_ca: None };
        let keyd = Keyd::bind(custody, settings).await.unwrap().with_limits(limits);
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(keyd.run(async {
            let _ = stopped.await;
        }));
        Self { dir, stop: Some(stop), task }
    }

    async fn connect(&self) -> UnixStream {
        UnixStream::connect(self.dir.path().join("keyd.sock")).await.unwrap()
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(PROMPTLY, self.task).await.unwrap().unwrap();
    }
}

fn ping(id: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    Request::Ping(payload.to_vec()).encode(id, &mut out);
    out
}

/// Reads responses until `n` have come; returns them with their ids.
async fn responses(stream: &mut UnixStream, n: usize) -> Vec<(u64, Response)> {
    let mut got = Vec::new();
    let mut buf = Vec::new();
    while got.len() < n {
        let mut used = 0;
        while let Some((frame, len)) = decode_frame(&buf[used..]).unwrap() {
            used += len;
            got.push((frame.id, Response::decode(&frame).unwrap()));
        }
        buf.drain(..used);
        if got.len() >= n {
            break;
        }
        let read = tokio::time::timeout(PROMPTLY, stream.read_buf(&mut buf)).await.expect("keyd did not answer").unwrap();
        assert_ne!(read, 0, "keyd closed the connection");
    }
    got
}

/// Reads until keyd closes the connection; panics if it does not promptly.
async fn closed(stream: &mut UnixStream) {
    let mut sink = Vec::new();
    let read = tokio::time::timeout(PROMPTLY, stream.read_to_end(&mut sink)).await.expect("keyd kept the connection open");
    assert!(read.is_ok());
}

#[tokio::test]
async fn a_half_frame_and_a_silent_connection_are_closed_after_their_time_limits() {
    let limits =
        KeydLimits { frame_timeout: Duration::from_millis(200), idle_timeout: Duration::from_millis(300), ..KeydLimits::default() };
    let keyd = Running::start(limits, None).await;

    // Half a frame: closed once the frame time limit has passed.
    let mut half = keyd.connect().await;
    let frame = ping(1, b"hello");
    let start = Instant::now();
    half.write_all(&frame[..frame.len() / 2]).await.unwrap();
    closed(&mut half).await;
    assert!(start.elapsed() >= Duration::from_millis(200), "closed after {:?}", start.elapsed());

    // A connection that sends nothing: closed after the idle limit.
    let mut silent = keyd.connect().await;
    let start = Instant::now();
    closed(&mut silent).await;
    assert!(start.elapsed() >= Duration::from_millis(300), "closed after {:?}", start.elapsed());

    // A whole frame sent in two parts within the limit is answered.
    let mut slow = keyd.connect().await;
    slow.write_all(&frame[..3]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    slow.write_all(&frame[3..]).await.unwrap();
    assert_eq!(responses(&mut slow, 1).await, vec![(1, Response::Pong(b"hello".to_vec()))]);
    keyd.stop().await;
}

/// Sends `REQUESTS` pipelined frames made by `frame` without reading any
/// answer: keyd must stop reading (the writer stalls) after at most
/// `max_bytes`, serve another client meanwhile, and answer every request in
/// order once the client reads. Returns how many requests keyd took first.
async fn flood_without_reading(keyd: &Running, frame: impl Fn(u64) -> Vec<u8> + Send + 'static, max_bytes: usize) -> usize {
    const REQUESTS: usize = 10_000;
    let frame_len = frame(0).len();
    let flood = keyd.connect().await;
    let (mut flood_rd, mut flood_wr) = flood.into_split();
    let sent = Arc::new(AtomicUsize::new(0));
    let counter = sent.clone();
    let writer = tokio::spawn(async move {
        for id in 0..REQUESTS as u64 {
            flood_wr.write_all(&frame(id)).await.unwrap();
            counter.fetch_add(1, Ordering::Relaxed);
        }
        flood_wr
    });

    // The writer stalls: keyd stopped reading once its answers piled up.
    let start = Instant::now();
    let mut last = usize::MAX;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = sent.load(Ordering::Relaxed);
        if now == last {
            break;
        }
        assert!(start.elapsed() < PROMPTLY, "keyd kept reading requests whose answers are not read");
        last = now;
    }
    assert!(last < REQUESTS, "keyd read all {REQUESTS} requests");
    // Socket buffers both ways plus keyd's read chunk and write batch.
    assert!(last * frame_len < max_bytes, "keyd took {} bytes from a client that reads nothing", last * frame_len);

    // Another client is served meanwhile.
    let mut other = keyd.connect().await;
    other.write_all(&ping(u64::MAX, b"still there")).await.unwrap();
    assert_eq!(responses(&mut other, 1).await, vec![(u64::MAX, Response::Pong(b"still there".to_vec()))]);

    // Once the flooding client reads, every request is answered, in order.
    let reader = tokio::spawn(async move {
        let mut got = 0usize;
        let mut buf = Vec::new();
        while got < REQUESTS {
            let mut used = 0;
            while let Some((frame, len)) = decode_frame(&buf[used..]).unwrap() {
                used += len;
                assert_eq!(frame.id, got as u64);
                assert!(!matches!(Response::decode(&frame).unwrap(), Response::Error { .. }));
                got += 1;
            }
            buf.drain(..used);
            if got < REQUESTS {
                assert_ne!(flood_rd.read_buf(&mut buf).await.unwrap(), 0, "keyd closed the connection");
            }
        }
        got
    });
    assert_eq!(tokio::time::timeout(Duration::from_secs(30), reader).await.unwrap().unwrap(), REQUESTS);
    tokio::time::timeout(PROMPTLY, writer).await.unwrap().unwrap();
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_its_answers_stops_being_read_and_others_are_served() {
    let keyd = Running::start(KeydLimits::default(), None).await;
    // 10,000 PINGs of 1 KiB (about 10 MiB).
    let payload = vec![7u8; 1024];
    let took = flood_without_reading(&keyd, move |id| ping(id, &payload), 4 << 20).await;
    eprintln!("keyd took {took} PINGs of 1 KiB before it stopped reading");
    keyd.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_requests_with_large_answers_are_not_read_beyond_a_write_batch() {
    // CHAIN: a request of a few dozen bytes, an answer of the whole chain.
    let keyd = Running::start(KeydLimits::default(), Some("www.example.com")).await;
    let chain = |id| {
        let mut out = Vec::new();
        Request::Chain(Selector::Domain("www.example.com".into())).encode(id, &mut out);
        out
    };
    let took = flood_without_reading(&keyd, chain, 1 << 20).await;
    eprintln!("keyd took {took} CHAIN requests before it stopped reading");
    keyd.stop().await;
}

#[tokio::test]
async fn connections_beyond_the_limit_are_told_busy_and_closed() {
    let keyd = Running::start(KeydLimits { connections: 2, ..KeydLimits::default() }, None).await;
    let mut first = keyd.connect().await;
    let _second = keyd.connect().await;
    first.write_all(&ping(1, b"a")).await.unwrap();
    assert_eq!(responses(&mut first, 1).await, vec![(1, Response::Pong(b"a".to_vec()))]);

    let mut third = keyd.connect().await;
    let (id, busy) = responses(&mut third, 1).await.remove(0);
    assert_eq!(id, 0);
    assert!(matches!(busy, Response::Error { .. }), "{busy:?}");
    closed(&mut third).await;
    keyd.stop().await;
}

#[tokio::test]
async fn a_body_that_does_not_parse_is_answered_bad_request_naming_the_operation() {
    let keyd = Running::start(KeydLimits::default(), None).await;
    let mut stream = keyd.connect().await;
    // A CHAIN body whose length field runs past the end.
    let mut frame = Vec::new();
    sealtls_custody_proto::encode_frame(&mut frame, sealtls_custody_proto::Op::Chain as u8, 7, &[0, 0, 0, 9, b'a']);
    stream.write_all(&frame).await.unwrap();
    match responses(&mut stream, 1).await.remove(0) {
        (7, Response::Error { code, message }) => {
            assert_eq!(code, sealtls_custody_proto::ErrorCode::BadRequest);
            assert!(message.starts_with("CHAIN request: "), "{message}");
        }
        other => panic!("{other:?}"),
    }
    keyd.stop().await;
}
