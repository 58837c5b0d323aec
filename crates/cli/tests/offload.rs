//! The TLS offload daemon (`sealtls offload`) as a process, driven through
//! the Rust client library, the C ABI and `sealtls offload-client`, against
//! real TLS echo servers.
mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{dev_pki, offload_send, p, run, sealtls, text, Server};
use sealtls_offload::{Client, Code, Error};

/// A development PKI, a TLS echo server for `localhost` and a daemon trusting the CA.
struct Stack {
    dir: tempfile::TempDir,
    echo: Server,
    daemon: Server,
}

impl Stack {
    fn start(daemon_args: &[&str]) -> Stack {
        let dir = tempfile::tempdir().unwrap();
        let d = dev_pki(dir.path());
        let echo = echo_server(&d, "localhost");
        let daemon = daemon(&d, "ca.pem", daemon_args);
        Stack { dir, echo, daemon }
    }

    fn socket(&self) -> PathBuf {
        PathBuf::from(&self.daemon.addr)
    }

    fn port(&self) -> u16 {
        self.echo.port().parse().unwrap()
    }
}

fn echo_server(d: &Path, name: &str) -> Server {
    Server::start(&["--cert", &p(d, &format!("{name}.pem")), "--key", &p(d, &format!("{name}.key"))])
}

fn daemon(d: &Path, ca: &str, args: &[&str]) -> Server {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let socket = d.join(format!("offload-{}.sock", NEXT.fetch_add(1, Ordering::Relaxed)));
    Server::spawn(&[&["offload", "--socket", socket.to_str().unwrap(), "--trust", &p(d, ca)], args].concat())
}

/// Repeats `call` while it answers WOULD_BLOCK, 1 ms apart, for at most 10 s.
fn poll<T>(mut call: impl FnMut() -> Result<T, Error>) -> Result<T, Error> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match call() {
            Err(e) if e.is_would_block() && Instant::now() < deadline => std::thread::sleep(Duration::from_millis(1)),
            other => return other,
        }
    }
}

fn code<T: std::fmt::Debug>(result: Result<T, Error>) -> Code {
    match result {
        Ok(_) => Code::Success,
        Err(e) => e.code,
    }
}

/// A client with a TLS session to `host:port`.
fn handshaked(socket: &Path, host: &str, port: u16) -> Client {
    let mut c = Client::open(socket).unwrap();
    poll(|| c.connect(host, port)).unwrap();
    poll(|| c.handshake()).unwrap_or_else(|e| panic!("handshake: {e}: {}", c.detail().unwrap_or_default()));
    c
}

/// Writes all of `data`, then reads back as many bytes.
fn echo(c: &mut Client, data: &[u8]) -> Vec<u8> {
    let mut sent = 0;
    while sent < data.len() {
        let end = data.len().min(sent + c.buffer_size());
        sent += poll(|| c.write(&data[sent..end])).unwrap();
    }
    let mut back = vec![0u8; data.len()];
    let mut got = 0;
    while got < data.len() {
        let end = data.len().min(got + c.buffer_size());
        got += c.read_wait(&mut back[got..end]).unwrap();
    }
    back
}

const HELLO: &[u8; 13] = b"HELLOOOOOO?!\0";

#[test]
fn reference_test_in_rust() {
    let s = Stack::start(&[]);
    let mut c = Client::open(s.socket()).unwrap();
    assert_eq!(c.badge(), 101);
    assert_eq!(c.buffer_size(), 16 * 1024);
    assert_eq!(code(c.connect("", s.port())), Code::InvalidParameter);
    assert_eq!(code(c.connect("localhost", 0)), Code::InvalidParameter);
    poll(|| c.connect("localhost", s.port())).unwrap();
    poll(|| c.handshake()).unwrap();
    assert_eq!(c.write(HELLO), Ok(13));
    let mut back = [0u8; 13];
    let mut got = 0;
    while got < 13 {
        got += poll(|| c.read(&mut back[got..])).unwrap();
    }
    assert_eq!(&back, HELLO);
    assert_eq!(c.disconnect(), Ok(()));
    assert_eq!(code(c.disconnect()), Code::InvalidState);
}

