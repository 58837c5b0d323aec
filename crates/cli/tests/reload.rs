//! Hot reload of `sealtls serve`: SIGHUP (or `--reload-interval`) loads the
//! certificate, key and client CAs again; new handshakes get the new
//! material, open sessions keep going, and a replacement that does not load
//! is refused while the old one stays in use. Checked with openssl and
//! `sealtls connect` as the peers.
mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use common::{dev_pki, offload_send, p, run, sealtls, tcp_echo, text, Server};

/// A second server certificate under the same CA, and a second CA with a client.
fn pki(dir: &Path) {
    dev_pki(dir);
    let d = dir.to_str().unwrap();
    let o = run(sealtls().args(["pki", "issue", "server", "--dir", d, "--name", "renewed", "--san", "localhost"]));
    assert!(o.status.success(), "{}", text(&o));
    let other = dir.join("other");
    std::fs::create_dir(&other).unwrap();
    dev_pki(&other);
}

/// Puts `from` in place of `to` the way deployment tools do: a new file renamed over the old.
fn replace(from: &Path, to: &Path) {
    let tmp = to.with_extension("new");
    std::fs::copy(from, &tmp).unwrap();
    std::fs::rename(&tmp, to).unwrap();
}

fn write_file(to: &Path, bytes: &[u8]) {
    use std::os::unix::fs::PermissionsExt;
    let tmp = to.with_extension("new");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::rename(&tmp, to).unwrap();
}

/// The served copies of `localhost`'s certificate and key.
fn served(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("served.pem"), dir.join("served.key"));
    replace(&dir.join("localhost.pem"), &cert);
    replace(&dir.join("localhost.key"), &key);
    (cert, key)
}

/// SHA-256 fingerprint of the first certificate in a PEM file, as openssl prints it.
fn fingerprint(pem: &Path) -> String {
    let o = run(Command::new("openssl").args(["x509", "-noout", "-fingerprint", "-sha256", "-in"]).arg(pem));
    assert!(o.status.success(), "{}", text(&o));
    String::from_utf8_lossy(&o.stdout).trim().split_once('=').expect("Fingerprint=").1.to_owned()
}

/// The fingerprint of the certificate a new handshake gets, read with openssl s_client.
fn served_fingerprint(dir: &Path, server: &Server) -> String {
    let o = run(Command::new("openssl").args(["s_client", "-connect", &server.addr, "-servername", "localhost"]));
    let out = dir.join("s_client.out");
    std::fs::write(&out, &o.stdout).unwrap();
    fingerprint(&out)
}

fn hup(server: &Server) {
    let o = run(Command::new("kill").args(["-HUP", &server.child.id().to_string()]));
    assert!(o.status.success(), "{}", text(&o));
}

