//! `sealtls tunnel`: plain local connections carried over TLS, to
//! `openssl s_server` and to `sealtls serve --target` (both ends ours),
//! with the remote verified and refused when it should be.
mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use aws_lc_rs::digest::{Context, SHA256};
use common::{dev_pki, p, run, tcp_echo, text, OpensslServer, Server};

/// A plain TCP service that speaks first and ends its output at once, then
/// reads until the client ends and reports how many bytes it got.
fn speaks_first() -> (u16, std::sync::mpsc::Receiver<usize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().map_while(Result::ok) {
            conn.write_all(b"hello, then nothing more\n").unwrap();
            conn.shutdown(Shutdown::Write).unwrap();
            let mut got = Vec::new();
            let _ = conn.read_to_end(&mut got);
            let _ = tx.send(got.len());
        }
    });
    (port, rx)
}

/// `sealtls serve --target 127.0.0.1:PORT`, letting in only alice.
fn serve_target(dir: &Path, target: &str) -> Server {
    Server::start(&[
        "--cert",
        &p(dir, "localhost.pem"),
        "--key",
        &p(dir, "localhost.key"),
        "--ca",
        &p(dir, "ca.pem"),
        "--allow-cn",
        "alice",
        "--target",
        target,
    ])
}

/// `sealtls tunnel` to `target` as alice, trusting `ca`.
fn tunnel(dir: &Path, listen: &str, target: &str, ca: &str, extra: &[&str]) -> Server {
    Server::spawn(
        &[
            &["tunnel", "--listen", listen, "--target", target, "--ca", ca, "--server-name", "localhost"][..],
            &["--cert", &p(dir, "alice.pem"), "--key", &p(dir, "alice.key")][..],
            extra,
        ]
        .concat(),
    )
}

fn read_timeout(s: &TcpStream) {
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
}

#[test]
fn carries_a_connection_to_openssl_s_server_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let d = dev_pki(dir.path());
    let mut s_server = OpensslServer::start(&d, &["-cert", "localhost.pem", "-key", "localhost.key", "-alpn", "h2"]);
    let t = tunnel(&d, "127.0.0.1:0", &format!("127.0.0.1:{}", s_server.port), &p(&d, "ca.pem"), &["--alpn", "h2,http/1.1"]);
    let mut local = TcpStream::connect(&t.addr).unwrap();
    read_timeout(&local);
    local.write_all(b"ping through the tunnel\n").unwrap();
    let out = s_server.wait_output("ping through the tunnel");
    assert!(out.contains("ping through the tunnel"), "s_server got: {out}\ntunnel: {}", t.log());
    s_server.type_line("pong from s_server");
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&got).contains("pong from s_server") {
        let n = local.read(&mut buf).unwrap();
        assert!(n > 0, "tunnel closed early: {}", t.log());
        got.extend_from_slice(&buf[..n]);
    }
    local.shutdown(Shutdown::Write).unwrap();
    let log = t.wait_log("connection closed");
    assert!(log.contains("alpn=h2"), "{log}");
}

/// Sends `size` bytes and shuts the write side, reading what comes back at
/// the same time; returns (sent digest, received digest, received bytes).
fn transfer(mut local: TcpStream, size: usize) -> (Vec<u8>, Vec<u8>, usize) {
    read_timeout(&local);
    let mut writer = local.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let mut digest = Context::new(&SHA256);
        let mut chunk = vec![0u8; 256 * 1024];
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut left = size;
        while left > 0 {
            for b in chunk.iter_mut() {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                *b = state as u8;
            }
            let n = left.min(chunk.len());
            writer.write_all(&chunk[..n]).unwrap();
            digest.update(&chunk[..n]);
            left -= n;
        }
        writer.shutdown(Shutdown::Write).unwrap();
        digest.finish().as_ref().to_vec()
    });
    let mut digest = Context::new(&SHA256);
    let mut buf = vec![0u8; 256 * 1024];
    let mut received = 0;
    loop {
        let n = local.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        digest.update(&buf[..n]);
        received += n;
    }
    (sender.join().unwrap(), digest.finish().as_ref().to_vec(), received)
}