/// Builds `examples/NAME.c` with the system `cc` against the header and
/// the shared library built for this test (target/debug/deps, rebuilt with
/// the library's sources).
fn build_c_example(out: &Path, name: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let target = Path::new(env!("CARGO_BIN_EXE_sealtls")).parent().unwrap().to_owned();
    let lib_dir =
        [target.join("deps"), target.clone()].into_iter().find(|d| d.join("libsealtls_offload.so").exists()).unwrap_or_else(|| {
            let o = run(Command::new(env!("CARGO")).args(["build", "-p", "sealtls-offload"]).current_dir(&root));
            assert!(o.status.success(), "{}", text(&o));
            target.clone()
        });
    let exe = out.join(name);
    let o = run(Command::new("cc")
        .args(["-Wall", "-Wextra", "-Werror", "-I"])
        .arg(root.join("include"))
        .arg(root.join(format!("examples/{name}.c")))
        .arg("-L")
        .arg(&lib_dir)
        .arg("-lsealtls_offload")
        // DT_RPATH, searched before the LD_LIBRARY_PATH cargo sets (which
        // may name an older copy of the library in target/debug).
        .arg(format!("-Wl,--disable-new-dtags,-rpath,{}", lib_dir.display()))
        .arg("-o")
        .arg(&exe));
    assert!(o.status.success(), "cc failed: {}", text(&o));
    exe
}

/// Builds `examples/NAME.c`, runs it against the stack's echo server through
/// its daemon, and checks it succeeded: the binary and its output.
fn run_c_example(s: &Stack, name: &str) -> (std::path::PathBuf, String) {
    let exe = build_c_example(s.dir.path(), name);
    let o = run(Command::new(&exe).arg(s.socket()).args(["localhost", &s.port().to_string()]));
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    (exe, out)
}

#[test]
fn reference_test_through_the_c_abi() {
    let s = Stack::start(&[]);
    let (exe, out) = run_c_example(&s, "offload_reference");
    let port = s.port().to_string();
    for line in [
        "ok   connect with an empty host         OS_ERROR_INVALID_PARAMETER",
        "ok   connect with port 0                OS_ERROR_INVALID_PARAMETER",
        "ok   connect (polled)                   OS_SUCCESS",
        "ok   handshake (polled)                 OS_SUCCESS",
        "ok   read the same 13 bytes back",
        "ok   disconnect                         OS_SUCCESS",
        "ok   disconnect again                   OS_ERROR_INVALID_STATE",
        "reference test passed",
    ] {
        assert!(out.contains(line), "missing `{line}` in:\n{out}");
    }

    // A server the daemon's CA did not issue: the handshake fails and the detail says why.
    let other = tempfile::tempdir().unwrap();
    let od = dev_pki(other.path());
    let stranger = echo_server(&od, "localhost");
    let o = run(Command::new(&exe).arg(s.socket()).args(["localhost", stranger.port()]));
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("FAIL handshake (polled): -11 OS_ERROR_ABORTED"), "{out}");
    assert!(out.contains("detail: ") && out.contains("CA"), "{out}");

    // No daemon at the path: NOT_FOUND, with the reason.
    let o = run(Command::new(&exe).arg(s.dir.path().join("nothing.sock")).args(["localhost", &port]));
    let out = text(&o);
    assert!(out.contains("FAIL open: -8 OS_ERROR_NOT_FOUND") && out.contains("no offload daemon at"), "{out}");
}

/// TRENTOS TlsServer's usage example (its run()) as written there: `len`
/// is set once before each polling loop, so a call answering WOULD_BLOCK
/// must leave it as it was.
#[test]
fn tlsserver_usage_example_through_the_c_abi() {
    let s = Stack::start(&[]);
    let (_, out) = run_c_example(&s, "offload_tlsserver_run");
    for line in [
        "ok   connect\n",
        "ok   handshake\n",
        "wrote 13 bytes\n",
        "read 13 bytes: HELLOOOOOO?!\n",
        "ok   echo\n",
        "ok   len kept on WOULD_BLOCK\n",
        "ok   len kept on INVALID_STATE\n",
        "TlsServer example passed\n",
    ] {
        assert!(out.contains(line), "missing `{line}` in:\n{out}");
    }
}

