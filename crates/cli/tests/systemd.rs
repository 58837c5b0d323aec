//! Running under systemd: the unit files pass `systemd-analyze verify`, and
//! the test plays systemd's part for `serve`: a NOTIFY_SOCKET that receives
//! READY=1, RELOADING=1 and STOPPING=1, and listening sockets (TCP for
//! `serve` and `tunnel`, Unix for `offload` and `keyd`) passed by
//! `systemd-socket-activate` (LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES).
mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{collect, dev_pki, free_port, offload_send, p, run, sealtls, text};

fn units_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging/systemd")
}

/// Whether `tool` (from Debian's systemd package) is installed; says so when it is not.
fn have(tool: &str) -> bool {
    let found = Command::new("sh").arg("-c").arg(format!("command -v {tool}")).output().is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("skipped: {tool} is not installed (Debian: apt-get install systemd)");
    }
    found
}

#[test]
fn unit_files_pass_systemd_analyze_verify() {
    if !have("systemd-analyze") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut units = Vec::new();
    for entry in std::fs::read_dir(units_dir()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        if !(name.ends_with(".service") || name.ends_with(".socket")) {
            continue;
        }
        // verify needs ExecStart to exist: the test binary stands in for the installed one.
        let unit = std::fs::read_to_string(&path).unwrap().replace("/usr/local/bin/sealtls", env!("CARGO_BIN_EXE_sealtls"));
        assert!(
            unit.contains(env!("CARGO_BIN_EXE_sealtls")) || name.ends_with(".socket"),
            "{name} has no ExecStart=/usr/local/bin/sealtls"
        );
        // A template is verified as an instance of it.
        let name = name.replace("@.", "@example.");
        std::fs::write(dir.path().join(&name), unit).unwrap();
        units.push(name);
    }
    for expected in [
        "sealtls-keyd.service",
        "sealtls-keyd.socket",
        "sealtls-offload.service",
        "sealtls-offload.socket",
        "sealtls-serve@example.service",
    ] {
        assert!(units.iter().any(|u| u == expected), "packaging/systemd lacks {expected}: {units:?}");
    }
    for unit in &units {
        let o = run(Command::new("systemd-analyze").args(["verify", "--man=no", unit]).current_dir(dir.path()));
        // verify exits 0 on some problems (unknown values, ignored lines), so any output is a failure too.
        assert!(o.status.success() && text(&o).trim().is_empty(), "{unit}: {}", text(&o));
        let content = std::fs::read_to_string(dir.path().join(unit)).unwrap();
        if unit.ends_with(".service") {
            for line in ["Type=notify", "ExecReload=/bin/kill -HUP $MAINPID", "NoNewPrivileges=yes", "CapabilityBoundingSet=\n"] {
                assert!(content.contains(line), "{unit} lacks {line}");
            }
        }
    }
}

/// systemd's end of NOTIFY_SOCKET.
struct Notify {
    socket: UnixDatagram,
    path: PathBuf,
}

impl Notify {
    fn bind(dir: &Path) -> Notify {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        Notify { socket, path }
    }

    /// The next message, which must contain `state`.
    fn expect(&self, state: &str) -> String {
        let mut buf = [0u8; 4096];
        let n = self.socket.recv(&mut buf).unwrap_or_else(|e| panic!("no notification while waiting for {state}: {e}"));
        let message = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(message.lines().any(|l| l == state), "expected {state}, got {message:?}");
        message
    }
}

fn signal(child: &Child, name: &str) {
    let o = run(Command::new("kill").args([&format!("-{name}"), &child.id().to_string()]));
    assert!(o.status.success(), "{}", text(&o));
}

/// SIGTERM: the service says STOPPING=1 and exits cleanly.
fn stop_notified(child: &mut Child, notify: &Notify, log: &Arc<Mutex<String>>) {
    signal(child, "TERM");
    notify.expect("STOPPING=1");
    assert!(wait_exit(child, log).success(), "{}", log.lock().unwrap());
}

fn wait_exit(child: &mut Child, log: &Arc<Mutex<String>>) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "did not stop: {}", log.lock().unwrap());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The log once it holds `needle`: a line written before READY=1 may still be in the pipe.
fn logged(log: &Arc<Mutex<String>>, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = log.lock().unwrap().clone();
        if text.contains(needle) {
            return text;
        }
        assert!(Instant::now() < deadline, "no `{needle}` in the log: {text}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn hello(dir: &Path, addr: &str) -> std::process::Output {
    run(sealtls().args(["connect", addr, "--ca", &p(dir, "ca.pem"), "--server-name", "localhost", "--send", "hello"]))
}

#[test]
fn ready_comes_once_the_port_is_bound_and_stopping_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    dev_pki(d);
    let notify = Notify::bind(d);
    let mut child = sealtls()
        .args(["serve", "--listen", "127.0.0.1:0", "--cert", &p(d, "localhost.pem"), "--key", &p(d, "localhost.key")])
        .env("NOTIFY_SOCKET", &notify.path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = collect(child.stderr.take().unwrap());
    notify.expect("READY=1");
    // The listener is announced before READY=1, and answers now.
    let port = common::logged_port(&logged(&log, "listen="), "listen");
    let o = hello(d, &format!("127.0.0.1:{port}"));
    assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).contains("hello"), "{}", text(&o));

    signal(&child, "HUP");
    let reloading = notify.expect("RELOADING=1");
    assert!(reloading.lines().any(|l| l.starts_with("MONOTONIC_USEC=")), "{reloading:?}");
    notify.expect("READY=1");

    stop_notified(&mut child, &notify, &log);
}