/// Waits for the `n`th log line containing `needle` and returns that line.
fn nth_line(server: &Server, needle: &str, n: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let log = server.log();
        if let Some(line) = log.lines().filter(|l| l.contains(needle)).nth(n - 1) {
            return line.to_owned();
        }
        assert!(Instant::now() < deadline, "no {n}th `{needle}` line: {log}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An interactive `sealtls connect`: lines written to it come back from an echo.
struct Session {
    child: Child,
    input: ChildStdin,
    lines: Receiver<String>,
}

impl Session {
    fn open(dir: &Path, server: &Server) -> Session {
        let mut child = sealtls()
            .args(["connect", &server.addr, "--ca", &p(dir, "ca.pem"), "--server-name", "localhost"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let input = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Session { child, input, lines }
    }

    fn echo(&mut self, line: &str) {
        writeln!(self.input, "{line}").unwrap();
        self.input.flush().unwrap();
        let got = self.lines.recv_timeout(Duration::from_secs(10)).expect("the open session echoes");
        assert_eq!(got, line);
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Replaces the certificate under a running server and sends SIGHUP: the
/// session opened before still echoes, new handshakes get the new
/// certificate, and the log line names both fingerprints.
fn certificate_swap(extra: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    pki(d);
    let (cert, key) = served(d);
    let server = Server::start(&[&["--cert", cert.to_str().unwrap(), "--key", key.to_str().unwrap()], extra].concat());
    let (old, new) = (fingerprint(&d.join("localhost.pem")), fingerprint(&d.join("renewed.pem")));
    assert_ne!(old, new);
    assert_eq!(served_fingerprint(d, &server), old);

    let mut session = Session::open(d, &server);
    session.echo("before the reload");
    replace(&d.join("renewed.pem"), &cert);
    replace(&d.join("renewed.key"), &key);
    hup(&server);
    let line = nth_line(&server, "reloaded certificate", 1);
    assert!(line.contains(&format!("for serve {}", server.addr)) && line.contains(&format!("fingerprint {old} (expires ")), "{line}");
    assert!(line.contains(&format!("-> {new} (expires ")), "{line}");

    session.echo("after the reload");
    assert_eq!(served_fingerprint(d, &server), new);

    // Nothing changed: one line says so, and the new certificate stays.
    hup(&server);
    nth_line(&server, "reload: nothing changed", 1);
    assert_eq!(served_fingerprint(d, &server), new);
}

#[test]
fn sighup_swaps_the_certificate_of_an_echo_server() {
    certificate_swap(&[]);
}

#[test]
fn sighup_swaps_the_certificate_of_a_proxy() {
    let backend = tcp_echo();
    certificate_swap(&["--target", &backend]);
}

#[test]
fn a_replacement_that_does_not_load_is_refused_and_the_old_certificate_stays() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    pki(d);
    let (cert, key) = served(d);
    let server = Server::start(&["--cert", cert.to_str().unwrap(), "--key", key.to_str().unwrap()]);
    let old = fingerprint(&d.join("localhost.pem"));

    write_file(&cert, b"-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n");
    hup(&server);
    let line = nth_line(&server, "reload refused", 1);
    assert!(line.contains(&format!("for serve {}", server.addr)) && line.contains("served.pem") && line.contains("fix:"), "{line}");
    assert_eq!(served_fingerprint(d, &server), old);

    // A valid certificate whose key is another one's.
    replace(&d.join("renewed.pem"), &cert);
    hup(&server);
    let line = nth_line(&server, "reload refused", 2);
    assert!(line.contains("does not belong to the certificate"), "{line}");
    assert_eq!(served_fingerprint(d, &server), old);

    // The right key, but readable by others.
    replace(&d.join("renewed.key"), &key);
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    hup(&server);
    let line = nth_line(&server, "reload refused", 3);
    assert!(line.contains("chmod 600"), "{line}");
    assert_eq!(served_fingerprint(d, &server), old);
    assert!(!server.log().contains("reloaded certificate"), "{}", server.log());
}

#[test]
fn reload_interval_picks_up_replaced_files_without_a_signal() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    pki(d);
    let (cert, key) = served(d);
    let server = Server::start(&["--cert", cert.to_str().unwrap(), "--key", key.to_str().unwrap(), "--reload-interval", "1"]);
    let new = fingerprint(&d.join("renewed.pem"));
    // The new key arrives readable by others: refused, with the fix.
    let mode = |m| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(m)).unwrap();
    };
    replace(&d.join("renewed.key"), &key);
    mode(0o644);
    replace(&d.join("renewed.pem"), &cert);
    assert!(nth_line(&server, "reload refused", 1).contains("chmod 600"), "{}", server.log());
    // Following the fix is a change the watch sees, without a signal.
    mode(0o600);
    let line = nth_line(&server, "reloaded certificate", 1);
    assert!(line.contains(&format!("-> {new}")), "{line}");
    assert_eq!(served_fingerprint(d, &server), new);
}

#[test]
fn a_client_of_a_new_ca_is_let_in_once_the_ca_file_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    pki(d);
    let ca = d.join("clients-ca.pem");
    replace(&d.join("ca.pem"), &ca);
    let server = Server::start(&["--cert", &p(d, "localhost.pem"), "--key", &p(d, "localhost.key"), "--ca", ca.to_str().unwrap()]);
    let other = d.join("other");
    let hello = || {
        run(sealtls().args(["connect", &server.addr, "--ca", &p(d, "ca.pem"), "--server-name", "localhost", "--send", "hello"]).args([
            "--cert",
            &p(&other, "alice.pem"),
            "--key",
            &p(&other, "alice.key"),
        ]))
    };
    let before = hello();
    assert!(!before.status.success(), "{}", text(&before));

    replace(&other.join("ca.pem"), &ca);
    hup(&server);
    let line = nth_line(&server, "reloaded client CAs", 1);
    assert!(line.contains(&fingerprint(&other.join("ca.pem"))), "{line}");
    let after = hello();
    assert!(after.status.success() && String::from_utf8_lossy(&after.stdout).contains("hello"), "{}", text(&after));
}

/// Sends `line` through a plain connection to a tunnel; what came back.
fn through_tunnel(tunnel: &Server, line: &str) -> String {
    let mut s = std::net::TcpStream::connect(&tunnel.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(line.as_bytes()).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut back = String::new();
    let _ = s.read_to_string(&mut back);
    back
}

#[test]
fn a_tunnel_trusts_a_replaced_ca_file_after_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    pki(d);
    let server = Server::start(&["--cert", &p(d, "localhost.pem"), "--key", &p(d, "localhost.key")]);
    // The tunnel first trusts another CA, so the server is refused.
    let ca = d.join("tunnel-ca.pem");
    replace(&d.join("other/ca.pem"), &ca);
    let tunnel = Server::spawn(&[
        "tunnel",
        "--listen",
        "127.0.0.1:0",
        "--target",
        &server.addr,
        "--ca",
        ca.to_str().unwrap(),
        "--server-name",
        "localhost",
    ]);
    assert_eq!(through_tunnel(&tunnel, "before"), "");
    tunnel.wait_log("connection refused");

    replace(&d.join("ca.pem"), &ca);
    hup(&tunnel);
    let line = nth_line(&tunnel, "reloaded CAs for tunnel", 1);
    assert!(line.contains(&format!("fingerprints [{}", fingerprint(&d.join("other/ca.pem")))), "{line}");
    assert!(line.contains(&format!("-> [{}", fingerprint(&d.join("ca.pem")))), "{line}");
    assert_eq!(through_tunnel(&tunnel, "after"), "after");
}

#[test]
fn the_offload_daemon_trusts_a_replaced_ca_file_after_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    pki(d);
    let server = Server::start(&["--cert", &p(d, "localhost.pem"), "--key", &p(d, "localhost.key")]);
    let trust = d.join("trust.pem");
    replace(&d.join("other/ca.pem"), &trust);
    let socket = d.join("offload.sock");
    let daemon = Server::spawn(&["offload", "--socket", socket.to_str().unwrap(), "--trust", trust.to_str().unwrap()]);
    let hello = || offload_send(&socket, &format!("localhost:{}", server.port()), "hello");
    let before = hello();
    assert!(!before.status.success(), "{}", text(&before));

    replace(&d.join("ca.pem"), &trust);
    hup(&daemon);
    let line = nth_line(&daemon, "reloaded trust anchors for offload", 1);
    assert!(line.contains(&fingerprint(&d.join("ca.pem"))), "{line}");
    let after = hello();
    assert!(after.status.success() && String::from_utf8_lossy(&after.stdout).contains("hello"), "{}", text(&after));

    // An empty replacement is refused; the daemon keeps the CA it has.
    write_file(&trust, b"");
    hup(&daemon);
    let line = nth_line(&daemon, "reload refused for offload", 1);
    assert!(line.contains("fix:"), "{line}");
    assert!(hello().status.success());
}