/// The same polling pattern through the Rust non-blocking API: the length
/// is chosen once before each loop, and a WOULD_BLOCK leaves buffer and
/// length alone.
#[test]
fn tlsserver_usage_example_in_rust() {
    let s = Stack::start(&[]);
    let mut c = Client::open(s.socket()).unwrap();
    let request = HELLO;
    let mut buffer = [0u8; 1024];
    let mut result;
    loop {
        std::thread::yield_now();
        result = c.connect("localhost", s.port());
        if !matches!(&result, Err(e) if e.is_would_block()) {
            break;
        }
    }
    result.unwrap();
    loop {
        std::thread::yield_now();
        result = c.handshake();
        if !matches!(&result, Err(e) if e.is_would_block()) {
            break;
        }
    }
    result.unwrap();

    let len = request.len();
    let written = loop {
        std::thread::yield_now();
        match c.write(&request[..len]) {
            Err(e) if e.is_would_block() => continue,
            other => break other.unwrap(),
        }
    };
    assert_eq!(written, 13);

    let len = buffer.len();
    let mut would_block = 0;
    let read = loop {
        std::thread::yield_now();
        match c.read(&mut buffer[..len]) {
            Err(e) if e.is_would_block() => {
                would_block += 1;
                assert!(buffer.iter().all(|&b| b == 0), "a WOULD_BLOCK read wrote into the buffer");
            }
            other => break other.unwrap(),
        }
    };
    assert_eq!(&buffer[..read], request, "after {would_block} WOULD_BLOCK answers");
    assert_eq!(code(c.read(&mut buffer[..len])), Code::WouldBlock);
    assert_eq!(c.disconnect(), Ok(()));
}

/// A name under the reserved `.invalid` TLD never resolves.
const UNRESOLVABLE: &str = "no-such-host.invalid";

#[test]
fn a_missing_daemon_and_an_unresolvable_name_are_explained() {
    let s = Stack::start(&[]);
    let target = format!("localhost:{}", s.port());

    // No daemon at the socket path: network (4), naming the path and what to do.
    let nothing = s.dir.path().join("nothing.sock");
    let nothing = nothing.to_str().unwrap();
    let o = offload_send(Path::new(nothing), &target, "x");
    let out = text(&o);
    assert_eq!(o.status.code(), Some(4), "{out}");
    assert!(out.contains(&format!("error: no offload daemon at {nothing}\n")), "{out}");
    assert!(out.contains(&format!("fix: start `sealtls offload --socket {nothing}")) && out.contains("or pass --socket"), "{out}");
    assert!(!out.contains("OS_ERROR_NOT_FOUND"), "{out}");

    // A name that does not resolve: the daemon's DETAIL says so, with the remedy.
    let o = offload_send(&s.socket(), &format!("{UNRESOLVABLE}:443"), "x");
    let out = text(&o);
    assert_eq!(o.status.code(), Some(4), "{out}");
    assert!(out.contains(&format!("cannot resolve {UNRESOLVABLE}: ")), "{out}");
    assert!(out.contains("fix: check the name, or use an address"), "{out}");

    // The non-blocking Rust client gets the same detail.
    let mut c = Client::open(s.socket()).unwrap();
    assert_eq!(code(poll(|| c.connect(UNRESOLVABLE, 443))), Code::NetworkConnShutdown);
    let detail = c.detail().unwrap();
    assert!(
        detail.starts_with(&format!("cannot resolve {UNRESOLVABLE}: ")) && detail.contains("fix: check the name, or use an address"),
        "{detail}"
    );

    // And so does a C program, through sealtls_offload_last_error_detail.
    let exe = build_c_example(s.dir.path(), "offload_tlsserver_run");
    let o = run(Command::new(&exe).arg(s.socket()).args([UNRESOLVABLE, "443"]));
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("FAIL connect: -1306 OS_ERROR_NETWORK_CONN_SHUTDOWN"), "{out}");
    assert!(out.contains(&format!("detail: cannot resolve {UNRESOLVABLE}: ")), "{out}");
}

/// A listener whose accept queue is full: connects to it hang in SYN_SENT.
fn black_hole() -> (socket2::Socket, Vec<std::net::TcpStream>, u16) {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&"127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap().into()).unwrap();
    sock.listen(0).unwrap();
    let port = sock.local_addr().unwrap().as_socket().unwrap().port();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let fillers = (0..4).filter_map(|_| std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()).collect();
    (sock, fillers, port)
}