#[test]
fn serve_takes_the_socket_systemd_passes_by_name() {
    if !have("systemd-socket-activate") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    dev_pki(d);
    let notify = Notify::bind(d);
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    // systemd-socket-activate binds, and on the first connection execs the
    // server with LISTEN_FDS=1, LISTEN_PID and LISTEN_FDNAMES=https.
    let mut child = Command::new("systemd-socket-activate")
        .args(["--listen", &addr, "--fdname=https", "-E", "RUST_LOG=info"])
        .arg(format!("--setenv=NOTIFY_SOCKET={}", notify.path.display()))
        .args([env!("CARGO_BIN_EXE_sealtls"), "serve", "--listen", "systemd:https"])
        .args(["--cert", &p(d, "localhost.pem"), "--key", &p(d, "localhost.key")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = collect(child.stderr.take().unwrap());
    // The first connection starts the server; it waits in the passed socket's backlog.
    let deadline = Instant::now() + Duration::from_secs(10);
    let first = loop {
        match std::net::TcpStream::connect(&addr) {
            Ok(stream) => break stream,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("systemd-socket-activate does not listen on {addr}: {e}: {}", log.lock().unwrap()),
        }
    };
    drop(first);
    notify.expect("READY=1");
    logged(&log, &format!("listen={addr}"));

    // A TLS handshake through the passed socket (nothing else listens on the port).
    let o = hello(d, &addr);
    assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).contains("hello"), "{}\n{}", text(&o), log.lock().unwrap());

    stop_notified(&mut child, &notify, &log);
}

#[test]
fn a_missing_systemd_socket_is_explained() {
    // The certificate is read first: real files, so that the listener is what fails.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    dev_pki(d);
    let o = run(sealtls().args(["serve", "--listen", "systemd:https", "--cert", &p(d, "localhost.pem"), "--key", &p(d, "localhost.key")]));
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(text(&o).contains("systemd passed no sockets") && text(&o).contains("fix:"), "{}", text(&o));
}

/// Runs `args` under systemd-socket-activate on the Unix socket `socket`
/// (named `name`), triggers it with a first connection, and waits for READY=1.
fn activated_on_unix(d: &Path, notify: &Notify, socket: &Path, name: &str, args: &[&str]) -> (Child, Arc<Mutex<String>>) {
    let mut child = Command::new("systemd-socket-activate")
        .arg(format!("--listen={}", socket.display()))
        .arg(format!("--fdname={name}"))
        .args(["--setenv=RUST_LOG=info", &format!("--setenv=NOTIFY_SOCKET={}", notify.path.display())])
        .arg(format!("--setenv=HOME={}", d.display()))
        .arg(env!("CARGO_BIN_EXE_sealtls"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = collect(child.stderr.take().unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(socket).is_err() {
        assert!(Instant::now() < deadline, "systemd-socket-activate does not listen on {}: {}", socket.display(), log.lock().unwrap());
        std::thread::sleep(Duration::from_millis(20));
    }
    notify.expect("READY=1");
    (child, log)
}

#[test]
fn offload_and_keyd_take_unix_sockets_systemd_passes() {
    if !have("systemd-socket-activate") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    dev_pki(d);
    let server = common::Server::start(&["--cert", &p(d, "localhost.pem"), "--key", &p(d, "localhost.key")]);

    let notify = Notify::bind(d);
    let socket = d.join("offload.sock");
    let (mut offload, log) =
        activated_on_unix(d, &notify, &socket, "offload", &["offload", "--listen", "systemd:offload", "--trust", &p(d, "ca.pem")]);
    let o = offload_send(&socket, &format!("localhost:{}", server.port()), "hi");
    assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).contains("hi"), "{}\n{}", text(&o), log.lock().unwrap());
    stop_notified(&mut offload, &notify, &log);

    let socket = d.join("keyd.sock");
    let keyd_args = ["keyd", "--data-dir", &p(d, "keyd"), "--device-key", &p(d, "device.key"), "--listen", "systemd:keyd"];
    let (mut keyd, log) = activated_on_unix(d, &notify, &socket, "keyd", &keyd_args);
    let o = run(sealtls().args(["key", "ls", "--keyd", &format!("unix:{}", socket.display())]));
    assert!(o.status.success(), "{}\n{}", text(&o), log.lock().unwrap());
    stop_notified(&mut keyd, &notify, &log);
    // The socket is systemd's: keyd leaves it in place.
    assert!(socket.exists());
}

#[test]
fn tunnel_takes_the_socket_systemd_passes() {
    if !have("systemd-socket-activate") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    dev_pki(d);
    let server = common::Server::start(&["--cert", &p(d, "localhost.pem"), "--key", &p(d, "localhost.key")]);
    let notify = Notify::bind(d);
    let addr = format!("127.0.0.1:{}", free_port());
    let mut child = Command::new("systemd-socket-activate")
        .args(["--listen", &addr, "--fdname=plain", "--setenv=RUST_LOG=info"])
        .arg(format!("--setenv=NOTIFY_SOCKET={}", notify.path.display()))
        .args([env!("CARGO_BIN_EXE_sealtls"), "tunnel", "--listen", "systemd:plain", "--target", &server.addr])
        .args(["--ca", &p(d, "ca.pem"), "--server-name", "localhost"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = collect(child.stderr.take().unwrap());
    // The first connection starts the tunnel, which then carries it.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut first = loop {
        match std::net::TcpStream::connect(&addr) {
            Ok(stream) => break stream,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("systemd-socket-activate does not listen on {addr}: {e}: {}", log.lock().unwrap()),
        }
    };
    notify.expect("READY=1");
    first.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    first.write_all(b"through systemd").unwrap();
    first.shutdown(std::net::Shutdown::Write).unwrap();
    let mut back = String::new();
    let _ = first.read_to_string(&mut back);
    assert_eq!(back, "through systemd", "{}", log.lock().unwrap());
    stop_notified(&mut child, &notify, &log);
}