#[test]
fn sixty_four_mib_through_tunnel_and_serve_target_and_back_with_half_closes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dev_pki(dir.path());
    let server = serve_target(&d, &tcp_echo());
    let t = tunnel(&d, "127.0.0.1:0", &server.addr, &p(&d, "ca.pem"), &["--verify-cn", "localhost", "--verify-dns", "other.example"]);

    // The client shuts its write side first and still reads the whole answer.
    let size = 64 << 20;
    let (sent, received, n) = transfer(TcpStream::connect(&t.addr).unwrap(), size);
    assert_eq!(n, size, "tunnel: {}\nserver: {}", t.log(), server.log());
    assert_eq!(sent, received, "the echo came back different");
    let log = t.wait_log("connection closed");
    assert!(log.contains(&format!("bytes_up={size}")) && log.contains(&format!("bytes_down={size}")), "{log}");
    assert!(server.log().contains("client=CN=alice"), "{}", server.log());

    // The other way: the target ends its output first, over a Unix socket
    // listener; the client still sends, and the target still reads it.
    let (port, got) = speaks_first();
    let server = serve_target(&d, &format!("127.0.0.1:{port}"));
    let socket = d.join("tunnel.sock");
    let listen = format!("unix:{}", socket.display());
    let t = tunnel(&d, &listen, &server.addr, &p(&d, "ca.pem"), &[]);
    let mut local = UnixStream::connect(&socket).unwrap();
    local.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut greeting = Vec::new();
    local.read_to_end(&mut greeting).unwrap();
    assert_eq!(greeting, b"hello, then nothing more\n", "{}", t.log());
    local.write_all(&[7u8; 100_000]).unwrap();
    local.shutdown(Shutdown::Write).unwrap();
    assert_eq!(got.recv_timeout(Duration::from_secs(30)).unwrap(), 100_000, "{}\n{}", t.log(), server.log());
    let log = t.wait_log("connection closed");
    assert!(log.contains("bytes_up=100000"), "{log}");
}

/// Opens a local connection and expects the tunnel to close it at once.
fn refused(t: &Server) {
    let mut local = TcpStream::connect(&t.addr).unwrap();
    read_timeout(&local);
    let _ = local.write_all(b"not for this server\n");
    let mut got = Vec::new();
    let _ = local.read_to_end(&mut got);
    assert!(got.is_empty(), "{}", t.log());
}

#[test]
fn an_untrusted_remote_is_refused_with_the_explanation_logged() {
    let dir = tempfile::tempdir().unwrap();
    let d = dev_pki(&dir.path().join("a"));
    let other = dev_pki(&dir.path().join("b"));
    let server = serve_target(&d, &tcp_echo());
    let t = tunnel(&d, "127.0.0.1:0", &server.addr, &p(&other, "ca.pem"), &[]);
    refused(&t);
    let log = t.wait_log("connection refused");
    let line = log.lines().find(|l| l.contains("connection refused")).unwrap_or_else(|| panic!("{log}"));
    assert!(line.contains("CN=localhost") && line.contains("fix="), "{log}");
    assert_eq!(log.lines().filter(|l| l.contains("connection refused")).count(), 1, "{log}");
}

#[test]
fn a_server_that_does_not_match_verify_cn_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dev_pki(dir.path());
    let server = serve_target(&d, &tcp_echo());
    let t = tunnel(&d, "127.0.0.1:0", &server.addr, &p(&d, "ca.pem"), &["--verify-cn", "billing"]);
    refused(&t);
    let log = t.wait_log("connection refused");
    let line = log.lines().find(|l| l.contains("connection refused")).unwrap_or_else(|| panic!("{log}"));
    assert!(line.contains("refused server") && line.contains("subject CN=localhost") && line.contains("allowed: cn=billing"), "{log}");
    assert!(line.contains("--verify-cn"), "{log}");
}

/// Plain TCP has no close_notify, so a tunnel resets the local connection
/// when the session was cut (the server failed mid-reply, or the idle
/// limit): the program sees an error, not a clean end of a truncated reply.
#[test]
fn a_cut_session_resets_the_local_connection() {
    let tmp = tempfile::tempdir().unwrap();
    let d = dev_pki(tmp.path());
    let backend = common::tcp_backend_that_resets_mid_reply();
    let server = serve_target(&d, &backend);
    let t = tunnel(&d, "127.0.0.1:0", &server.addr, &p(&d, "ca.pem"), &["--idle-timeout", "1"]);
    let mut local = TcpStream::connect(&t.addr).unwrap();
    read_timeout(&local);
    let mut got = [0u8; 7];
    local.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"partial");
    local.write_all(b"go").unwrap();
    let end = local.read(&mut got);
    assert_eq!(end.as_ref().map_err(|e| e.kind()), Err(std::io::ErrorKind::ConnectionReset), "{end:?}\n{}", t.log());
    // serve --target dropped the TLS session without close_notify when its target reset.
    let log = t.wait_log("in the middle of the session");
    let line = log.lines().find(|l| l.contains("in the middle of the session")).unwrap();
    assert!(line.contains("closed the connection without close_notify") && line.contains("the local connection was reset"), "{line}");

    // Idle: nothing moves for a second.
    let mut local = TcpStream::connect(&t.addr).unwrap();
    read_timeout(&local);
    local.read_exact(&mut got).unwrap();
    let end = local.read(&mut got);
    assert_eq!(end.as_ref().map_err(|e| e.kind()), Err(std::io::ErrorKind::ConnectionReset), "{end:?}\n{}", t.log());
    t.wait_log("within the idle timeout");
}