#[test]
fn every_transition_returns_the_original_codes() {
    let s = Stack::start(&["--connect-timeout", "1", "--handshake-timeout", "1"]);
    let port = s.port();
    let mut c = Client::open(s.socket()).unwrap();
    let mut buf = [0u8; 64];

    // DISCONNECTED
    assert_eq!(code(c.handshake()), Code::InvalidState);
    assert_eq!(code(c.write(b"x")), Code::InvalidState);
    assert_eq!(code(c.read(&mut buf)), Code::InvalidState);
    assert_eq!(code(c.reset()), Code::InvalidState);
    assert_eq!(code(c.disconnect()), Code::InvalidState);
    assert_eq!(code(c.session()), Code::InvalidState);

    // DISCONNECTED -> CONNECTION_WAITING -> CONNECTION_CONFIRMED -> CONNECTED
    assert_eq!(code(c.connect("localhost", port)), Code::WouldBlock);
    poll(|| c.connect("localhost", port)).unwrap();
    assert_eq!(code(c.connect("localhost", port)), Code::InvalidState);
    assert_eq!(code(c.read(&mut buf)), Code::InvalidState);
    assert_eq!(code(c.write(b"x")), Code::InvalidState);
    assert_eq!(code(c.reset()), Code::InvalidState);

    // CONNECTED -> PENDING_HANDSHAKE -> HANDSHAKED
    assert_eq!(code(c.handshake()), Code::WouldBlock);
    poll(|| c.handshake()).unwrap();
    assert!(c.session().unwrap().contains("valid for localhost"));
    assert_eq!(code(c.handshake()), Code::OperationDenied);
    assert_eq!(code(c.connect("localhost", port)), Code::InvalidState);
    assert_eq!(code(c.write(b"")), Code::InvalidParameter);
    assert_eq!(code(c.write(&vec![0u8; c.buffer_size() + 1])), Code::InvalidParameter);
    assert_eq!(code(c.read(&mut [])), Code::InvalidParameter);
    assert_eq!(code(c.read(&mut vec![0u8; c.buffer_size() + 1])), Code::InvalidParameter);
    assert_eq!(code(c.read(&mut buf)), Code::WouldBlock);
    assert_eq!(echo(&mut c, b"before reset"), b"before reset");

    // HANDSHAKED -> reset -> CONNECTED -> a new session over a new connection
    assert_eq!(c.reset(), Ok(()));
    assert_eq!(code(c.read(&mut buf)), Code::InvalidState);
    assert_eq!(code(c.handshake()), Code::WouldBlock);
    poll(|| c.handshake()).unwrap();
    assert_eq!(echo(&mut c, b"after reset"), b"after reset");
    assert_eq!(c.disconnect(), Ok(()));
    assert_eq!(code(c.disconnect()), Code::InvalidState);

    // CONNECTION_ERROR: nothing listens; reported once, then DISCONNECTED.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    assert_eq!(code(poll(|| c.connect("127.0.0.1", closed))), Code::NetworkConnShutdown);
    assert!(c.detail().unwrap().contains("nothing accepts connections"), "{}", c.detail().unwrap());
    assert_eq!(code(c.disconnect()), Code::InvalidState);

    // CONNECTION_WAITING held by a full accept queue: disconnect abandons the
    // connect; left alone, it times out after --connect-timeout.
    let (_hole, _fillers, hole) = black_hole();
    assert_eq!(code(c.connect("127.0.0.1", hole)), Code::WouldBlock);
    assert_eq!(code(c.connect("127.0.0.1", hole)), Code::WouldBlock);
    assert_eq!(code(c.handshake()), Code::InvalidState);
    assert_eq!(c.disconnect(), Ok(()));
    assert_eq!(code(poll(|| c.connect("127.0.0.1", hole))), Code::NetworkConnShutdown);
    let detail = c.detail().unwrap();
    assert!(detail.contains("TCP connect") && detail.contains("within 1 s") && detail.contains("--connect-timeout"), "{detail}");

    // PENDING_HANDSHAKE held by a server that never answers: reset goes back
    // to CONNECTED; the handshake times out with ABORTED and DISCONNECTED.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    poll(|| c.connect("127.0.0.1", silent_port)).unwrap();
    assert_eq!(code(c.handshake()), Code::WouldBlock);
    assert_eq!(code(c.handshake()), Code::WouldBlock);
    assert_eq!(c.reset(), Ok(()));
    assert_eq!(code(c.handshake()), Code::WouldBlock);
    assert_eq!(code(poll(|| c.handshake())), Code::Aborted);
    let detail = c.detail().unwrap();
    assert!(detail.contains("TLS handshake") && detail.contains("--handshake-timeout"), "{detail}");
    assert_eq!(code(c.disconnect()), Code::InvalidState);
    drop(silent);
}

