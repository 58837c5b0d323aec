//! `sealtls serve --target`: the TLS termination proxy between real
//! clients (curl, openssl s_client, gnutls-cli, a rustls client) and real
//! backends (Python's http.server, in-test TCP and Unix-socket peers), with
//! the limits that keep it standing: handshake and idle timeouts, bounded
//! memory against a target that never reads, a maximum session lifetime.
mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use common::{dev_pki, echo_line_count, free_port, interactive_echo, p, run, sealtls, text, Server};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

/// `sealtls serve` with the dev PKI's `localhost` certificate, forwarding to `target`.
fn proxy(d: &Path, target: &str, extra: &[&str]) -> Server {
    Server::start(&[&["--cert", &p(d, "localhost.pem"), "--key", &p(d, "localhost.key"), "--target", target], extra].concat())
}

/// Copies everything read back until EOF, then half-closes.
fn echo<S: Read + Write>(mut s: S, shutdown: impl FnOnce(&S)) {
    let mut buf = [0u8; 16 * 1024];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 || s.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    shutdown(&s);
}

/// A TCP echo backend on `listener`, one thread per connection.
fn tcp_echo_on(listener: TcpListener) -> String {
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for s in listener.incoming().map_while(Result::ok) {
            std::thread::spawn(move || echo(s, |s| drop(s.shutdown(Shutdown::Write))));
        }
    });
    addr
}

fn tcp_echo() -> String {
    tcp_echo_on(TcpListener::bind("127.0.0.1:0").unwrap())
}

/// A backend that runs `serve` on each accepted connection.
fn tcp_backend(serve: impl Fn(TcpStream) + Send + Sync + 'static) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let serve = Arc::new(serve);
    std::thread::spawn(move || {
        for s in listener.incoming().map_while(Result::ok) {
            let serve = serve.clone();
            std::thread::spawn(move || serve(s));
        }
    });
    addr
}

/// `python3 -m http.server` serving `root` on a free loopback port; killed on drop.
struct HttpBackend {
    child: Child,
    port: u16,
}