/// On SIGTERM a tunnel takes no new connections, gives the open ones the
/// grace period, then cuts them with one log line; a connection that ends
/// within the grace is carried to its end.
#[test]
fn a_stopping_tunnel_lets_open_connections_finish_within_the_grace() {
    let tmp = tempfile::tempdir().unwrap();
    let d = dev_pki(tmp.path());
    let backend = tcp_echo();
    let server = serve_target(&d, &backend);
    let mut t = tunnel(&d, "127.0.0.1:0", &server.addr, &p(&d, "ca.pem"), &[]);
    let open = |line: &[u8]| {
        let mut local = TcpStream::connect(&t.addr).unwrap();
        read_timeout(&local);
        local.write_all(line).unwrap();
        let mut back = vec![0u8; line.len()];
        local.read_exact(&mut back).unwrap();
        local
    };
    let (mut finishing, mut lingering) = (open(b"one"), open(b"two"));
    let o = run(std::process::Command::new("kill").args(["-TERM", &t.child.id().to_string()]));
    assert!(o.status.success(), "{}", text(&o));
    // Still carried after the signal, until it ends.
    finishing.write_all(b"last").unwrap();
    let mut back = [0u8; 4];
    finishing.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"last");
    finishing.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    finishing.read_to_end(&mut rest).unwrap();
    // The other is cut at the end of the grace, with a reset: it must not look complete.
    let end = lingering.read(&mut back);
    assert_eq!(end.as_ref().map_err(|e| e.kind()), Err(std::io::ErrorKind::ConnectionReset), "{end:?}");
    let status = t.child.wait().unwrap();
    assert!(status.success(), "{status:?}\n{}", t.log());
    let log = t.log();
    assert!(log.contains("sessions still open after the shutdown grace period were cut") && log.contains("open=1"), "{log}");
}

#[test]
fn listening_off_loopback_needs_unsafe_listen() {
    let dir = tempfile::tempdir().unwrap();
    let d = dev_pki(dir.path());
    let o = run(common::sealtls().args(["tunnel", "--listen", "0.0.0.0:0", "--target", "127.0.0.1:1", "--ca", &p(&d, "ca.pem")]));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("not a loopback address") && text(&o).contains("--unsafe-listen"), "{}", text(&o));
    let o = run(common::sealtls().args(["tunnel", "--listen", "localhost:80", "--target", "127.0.0.1:1", "--ca", &p(&d, "ca.pem")]));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

#[test]
fn the_client_key_can_stay_in_keyd() {
    let dir = tempfile::tempdir().unwrap();
    let d = dev_pki(&dir.path().join("pki"));
    let kd = Server::spawn(&[
        "keyd",
        "--data-dir",
        dir.path().join("keyd").to_str().unwrap(),
        "--device-key",
        dir.path().join("device.key").to_str().unwrap(),
    ]);
    let keyd = format!("unix:{}", kd.addr);
    let o = run(common::sealtls().args(["key", "put", "alice", &p(&d, "alice.key"), "--cert", &p(&d, "alice.pem"), "--keyd", &keyd]));
    assert!(o.status.success(), "{}", text(&o));
    std::fs::remove_file(d.join("alice.key")).unwrap();

    let server = serve_target(&d, &tcp_echo());
    let t = Server::spawn(&[
        "tunnel",
        "--listen",
        "127.0.0.1:0",
        "--target",
        &server.addr,
        "--ca",
        &p(&d, "ca.pem"),
        "--server-name",
        "localhost",
        "--keyd",
        &keyd,
        "--keyd-name",
        "alice",
    ]);
    let (sent, received, n) = transfer(TcpStream::connect(&t.addr).unwrap(), 1 << 20);
    assert_eq!((n, sent), (1 << 20, received), "tunnel: {}\nserver: {}", t.log(), server.log());
    assert!(server.log().contains("client=CN=alice"), "{}", server.log());

    // A name keyd does not hold stops the tunnel at start, with the remedy.
    let o = run(common::sealtls().args(["tunnel", "--listen", "127.0.0.1:0", "--target", &server.addr, "--ca", &p(&d, "ca.pem")]).args([
        "--keyd",
        &keyd,
        "--keyd-name",
        "mallory",
    ]));
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(text(&o).contains("sealtls key put mallory"), "{}", text(&o));
}