#[test]
fn the_end_of_a_session_is_reported() {
    let s = Stack::start(&[]);
    let d = s.dir.path();
    // The server stops cleanly: close_notify, then CONNECTION_CLOSED.
    let clean = echo_server(d, "localhost");
    let mut c = handshaked(&s.socket(), "localhost", clean.port().parse().unwrap());
    assert_eq!(echo(&mut c, b"hi"), b"hi");
    let term = Command::new("kill").args(["-TERM", &clean.child.id().to_string()]).status().unwrap();
    assert!(term.success());
    assert_eq!(code(c.read_wait(&mut [0u8; 16])), Code::ConnectionClosed);
    assert_eq!(code(c.write(b"x")), Code::ConnectionClosed);
    assert_eq!(c.disconnect(), Ok(()));

    // The server dies: NETWORK_CONN_SHUTDOWN, and the slot is DISCONNECTED.
    let mut dying = echo_server(d, "localhost");
    let mut c = handshaked(&s.socket(), "localhost", dying.port().parse().unwrap());
    dying.child.kill().unwrap();
    assert_eq!(code(c.read_wait(&mut [0u8; 16])), Code::NetworkConnShutdown);
    assert!(!c.detail().unwrap().is_empty());
    assert_eq!(code(c.disconnect()), Code::InvalidState);
}

#[test]
fn nine_clients_one_refused_until_a_slot_frees() {
    let s = Stack::start(&[]);
    let mut clients: Vec<Client> = (0..8).map(|_| Client::open(s.socket()).unwrap()).collect();
    let mut badges: Vec<u32> = clients.iter().map(Client::badge).collect();
    badges.sort();
    assert_eq!(badges, (101..=108).collect::<Vec<_>>());
    let Err(ninth) = Client::open(s.socket()) else { panic!("a ninth client was let in") };
    assert_eq!(ninth.code, Code::OutOfBounds);
    assert!(ninth.to_string().contains("slots"), "{ninth}");

    // Every slot works on its own connection at once.
    for c in clients.iter_mut() {
        poll(|| c.connect("localhost", s.port())).unwrap();
    }
    for (i, c) in clients.iter_mut().enumerate() {
        poll(|| c.handshake()).unwrap();
        let msg = format!("client {i}");
        assert_eq!(echo(c, msg.as_bytes()), msg.as_bytes());
    }

    let freed = clients.remove(2).badge();
    let deadline = Instant::now() + Duration::from_secs(5);
    let again = loop {
        match Client::open(s.socket()) {
            Ok(c) => break c,
            Err(e) if e.code == Code::OutOfBounds && Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("slot not freed: {e}"),
        }
    };
    assert_eq!(again.badge(), freed);
}

#[test]
fn a_client_killed_mid_write_frees_its_slot() {
    let s = Stack::start(&["--max-clients", "1"]);
    let mut child = sealtls()
        .args(["offload-client", "--socket", s.socket().to_str().unwrap(), &format!("localhost:{}", s.port())])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || {
        let chunk = vec![b'x'; 64 * 1024];
        // Ends with an error once the child is killed.
        while stdin.write_all(&chunk).is_ok() {}
    });
    s.daemon.wait_log("handshake done");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(code(Client::open(s.socket())), Code::OutOfBounds, "the only slot is held");
    child.kill().unwrap();
    child.wait().unwrap();
    feeder.join().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match Client::open(s.socket()) {
            Ok(c) => {
                assert_eq!(c.badge(), 101);
                break;
            }
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("slot not freed after the client was killed: {e}\n{}", s.daemon.log()),
        }
    }
    // The slot is free before the daemon's line about it reaches the log.
    assert!(s.daemon.wait_log("slot freed badge=101").contains("slot freed badge=101"));
}

