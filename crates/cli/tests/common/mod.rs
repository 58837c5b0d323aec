//! Helpers shared by the CLI tests: running the binary with time limits,
//! daemons on ephemeral ports, and the seed guides' certificate recipes.
#![allow(dead_code)]
pub mod custody;
pub mod memory;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub fn sealtls() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sealtls"));
    c.env("RUST_LOG", "info");
    c
}

/// A loopback TCP port that was free a moment ago, never one this test
/// process was given before (the kernel may hand the same ephemeral port out
/// twice in a row, and a test asking for several would get a clash).
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap();
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// Runs a command to completion with a time limit.
pub fn run(cmd: &mut Command) -> Output {
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "command timed out: {cmd:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

pub fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// A long-running `sealtls` process on an ephemeral loopback port, killed
/// on drop; `addr` is the first `listen=` address it logs.
pub struct Server {
    pub child: Child,
    pub addr: String,
    log: Arc<Mutex<String>>,
}

impl Server {
    /// `sealtls serve --listen 127.0.0.1:0 ARGS`.
    pub fn start(args: &[&str]) -> Server {
        Self::spawn(&[&["serve", "--listen", "127.0.0.1:0"], args].concat())
    }

    /// `sealtls ARGS`.
    pub fn spawn(args: &[&str]) -> Server {
        let mut child =
            sealtls().args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("spawn server");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.split("listen=").nth(1) {
                    let _ = tx.send(addr.split_whitespace().next().unwrap_or("").to_owned());
                }
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let addr = rx.recv_timeout(Duration::from_secs(20)).unwrap_or_else(|_| panic!("server did not start: {}", log.lock().unwrap()));
        Server { child, addr, log }
    }

    pub fn port(&self) -> &str {
        self.addr.rsplit(':').next().unwrap()
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits for `needle` to appear in the log.
    pub fn wait_log(&self, needle: &str) -> String {
        wait_for_text(|| self.log(), needle)
    }

    pub fn assert_alive(&mut self) {
        assert!(self.child.try_wait().unwrap().is_none(), "server exited: {}", self.log());
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A development PKI made by `sealtls pki`: CA, server `localhost`, client `alice`.
pub fn dev_pki(dir: &Path) -> PathBuf {
    let d = dir.to_str().unwrap();
    for args in [
        vec!["pki", "init", "--dir", d],
        vec!["pki", "issue", "server", "--dir", d, "--name", "localhost"],
        vec!["pki", "issue", "client", "--dir", d, "--name", "alice"],
    ] {
        let o = run(sealtls().args(&args));
        assert!(o.status.success(), "{}", text(&o));
    }
    dir.to_owned()
}

pub fn p(dir: &Path, name: &str) -> String {
    dir.join(name).to_str().unwrap().to_owned()
}

/// Collects everything `from` yields, in a background thread.
pub fn collect(mut from: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let out = Arc::new(Mutex::new(String::new()));
    let sink = out.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    out
}

/// Starts a line-oriented TLS client (openssl, gnutls-cli, ...), writes `line`
/// and returns its output once the echo appeared (or after 15 s).
pub fn interactive_echo(cmd: &mut Command, line: &str) -> String {
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn client");
    let mut stdin = child.stdin.take().unwrap();
    let out = collect(child.stdout.take().unwrap());
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut sent = false;
    while Instant::now() < deadline && !out.lock().unwrap().contains(line) {
        // Give the handshake a moment, then send once.
        if !sent && Instant::now() + Duration::from_millis(14_500) > deadline {
            let _ = stdin.write_all(format!("{line}\n").as_bytes());
            let _ = stdin.flush();
            sent = true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let mut err = String::new();
    let _ = child.wait();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let result = out.lock().unwrap().clone();
    format!("{result}\n--stderr--\n{err}")
}

pub fn echo_line_count(output: &str, line: &str) -> usize {
    output.lines().filter(|l| l.trim_end() == line).count()
}

pub fn sh(dir: &Path, script: &str) {
    let o = run(Command::new("sh").arg("-ec").arg(script).current_dir(dir));
    assert!(o.status.success(), "{script}: {}", text(&o));
}

pub const ROOT_CNF: &str = "distinguished_name = req_distinguished_name\nx509_extensions = v3_ca\nprompt = no\n[ req_distinguished_name ]\nCN = RootCA\n[ v3_ca ]\nbasicConstraints = critical, CA:TRUE\nsubjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid:always, issuer:always\nkeyUsage = critical, cRLSign, digitalSignature, keyCertSign\n";
pub const SERVER_CNF: &str = "[req]\ndefault_bits = 2048\ndistinguished_name = req_distinguished_name\nx509_extensions = v3_server\nprompt = no\n[ req_distinguished_name ]\nC = JP\nST = TOKYO\nL = TOKYO\nO = ABCCOMPANY\nCN = *\n[ v3_server ]\nbasicConstraints = critical, CA:TRUE\nsubjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid:always, issuer:always\nkeyUsage = critical, nonRepudiation, digitalSignature, keyEncipherment, keyAgreement\nextendedKeyUsage = critical, serverAuth\n";

/// The seed 000 guide's commands, verbatim: RootCA.pem/.key, server.pem/.key
/// (OpenSSL 3 makes the server certificate X.509 version 1 with CN=*).
pub fn seed000_pki(d: &Path) {
    std::fs::write(d.join("RootCA.cnf"), ROOT_CNF).unwrap();
    std::fs::write(d.join("server.cnf"), SERVER_CNF).unwrap();
    sh(d, "openssl genpkey -algorithm RSA -out RootCA.key 2>/dev/null
openssl req -new -x509 -days 3650 -key RootCA.key -out RootCA.pem -config RootCA.cnf
openssl genpkey -algorithm RSA -out server.key 2>/dev/null
openssl req -new -key server.key -out server.csr -config server.cnf
openssl x509 -req -days 365 -in server.csr -CA RootCA.pem -CAkey RootCA.key -CAcreateserial -out server.pem -extensions v3_server 2>/dev/null");
}

/// A console session driven the way a person with telnet would.
pub struct Telnet {
    pub stream: std::net::TcpStream,
    seen: String,
    /// Every byte received, unconverted.
    pub raw: Vec<u8>,
}

impl Telnet {
    pub fn connect(addr: &str) -> Telnet {
        let stream = std::net::TcpStream::connect(addr).expect("console accepts");
        stream.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        Telnet { stream, seen: String::new(), raw: Vec::new() }
    }

    /// Types a line, ending it with CR LF as telnet does.
    pub fn line(&mut self, text: &str) {
        self.stream.write_all(format!("{text}\r\n").as_bytes()).unwrap();
    }

    /// Reads until `needle` appears (CR LF turned into LF); returns
    /// everything read up to and including it, and keeps the rest.
    pub fn expect(&mut self, needle: &str) -> String {
        self.expect_any(&[needle])
    }

    /// Reads until one of `needles` appears; like [`Telnet::expect`].
    pub fn expect_any(&mut self, needles: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut buf = [0u8; 4096];
        loop {
            if let Some(end) = needles.iter().filter_map(|n| self.seen.find(n).map(|at| at + n.len())).min() {
                let rest = self.seen.split_off(end);
                return std::mem::replace(&mut self.seen, rest);
            }
            assert!(Instant::now() < deadline, "console never printed {needles:?}; it printed:\n{}", self.seen);
            match self.stream.read(&mut buf) {
                Ok(0) => panic!("console closed before printing {needles:?}; it printed:\n{}", self.seen),
                Ok(n) => {
                    self.raw.extend_from_slice(&buf[..n]);
                    self.seen.push_str(&String::from_utf8_lossy(&buf[..n]).replace("\r\n", "\n"));
                }
                Err(_) => {}
            }
        }
    }

    /// Types a line and reads up to the next prompt `prompt`.
    pub fn run(&mut self, text: &str, prompt: &str) -> String {
        self.line(text);
        self.expect(prompt)
    }

    /// Whether the console closed the session within a few seconds.
    pub fn closed(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            match self.stream.read(&mut buf) {
                Ok(0) => return true,
                Ok(n) => self.seen.push_str(&String::from_utf8_lossy(&buf[..n])),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => {}
            }
        }
        false
    }
}

/// Writes a file with the given mode.
pub fn write_mode(path: &Path, text: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A TOML basic multi-line string holding `path`'s contents (inline PEM).
pub fn inline(path: &Path) -> String {
    format!("\"\"\"\n{}\"\"\"", std::fs::read_to_string(path).unwrap())
}

/// `openssl s_server` on a free loopback port, its output collected; killed on drop.
pub struct OpensslServer {
    child: Child,
    pub port: u16,
    out: Arc<Mutex<String>>,
}

impl OpensslServer {
    /// Starts `openssl s_server -accept 127.0.0.1:PORT ARGS` in `dir`.
    pub fn start(dir: &Path, args: &[&str]) -> OpensslServer {
        let port = free_port();
        let mut child = Command::new("openssl")
            .arg("s_server")
            .args(["-accept", &format!("127.0.0.1:{port}")])
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl s_server starts");
        let out = collect(child.stdout.take().unwrap());
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "openssl s_server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        OpensslServer { child, port, out }
    }

    /// Waits until `needle` appears in its output (at most 10 s) and returns the output.
    pub fn wait_output(&self, needle: &str) -> String {
        wait_for_text(|| self.out.lock().unwrap().clone(), needle)
    }

    /// Types a line into it: s_server sends it to the connected client.
    pub fn type_line(&mut self, line: &str) {
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(format!("{line}\n").as_bytes()).unwrap();
        stdin.flush().unwrap();
    }
}

impl Drop for OpensslServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The port of the first `FIELD=HOST:PORT` in a log.
pub fn logged_port(log: &str, field: &str) -> String {
    log.split(&format!("{field}="))
        .nth(1)
        .and_then(|value| value.split_whitespace().next())
        .and_then(|addr| addr.rsplit(':').next())
        .unwrap_or_else(|| panic!("no {field}= in the log:\n{log}"))
        .to_string()
}

/// `swtpm socket` on free loopback ports with its state in a temporary directory, killed on drop.
pub struct Swtpm {
    child: Child,
    pub port: u16,
    _state: tempfile::TempDir,
}

impl Swtpm {
    pub fn start() -> Swtpm {
        let state = tempfile::tempdir().unwrap();
        // The swtpm TCTI finds the control channel on the next port.
        let (port, ctrl) = loop {
            let port = free_port();
            if port < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
                break (port, port + 1);
            }
        };
        let child = Command::new("swtpm")
            .args(["socket", "--tpm2", "--tpmstate", &format!("dir={}", state.path().display())])
            .args(["--server", &format!("type=tcp,port={port},bindaddr=127.0.0.1")])
            .args(["--ctrl", &format!("type=tcp,port={ctrl},bindaddr=127.0.0.1")])
            .args(["--flags", "not-need-init,startup-clear"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("swtpm (apt-get install swtpm)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "swtpm did not listen on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Swtpm { child, port, _state: state }
    }

    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The addresses the README's first command documents for `sealtls up`
/// with no configuration: (echo, console, keyless).
pub struct Documented {
    pub echo: String,
    pub console: String,
    pub keyless: String,
}

pub fn documented_defaults() -> Documented {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md")).unwrap();
    let line = readme.lines().find(|l| l.contains(" up ") && l.contains("TLS echo on")).expect("the README's `up` line");
    let after = |what: &str| {
        let rest = &line[line.find(what).unwrap_or_else(|| panic!("README's up line names no {what:?}: {line}")) + what.len()..];
        rest.split([',', ' ']).next().unwrap().to_owned()
    };
    Documented { echo: after("TLS echo on "), console: after("console on "), keyless: after("keyless TLS on ") }
}

/// A plain TCP echo backend on a free loopback port (`IP:PORT`): what
/// arrives goes back, and at the client's end of input it ends its output.
pub fn tcp_echo() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for conn in listener.incoming().map_while(Result::ok) {
            std::thread::spawn(move || {
                let mut rd = conn.try_clone().unwrap();
                let mut wr = conn;
                let _ = std::io::copy(&mut rd, &mut wr);
                let _ = wr.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    addr
}

/// `sealtls offload-client --socket SOCKET TARGET --send TEXT`, run to its end.
pub fn offload_send(socket: &Path, target: &str, text: &str) -> Output {
    run(sealtls().args(["offload-client", "--socket"]).arg(socket).args([target, "--send", text]))
}

/// A plain TCP service that writes `partial`, waits for two bytes from the
/// client (so the partial reply has surely been passed on), then resets
/// the connection: an application that fails in the middle of a reply.
pub fn tcp_backend_that_resets_mid_reply() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().map_while(Result::ok) {
            std::thread::spawn(move || {
                let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
                let mut go = [0u8; 2];
                if conn.write_all(b"partial").is_ok() && conn.read_exact(&mut go).is_ok() {
                    let _ = socket2::SockRef::from(&conn).set_linger(Some(Duration::ZERO));
                }
            });
        }
    });
    addr
}

/// Runs `up` (a prepared `sealtls up ...` command) and reads its standard
/// output up to the banner's end: (child, banner, its standard error as it grows).
pub fn start_up(up: &mut Command) -> (Child, String, Arc<Mutex<String>>) {
    let mut child = up.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let stderr = collect(child.stderr.take().unwrap());
    let mut banner = String::new();
    while !banner.contains("stop with Ctrl-C") {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => banner.push_str(&(line + "\n")),
            Err(_) => panic!("sealtls up did not come up: {banner}\n{}", stderr.lock().unwrap()),
        }
    }
    (child, banner, stderr)
}

/// SIGTERM to `up`, then a clean exit 0; `stderr` is shown if not.
pub fn stop_up_cleanly(child: &mut Child, stderr: &Mutex<String>) {
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "sealtls up did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0), "{}", stderr.lock().unwrap());
}

/// A peer program (openssl s_server, gnutls-serv, nginx in the foreground)
/// listening on `port`, its stdout and stderr collected; stopped on drop
/// with SIGTERM, then SIGKILL.
pub struct Peer {
    child: Child,
    pub port: u16,
    out: Arc<Mutex<String>>,
    err: Arc<Mutex<String>>,
}

impl Peer {
    /// Starts `cmd` and waits until `port` accepts connections (at most 20 s).
    pub fn start(cmd: &mut Command, port: u16) -> Peer {
        let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("the peer starts");
        let out = collect(child.stdout.take().unwrap());
        let err = collect(child.stderr.take().unwrap());
        let mut peer = Peer { child, port, out, err };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(peer.alive(), "{cmd:?} exited: {}", peer.output());
            assert!(Instant::now() < deadline, "{cmd:?} did not listen on {port}: {}", peer.output());
            std::thread::sleep(Duration::from_millis(20));
        }
        peer
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Everything it wrote so far, stdout then stderr.
    pub fn output(&self) -> String {
        format!("{}{}", self.out.lock().unwrap(), self.err.lock().unwrap())
    }

    /// Waits until `needle` appears in its output (at most 10 s) and returns the output.
    pub fn wait_output(&self, needle: &str) -> String {
        wait_for_text(|| self.output(), needle)
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// libsealtls_pkcs11.so next to the sealtls binary, checked to be newer than
/// its sources (`cargo test` does not rebuild a cdylib; scripts/test builds it).
pub fn pkcs11_module() -> PathBuf {
    let module = Path::new(env!("CARGO_BIN_EXE_sealtls")).with_file_name("libsealtls_pkcs11.so");
    let build = "build it first with `cargo build -p sealtls-pkcs11` (scripts/test does)";
    let built =
        std::fs::metadata(&module).and_then(|m| m.modified()).unwrap_or_else(|_| panic!("{} is missing: {build}", module.display()));
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for dir in ["pkcs11/src", "custody-proto/src", "endpoint/src"] {
        for entry in std::fs::read_dir(crates.join(dir)).unwrap().map(Result::unwrap).filter(|e| e.path().is_file()) {
            let changed = entry.metadata().unwrap().modified().unwrap();
            assert!(changed <= built, "{} is older than {}: {build}", module.display(), entry.path().display());
        }
    }
    module
}

/// Reads `text` until it contains `needle`, for at most 10 s; the last text read.
pub fn wait_for_text(text: impl Fn() -> String, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = text();
        if now.contains(needle) || Instant::now() > deadline {
            return now;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