impl HttpBackend {
    /// Retries on another port if the one picked was taken meanwhile.
    fn start(root: &Path) -> HttpBackend {
        let mut errors = String::new();
        for _ in 0..3 {
            let port = free_port();
            let mut child = Command::new("python3")
                .args(["-m", "http.server", "--bind", "127.0.0.1", &port.to_string(), "--directory", root.to_str().unwrap()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("python3 starts");
            let stderr = common::collect(child.stderr.take().unwrap());
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return HttpBackend { child, port };
                }
                if child.try_wait().unwrap().is_some() || Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    errors.push_str(&format!("port {port}: {}\n", stderr.lock().unwrap()));
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("python3 -m http.server did not start: {errors}");
    }

    fn target(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for HttpBackend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `cmd` with `input` on stdin, to completion within 30 s.
fn run_with_input(cmd: &mut Command, input: &[u8]) -> Output {
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
    child.stdin.take().unwrap().write_all(input).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("command timed out: {cmd:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// curl and openssl s_client fetch `page.html` through `server`, verifying it as `localhost`.
fn fetch_page(server: &Server, ca: &str, page: &str) {
    let port = server.port();
    let url = format!("https://localhost:{port}/page.html");
    let o = run(Command::new("curl").args([
        "-sS",
        "--max-time",
        "20",
        "--cacert",
        ca,
        "--resolve",
        &format!("localhost:{port}:127.0.0.1"),
        &url,
    ]));
    assert!(o.status.success(), "curl: {}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), page, "curl: {}", text(&o));

    let o = run_with_input(
        Command::new("openssl").args(["s_client", "-connect", &format!("127.0.0.1:{port}"), "-servername", "localhost"]).args([
            "-CAfile",
            ca,
            "-verify_return_error",
            "-verify_hostname",
            "localhost",
            "-ign_eof",
        ]),
        b"GET /page.html HTTP/1.0\r\nHost: localhost\r\n\r\n",
    );
    let out = text(&o);
    assert!(o.status.success(), "s_client: {out}");
    assert!(out.contains("Verify return code: 0 (ok)") && out.contains("HTTP/1.0 200 OK") && out.contains(page), "s_client: {out}");
}

fn page_root(dir: &Path) -> (std::path::PathBuf, String) {
    let root = dir.join("www");
    std::fs::create_dir(&root).unwrap();
    let page = format!("<p>through the proxy {}</p>\n", std::process::id());
    std::fs::write(root.join("page.html"), &page).unwrap();
    (root, page)
}

#[test]
fn curl_and_openssl_fetch_a_page_through_the_proxy() {
    let tmp = tempfile::tempdir().unwrap();
    let d = dev_pki(&tmp.path().join("pki"));
    let (root, page) = page_root(tmp.path());
    let http = HttpBackend::start(&root);
    let mut server = proxy(&d, &http.target(), &[]);
    fetch_page(&server, &p(&d, "ca.pem"), &page);
    let log = server.log();
    assert!(log.contains(&format!("target={}", http.target())), "{log}");
    server.assert_alive();
}

#[test]
fn a_keyless_proxy_fetches_the_page_too() {
    let tmp = tempfile::tempdir().unwrap();
    let d = dev_pki(&tmp.path().join("pki"));
    let (root, page) = page_root(tmp.path());
    let http = HttpBackend::start(&root);
    let kd = Server::spawn(&["keyd", "--data-dir", &p(tmp.path(), "keyd"), "--device-key", &p(tmp.path(), "device.key")]);
    let socket = kd.addr.clone();
    let o = run(sealtls()
        .args(["key", "put", "localhost", &p(&d, "localhost.key"), "--cert", &p(&d, "localhost.pem")])
        .args(["--keyd", &format!("unix:{socket}")]));
    assert!(o.status.success(), "{}", text(&o));
    let mut server = Server::start(&["--keyd", &format!("unix:{socket}"), "--target", &http.target()]);
    fetch_page(&server, &p(&d, "ca.pem"), &page);
    server.assert_alive();
}

#[test]
fn gnutls_cli_reaches_a_tcp_echo_backend() {
    let tmp = tempfile::tempdir().unwrap();
    let d = dev_pki(tmp.path());
    let server = proxy(&d, &tcp_echo(), &[]);
    let out = interactive_echo(
        Command::new("gnutls-cli")
            .args(["--port", server.port(), "127.0.0.1", "--sni-hostname", "localhost", "--verify-hostname", "localhost"])
            .args(["--x509cafile", &p(&d, "ca.pem")]),
        "hello through the proxy",
    );
    assert_eq!(echo_line_count(&out, "hello through the proxy"), 1, "{out}");
}

#[test]
fn a_unix_socket_target() {
    let tmp = tempfile::tempdir().unwrap();
    let d = dev_pki(tmp.path());
    let path = tmp.path().join("echo.sock");
    let listener = UnixListener::bind(&path).unwrap();
    std::thread::spawn(move || {
        for s in listener.incoming().map_while(Result::ok) {
            std::thread::spawn(move || echo(s, |s| drop(s.shutdown(Shutdown::Write))));
        }
    });
    let server = proxy(&d, &format!("unix:{}", path.display()), &[]);
    let mut tls = Tls::connect(&server.addr, &d);
    tls.s.write_all(b"over a unix socket").unwrap();
    let mut got = [0u8; 18];
    tls.s.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"over a unix socket");
    // Our close_notify reaches the backend as EOF; its close comes back as close_notify.
    assert_eq!(tls.close_and_read_to_end().unwrap(), b"");
    let log = server.wait_log("session ended");
    assert!(log.contains(&format!("target=unix:{}", path.display())), "{log}");
}

/// A rustls client trusting the dev CA, over a blocking socket with a 15 s
/// read and write limit, handshake done.
struct Tls {
    s: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
}

impl Tls {
    fn connect(addr: &str, pki: &Path) -> Tls {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(pki.join("ca.pem")).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
        let mut conn = rustls::ClientConnection::new(Arc::new(config), "localhost".try_into().unwrap()).unwrap();
        let mut tcp = TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        tcp.set_write_timeout(Some(Duration::from_secs(15))).unwrap();
        while conn.is_handshaking() {
            conn.complete_io(&mut tcp).expect("handshake through the proxy");
        }
        Tls { s: rustls::StreamOwned::new(conn, tcp) }
    }

    /// Reads to the end: `Ok` only for a clean end (close_notify).
    fn read_to_end(&mut self) -> std::io::Result<Vec<u8>> {
        let mut got = Vec::new();
        self.s.read_to_end(&mut got).map(|_| got)
    }

    /// Sends close_notify (our half-close), then reads to the end.
    fn close_and_read_to_end(&mut self) -> std::io::Result<Vec<u8>> {
        self.s.conn.send_close_notify();
        self.s.flush()?;
        self.read_to_end()
    }
}

/// Waits until `needle` appears `n` times in the log (at most 15 s); returns the count.
fn wait_count(server: &Server, needle: &str, n: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let count = server.log().matches(needle).count();
        if count >= n || Instant::now() > deadline {
            return count;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn an_unreachable_target_closes_the_session_and_a_restarted_one_is_served() {
    let tmp = tempfile::tempdir().unwrap();
    let d = dev_pki(tmp.path());
    let port = free_port();
    let target = format!("127.0.0.1:{port}");
    let mut server = proxy(&d, &target, &["--connect-timeout", "3"]);

    let mut tls = Tls::connect(&server.addr, &d);
    assert_eq!(tls.read_to_end().expect("close_notify, not a bare close"), b"");
    assert_eq!(wait_count(&server, "target unreachable", 1), 1, "{}", server.log());
    let log = server.log();
    let line = log.lines().find(|l| l.contains("target unreachable")).unwrap();
    assert!(line.contains(&format!("target={target}")) && line.contains("refused"), "{line}");

    // The backend comes up on that port: the next client is served by the same proxy.
    tcp_echo_on(TcpListener::bind(&target).unwrap());
    let mut tls = Tls::connect(&server.addr, &d);
    tls.s.write_all(b"again").unwrap();
    assert_eq!(tls.close_and_read_to_end().unwrap(), b"again");
    assert_eq!(server.log().matches("target unreachable").count(), 1, "{}", server.log());
    server.assert_alive();
}

#[test]
fn the_targets_close_reaches_the_client_after_its_reply() {
    let tmp = tempfile::tempdir().unwrap();
    let d = dev_pki(tmp.path());
    let backend = tcp_backend(|mut s| {
        s.write_all(b"reply before closing\n").unwrap();
        // Dropping closes: a FIN after the reply.
    });
    let server = proxy(&d, &backend, &[]);
    let mut tls = Tls::connect(&server.addr, &d);
    assert_eq!(tls.read_to_end().expect("a clean end (close_notify)"), b"reply before closing\n");
    // The client's side is still open until it closes too.
    assert_eq!(tls.close_and_read_to_end().unwrap(), b"");
    let log = server.wait_log("session ended");
    assert!(log.contains("bytes_out=21") && !log.contains("with an error"), "{log}");
}

#[test]
fn the_clients_close_reaches_the_target_which_still_answers() {
    let tmp = tempfile::tempdir().unwrap();
    let d = dev_pki(tmp.path());
    let (saw_eof, seen) = mpsc::channel();
    let backend = tcp_backend(move |mut s| {
        let mut request = Vec::new();
        s.read_to_end(&mut request).unwrap();
        saw_eof.send(request.clone()).unwrap();
        s.write_all(format!("answer to {}", String::from_utf8_lossy(&request)).as_bytes()).unwrap();
    });
    let server = proxy(&d, &backend, &[]);
    let mut tls = Tls::connect(&server.addr, &d);
    tls.s.write_all(b"question").unwrap();
    tls.s.conn.send_close_notify();
    tls.s.flush().unwrap();
    assert_eq!(seen.recv_timeout(Duration::from_secs(15)).expect("the backend sees EOF"), b"question");
    assert_eq!(tls.read_to_end().expect("a clean end"), b"answer to question");
    let log = server.wait_log("session ended");
    assert!(log.contains("bytes_in=8 bytes_out=18") && !log.contains("with an error"), "{log}");
}

#[test]
fn slow_drip_clients_are_cut_at_the_handshake_timeout_while_a_good_client_is_served() {
    const DRIPPERS: usize = 200;
    let tmp = tempfile::tempdir().unwrap();
    let d = dev_pki(tmp.path());
    let server = proxy(&d, &tcp_echo(), &["--handshake-timeout", "2"]);
    let started = Instant::now();
    let drippers: Vec<TcpStream> = (0..DRIPPERS).map(|_| TcpStream::connect(&server.addr).unwrap()).collect();
    let connected = started.elapsed();

    // One byte per second on each until told to stop (or 10 s at most).
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<TcpStream> = drippers.iter().map(|s| s.try_clone().unwrap()).collect();
    let stopping = stop.clone();
    let drip = std::thread::spawn(move || {
        // The first bytes of a TLS record header, then anything.
        let bytes = [0x16u8, 0x03, 0x01, 0x02, 0x00];
        let mut open = vec![true; writers.len()];
        for second in 0..10 {
            if stopping.load(Ordering::Relaxed) {
                break;
            }
            for (w, open) in writers.iter().zip(open.iter_mut()) {
                if *open && (&*w).write_all(&bytes[second.min(bytes.len() - 1)..][..1]).is_err() {
                    *open = false;
                }
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    });

    // A good client during the drip: its request completes normally.
    let good = Instant::now();
    let mut tls = Tls::connect(&server.addr, &d);
    tls.s.write_all(b"served during the drip").unwrap();
    assert_eq!(tls.close_and_read_to_end().unwrap(), b"served during the drip");
    let good = good.elapsed();
    assert!(good < Duration::from_secs(2), "the good client took {good:?}");

    // Each dripper's socket is closed by the server: a read sees EOF or a reset.
    let deadline = started + Duration::from_secs(2 + 5);
    let mut closed = 0;
    let mut last_close = Duration::ZERO;
    for mut s in drippers {
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
        s.set_read_timeout(Some(left)).unwrap();
        let mut buf = [0u8; 64];
        let ended = loop {
            match s.read(&mut buf) {
                Ok(0) => break true,
                Ok(_) => continue,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break false,
                Err(_) => break true,
            }
        };
        if ended {
            closed += 1;
            last_close = started.elapsed();
        }
    }
    stop.store(true, Ordering::Relaxed);
    drip.join().unwrap();
    eprintln!("{DRIPPERS} drippers connected in {connected:?}; good client served in {good:?}; {closed} closed by the server, the last at {last_close:?}");
    assert_eq!(closed, DRIPPERS, "drippers closed by the server");
    assert!(last_close >= Duration::from_millis(1900) && last_close < Duration::from_secs(6), "last close at {last_close:?}");
    let cut = wait_count(&server, "no complete handshake within the time limit", DRIPPERS);
    assert_eq!(cut, DRIPPERS, "{}", server.log());
}

/// The process's resident set in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_target_that_never_reads_keeps_memory_bounded_until_the_idle_timeout() {
    const TOTAL: u64 = 64 << 20;
    let tmp = tempfile::tempdir().unwrap();
    let d = dev_pki(tmp.path());
    // Accepts and holds the connection without reading, until the test ends.
    let (release, held) = mpsc::channel::<()>();
    let held = Arc::new(std::sync::Mutex::new(held));
    let backend = tcp_backend(move |s| {
        let _ = held.lock().unwrap().recv_timeout(Duration::from_secs(60));
        drop(s);
    });
    let server = proxy(&d, &backend, &["--idle-timeout", "3"]);
    let pid = server.child.id();
    let before = rss_kib(pid);

    let mut tls = Tls::connect(&server.addr, &d);
    let progress = Arc::new(AtomicU64::new(0));
    let written = progress.clone();
    let (done_tx, done) = mpsc::channel();
    std::thread::spawn(move || {
        let chunk = vec![0x5au8; 64 * 1024];
        let mut result = Ok(());
        while written.load(Ordering::Relaxed) < TOTAL {
            if let Err(e) = tls.s.write_all(&chunk) {
                result = Err(e);
                break;
            }
            written.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
        let _ = done_tx.send(result);
    });

    // Stuck: no progress for a second (within 30 s).
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut last, mut since) = (0, Instant::now());
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let now = progress.load(Ordering::Relaxed);
        if now != last {
            (last, since) = (now, Instant::now());
        } else if now > 0 && since.elapsed() >= Duration::from_secs(1) {
            break;
        }
        assert!(Instant::now() < deadline, "the writer never stalled ({now} bytes written)");
        assert!(now < TOTAL, "all {TOTAL} bytes were taken though the target never reads");
    }
    let stuck = Instant::now();
    let during = rss_kib(pid);
    let growth = during.saturating_sub(before);
    eprintln!("writer stalled after {last} bytes; proxy VmRSS {before} KiB before, {during} KiB while stuck (+{growth} KiB)");
    assert!(growth < 32 * 1024, "the proxy grew by {growth} KiB while the target did not read");

    // Nothing moves, so --idle-timeout 3 closes the session and the blocked write fails.
    let result = done.recv_timeout(Duration::from_secs(10)).expect("the idle timeout ends the session");
    assert!(result.is_err(), "the writer finished though the target never read");
    let waited = stuck.elapsed();
    assert!(waited < Duration::from_secs(6), "closed {waited:?} after the stall");
    let log = server.wait_log("no bytes moved");
    let line = log.lines().find(|l| l.contains("no bytes moved")).unwrap();
    assert!(line.contains("idle_s=3"), "{line}");
    // What was relayed before the stall is counted although the relay was cut short.
    let relayed: u64 =
        line.split("bytes_in=").nth(1).and_then(|v| v.split_whitespace().next()?.parse().ok()).unwrap_or_else(|| panic!("{line}"));
    assert!(relayed > 0 && relayed <= last, "{relayed} of {last} bytes: {line}");
    drop(release);
}

#[test]
fn a_target_off_this_machine_needs_unsafe_target() {
    let tmp = tempfile::tempdir().unwrap();
    let d = dev_pki(tmp.path());
    let o = run(sealtls()
        .args(["serve", "--listen", "127.0.0.1:0", "--cert", &p(&d, "localhost.pem"), "--key", &p(&d, "localhost.key")])
        .args(["--target", "192.0.2.1:80"]));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let out = text(&o);
    assert!(out.contains("192.0.2.1:80") && out.contains("not on this machine"), "{out}");
    let fix = out.lines().find(|l| l.contains("fix:")).unwrap_or_else(|| panic!("no fix line: {out}"));
    assert!(fix.contains("--unsafe-target"), "{out}");
    // With the flag it starts (the target is only resolved, nothing is sent to it).
    let mut server = proxy(&d, "192.0.2.1:80", &["--unsafe-target"]);
    server.assert_alive();
}

/// A reply the target left unfinished must not look complete to the client:
/// when the idle limit cuts the session, or the target fails, the client
/// gets no close_notify, and the log names the side that failed.
#[test]
fn a_cut_session_never_looks_complete_to_the_client() {
    let tmp = tempfile::tempdir().unwrap();
    let d = dev_pki(tmp.path());
    // Idle: the target sends half a reply and then nothing; it learns how its connection ended.
    let (ended_tx, ended) = mpsc::channel::<std::io::Result<usize>>();
    let ended_tx = std::sync::Mutex::new(ended_tx);
    let stalls = tcp_backend(move |mut s| {
        let _ = s.write_all(b"partial");
        let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
        let _ = ended_tx.lock().unwrap().send(s.read(&mut [0u8; 16]));
    });
    let server = proxy(&d, &stalls, &["--idle-timeout", "1"]);
    let mut tls = Tls::connect(&server.addr, &d);
    let mut got = [0u8; 7];
    tls.s.read_exact(&mut got).unwrap();
    let end = tls.read_to_end().expect_err("the idle cut looked like a clean end (close_notify)");
    assert_eq!(end.kind(), std::io::ErrorKind::UnexpectedEof, "{end}");
    server.wait_log("no bytes moved");
    // The target is reset too, not given an ordinary end of a cut request.
    let target_end = ended.recv_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!(target_end.as_ref().map_err(|e| e.kind()), Err(std::io::ErrorKind::ConnectionReset), "{target_end:?}");

    // The target resets in the middle of its reply.
    let resets = common::tcp_backend_that_resets_mid_reply();
    let server = proxy(&d, &resets, &[]);
    let mut tls = Tls::connect(&server.addr, &d);
    tls.s.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"partial");
    tls.s.write_all(b"go").unwrap();
    tls.s.flush().unwrap();
    let end = tls.read_to_end().expect_err("the target's failure looked like a clean end (close_notify)");
    assert_eq!(end.kind(), std::io::ErrorKind::UnexpectedEof, "{end}");
    let log = server.wait_log("failed in the middle of the session");
    let line = log.lines().find(|l| l.contains("failed in the middle of the session")).unwrap();
    assert!(line.contains(&format!("the target {resets}")) && line.contains("--target"), "{line}");
    assert!(!line.contains("closed the connection unexpectedly"), "the target's failure is put on the client: {line}");
}

/// `send --expect echo` passes only a byte-exact echo: a backend that adds
/// bytes after echoing everything is caught, however large the file.
#[test]
fn bytes_beyond_the_echo_fail_the_echo_check() {
    let tmp = tempfile::tempdir().unwrap();
    let d = dev_pki(tmp.path());
    let adds = tcp_backend(|s| {
        echo(s, |mut s| {
            let _ = s.write_all(b"EXTRA");
            let _ = s.shutdown(Shutdown::Write);
        })
    });
    let file = tmp.path().join("payload.bin");
    std::fs::write(&file, vec![0x61u8; 8 << 20]).unwrap();
    for (backend, exit) in [(tcp_echo(), 0), (adds, 8)] {
        let server = proxy(&d, &backend, &[]);
        let o = run(sealtls()
            .args(["send", &server.addr, "--server-name", "localhost", "--ca", &p(&d, "ca.pem"), "--expect", "echo", "--file"])
            .arg(&file));
        assert_eq!(o.status.code(), Some(exit), "{backend}: {}", text(&o));
        if exit == 8 {
            assert!(text(&o).contains(&format!("{} bytes with sha256", (8 << 20) + 5)), "{}", text(&o));
        }
    }
}

#[test]
fn a_busy_session_is_closed_at_the_maximum_lifetime() {
    let tmp = tempfile::tempdir().unwrap();
    let d = dev_pki(tmp.path());
    let server = proxy(&d, &tcp_echo(), &["--max-conn-lifetime", "1"]);
    let mut tls = Tls::connect(&server.addr, &d);
    let started = Instant::now();
    let chunk = [0x42u8; 1024];
    let mut round_trips = 0;
    let end = loop {
        assert!(started.elapsed() < Duration::from_secs(10), "the session outlived its lifetime");
        let mut back = [0u8; 1024];
        match tls.s.write_all(&chunk).and_then(|_| tls.s.read_exact(&mut back)) {
            Ok(()) => round_trips += 1,
            Err(e) => break e,
        }
    };
    let lasted = started.elapsed();
    eprintln!("session lasted {lasted:?} ({round_trips} round trips), ended by: {end}");
    assert!(round_trips > 10, "the session was not busy: {round_trips}");
    assert!(lasted >= Duration::from_millis(900) && lasted < Duration::from_secs(3), "lasted {lasted:?}");
    let log = server.wait_log("maximum connection lifetime");
    assert!(log.contains("maximum connection lifetime") && log.contains("limit_s=1"), "{log}");
}

#[test]
fn connections_beyond_max_connections_wait_in_the_backlog() {
    const WAITING: usize = 300;
    let tmp = tempfile::tempdir().unwrap();
    let d = dev_pki(tmp.path());
    let server = proxy(&d, &tcp_echo(), &["--max-connections", "1"]);
    // The only slot is taken: the server accepts no more until it is free.
    let mut first = Tls::connect(&server.addr, &d);
    first.s.write_all(b"first").unwrap();
    let mut got = [0u8; 5];
    first.s.read_exact(&mut got).unwrap();
    let addr: std::net::SocketAddr = server.addr.parse().unwrap();
    // A burst waits in the listen backlog: no connection is dropped and retried a second later.
    let started = Instant::now();
    let waiting: Vec<TcpStream> = (0..WAITING)
        .map(|i| TcpStream::connect_timeout(&addr, Duration::from_millis(900)).unwrap_or_else(|e| panic!("connection {i} not queued: {e}")))
        .collect();
    eprintln!("{WAITING} connections queued behind --max-connections 1 in {:?}", started.elapsed());
    // The session being served is unaffected; once it and the waiting ones end, a new client is served.
    first.s.write_all(b"still").unwrap();
    first.s.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"still");
    assert_eq!(first.close_and_read_to_end().unwrap(), b"");
    drop(waiting);
    let mut next = Tls::connect(&server.addr, &d);
    next.s.write_all(b"next").unwrap();
    assert_eq!(next.close_and_read_to_end().unwrap(), b"next");
}