#[test]
fn wrong_ca_and_wrong_name_are_refused_with_the_reason() {
    let s = Stack::start(&[]);
    let d = s.dir.path();
    let o = run(sealtls().args(["pki", "issue", "server", "--dir", d.to_str().unwrap(), "--name", "other.example"]));
    assert!(o.status.success(), "{}", text(&o));
    let misnamed = echo_server(d, "other.example");
    let other = tempfile::tempdir().unwrap();
    let stranger = echo_server(&dev_pki(other.path()), "localhost");

    for (server, words, remedy) in [(&misnamed, "localhost", "--no-hostname-check"), (&stranger, "CA", "--trust")] {
        let mut c = Client::open(s.socket()).unwrap();
        poll(|| c.connect("localhost", server.port().parse().unwrap())).unwrap();
        assert_eq!(code(poll(|| c.handshake())), Code::Aborted);
        let detail = c.detail().unwrap();
        assert!(detail.contains(words) && detail.contains("fix:"), "{detail}");
        // A failed handshake leaves the slot DISCONNECTED, ready to connect again.
        assert_eq!(code(c.disconnect()), Code::InvalidState);
        // offload-client exits as `connect` would (5: not trusted), with the daemon's remedy.
        let o = offload_send(&s.socket(), &format!("localhost:{}", server.port()), "x");
        assert_eq!(o.status.code(), Some(5), "{}", text(&o));
        let fix = text(&o).lines().find(|l| l.trim_start().starts_with("fix:")).unwrap_or_default().to_owned();
        assert!(fix.contains(remedy) && !fix.contains("--ca "), "{}", text(&o));
        assert_eq!(fix.matches('(').count(), fix.matches(')').count(), "the fix was cut: {fix}");
    }

    // The async API carries the same explanation.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let e = rt.block_on(sealtls_offload::connect(s.socket(), "localhost", stranger.port().parse().unwrap())).err().expect("refused");
    assert_eq!(e.code, Code::Aborted);
    assert!(e.detail.as_deref().is_some_and(|d| d.contains("CA")), "{e}");

    // --no-hostname-check (daemon-wide) accepts the name but not the stranger.
    let lax = daemon(d, "ca.pem", &["--no-hostname-check"]);
    let lax_socket = PathBuf::from(&lax.addr);
    let mut c = handshaked(&lax_socket, "localhost", misnamed.port().parse().unwrap());
    assert!(c.session().unwrap().contains("host name not checked"));
    assert_eq!(echo(&mut c, b"lax"), b"lax");
    let mut c = Client::open(&lax_socket).unwrap();
    poll(|| c.connect("localhost", stranger.port().parse().unwrap())).unwrap();
    assert_eq!(code(poll(|| c.handshake())), Code::Aborted);
}

/// Reads one frame's worth of bytes until the daemon closes the socket.
fn read_to_close(mut sock: UnixStream, limit: Duration) -> Vec<u8> {
    sock.set_read_timeout(Some(limit)).unwrap();
    let mut all = Vec::new();
    sock.read_to_end(&mut all).expect("the daemon closes the socket in time");
    all
}

fn goodbye_reason(bytes: &[u8]) -> String {
    use sealtls_offload_proto::proto::{decode_response, Response};
    let mut rest = bytes;
    while let Ok(Some((response, used))) = decode_response(rest, 1 << 20) {
        if let Response::Goodbye { reason, .. } = response {
            return reason;
        }
        rest = &rest[used..];
    }
    panic!("no GOODBYE in {} bytes", bytes.len());
}

#[test]
fn hostile_and_stalled_clients_do_not_hold_up_a_good_one() {
    let s = Stack::start(&["--client-timeout", "2"]);
    let socket = s.socket();

    // Junk and an absurd frame length: told why, then disconnected.
    let mut junk = UnixStream::connect(&socket).unwrap();
    junk.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert!(goodbye_reason(&read_to_close(junk, Duration::from_secs(5))).contains("bad magic"));
    let mut huge = UnixStream::connect(&socket).unwrap();
    huge.write_all(b"SO\x01\x04\xff\xff\xff\xff").unwrap();
    assert!(goodbye_reason(&read_to_close(huge, Duration::from_secs(5))).contains("exceeds the limit"));

    let mut early = UnixStream::connect(&socket).unwrap();
    let mut send = Vec::new();
    sealtls_offload_proto::proto::encode_send(&mut send, b"data");
    early.write_all(&send).unwrap();
    assert!(goodbye_reason(&read_to_close(early, Duration::from_secs(5))).contains("SEND before STREAM"));

    // A TLS client that fills the echo path and never reads.
    let mut stalled = handshaked(&socket, "localhost", s.port());
    let block = vec![b's'; stalled.buffer_size()];
    let mut queued = 0;
    while let Ok(n) = stalled.write(&block) {
        queued += n;
        assert!(queued < 64 << 20, "the daemon's queues are bounded");
    }

    // A client that floods requests and never reads the answers.
    let flood = UnixStream::connect(&socket).unwrap();
    flood.set_nonblocking(true).unwrap();
    let mut frame = Vec::new();
    sealtls_offload_proto::proto::Request::Detail.encode(&mut frame);
    let burst = frame.repeat(4096);
    let mut w = &flood;
    let mut sent = 0usize;
    while sent < 64 << 20 {
        match w.write(&burst) {
            Ok(n) => sent += n,
            Err(_) => break,
        }
    }

    // Meanwhile a well-behaved client moves 8 MiB through the async API.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let data: Vec<u8> = (0..8u32 << 20).map(|i| (i * 7 % 251) as u8).collect();
    let back = rt.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let tls = sealtls_offload::connect(&socket, "localhost", s.port()).await.unwrap();
        let (mut rd, mut wr) = tokio::io::split(tls);
        let writer = async {
            wr.write_all(&data).await.unwrap();
        };
        let reader = async {
            let mut back = vec![0u8; data.len()];
            rd.read_exact(&mut back).await.unwrap();
            back
        };
        let job = async { tokio::join!(writer, reader).1 };
        tokio::time::timeout(Duration::from_secs(60), job).await.expect("the good client finishes")
    });
    assert!(back == data, "echo differs");

    // The flooder was dropped for leaving answers unread.
    flood.set_nonblocking(false).unwrap();
    let log = s.daemon.wait_log("answers left unread");
    assert!(log.contains("answers left unread"), "{log}");
    let mut rest = Vec::new();
    flood.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // Closed with requests still unread on the daemon's side, so a reset is as good as an end.
    match (&flood).read_to_end(&mut rest) {
        Ok(_) => {}
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "socket not closed by the daemon: {e}"),
    }

    // The stalled client is still there and gets its data once it reads.
    let mut got = 0;
    let mut buf = vec![0u8; stalled.buffer_size()];
    while got < queued {
        got += stalled.read_wait(&mut buf).unwrap();
    }
    assert_eq!(got, queued);
}

#[test]
fn offload_client_and_missing_trust() {
    let s = Stack::start(&[]);
    let o = offload_send(&s.socket(), &format!("localhost:{}", s.port()), "hello offload");
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("through the offload daemon (badge 101): TLSv1.3"), "{out}");
    assert_eq!(String::from_utf8_lossy(&o.stdout), "hello offload\n", "{out}");

    // One newline is added unless the text ends with one, as `sealtls connect --send` does.
    for (sent, echoed) in [("hello\n", "hello\n"), ("two\nlines", "two\nlines\n"), ("", "\n")] {
        let o = offload_send(&s.socket(), &format!("localhost:{}", s.port()), sent);
        assert!(o.status.success(), "{}", text(&o));
        assert_eq!(String::from_utf8_lossy(&o.stdout), echoed, "--send {sent:?}: {}", text(&o));
    }

    let o = run(sealtls().args(["offload", "--socket", s.dir.path().join("x.sock").to_str().unwrap()]));
    let out = text(&o);
    assert_eq!(o.status.code(), Some(3), "{out}");
    assert!(out.contains("OS_ERROR_NOT_INITIALIZED") && out.contains("--trust"), "{out}");

    // A second daemon on a live socket is refused; the first keeps serving.
    let o = run(sealtls().args(["offload", "--socket", s.socket().to_str().unwrap(), "--trust", &p(s.dir.path(), "ca.pem")]));
    assert!(text(&o).contains("another daemon is listening"), "{}", text(&o));
    assert!(Client::open(s.socket()).is_ok());
}
