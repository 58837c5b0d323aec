//! The status listener (`--status ADDR`) of real processes: metrics scraped
//! with curl and parsed by Python's prometheus_client, the /_status JSON
//! against openssl's view of the certificate, and /_health following keyd.
mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{logged_port, offload_send, p, run, sealtls, text, Server};

/// A CA, server `localhost`, and clients `alice` (let in) and `bob` (refused by the rule).
fn pki(dir: &Path) -> std::path::PathBuf {
    let d = dir.join("pki");
    let ds = d.to_str().unwrap();
    for args in [
        vec!["pki", "init", "--dir", ds],
        vec!["pki", "issue", "server", "--dir", ds, "--name", "localhost"],
        vec!["pki", "issue", "server", "--dir", ds, "--name", "a.test"],
        vec!["pki", "issue", "client", "--dir", ds, "--name", "alice"],
        vec!["pki", "issue", "client", "--dir", ds, "--name", "bob"],
    ] {
        let o = run(sealtls().args(&args));
        assert!(o.status.success(), "{}", text(&o));
    }
    d
}

/// GET `path` from the status listener: (HTTP code, body).
fn get(port: &str, path: &str) -> (u16, String) {
    let o = run(Command::new("curl").args(["-s", "--max-time", "10", "-w", "\n%{http_code}", &format!("http://127.0.0.1:{port}{path}")]));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let (body, code) = out.rsplit_once('\n').unwrap_or_else(|| panic!("curl printed no status: {}", text(&o)));
    (code.trim().parse().unwrap_or_else(|_| panic!("curl: {}", text(&o))), body.to_owned())
}

/// The samples of a Prometheus text exposition, parsed by prometheus_client's own parser.
fn samples(exposition: &str) -> Vec<serde_json::Value> {
    const PARSE: &str = "import sys, json\nfrom prometheus_client.parser import text_string_to_metric_families as parse\n\
print(json.dumps([{'name': s.name, 'labels': s.labels, 'value': s.value} for f in parse(sys.stdin.read()) for s in f.samples]))";
    // Debian's python3-prometheus-client is installed for the system's python3, which a
    // python3 earlier on PATH (pyenv, a virtualenv) does not see.
    let python = if Path::new("/usr/bin/python3").exists() { "/usr/bin/python3" } else { "python3" };
    let mut child = Command::new(python)
        .args(["-c", PARSE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), exposition.as_bytes()).unwrap();
    drop(child.stdin.take());
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "the parser refused the exposition: {}\n{exposition}", text(&o));
    serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap().as_array().unwrap().clone()
}

/// The sum of the samples named `name` whose labels include `labels`.
fn value(samples: &[serde_json::Value], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s["name"] == name && labels.iter().all(|(k, v)| s["labels"][k] == *v))
        .map(|s| s["value"].as_f64().unwrap())
        .sum()
}

/// Scrapes until `done` holds for the samples (at most 10 s); returns the last scrape.
fn scrape_until(port: &str, done: impl Fn(&[serde_json::Value]) -> bool) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, body) = get(port, "/metrics");
        assert_eq!(code, 200, "{body}");
        let s = samples(&body);
        if done(&s) || Instant::now() > deadline {
            return s;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls /_health until it answers `code` (at most 15 s); returns the body.
fn health_becomes(port: &str, code: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (got, body) = get(port, "/_health");
        if got == code {
            return body;
        }
        assert!(Instant::now() < deadline, "/_health stayed {got} ({body}), expected {code}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn s_client(port: &str, pki: &Path, client: &str, servername: &str) -> String {
    text(&run(Command::new("openssl").args([
        "s_client",
        "-connect",
        &format!("127.0.0.1:{port}"),
        "-servername",
        servername,
        "-CAfile",
        &p(pki, "ca.pem"),
        "-cert",
        &p(pki, &format!("{client}.pem")),
        "-key",
        &p(pki, &format!("{client}.key")),
        "-tls1_3",
    ])))
}

/// The SHA-256 fingerprint of a certificate file, as openssl prints it (upper-case hex with colons).
fn fingerprint(pem: &Path) -> String {
    let out = text(&run(Command::new("openssl").args(["x509", "-in", pem.to_str().unwrap(), "-noout", "-fingerprint", "-sha256"])));
    out.trim().rsplit('=').next().unwrap().to_uppercase()
}

#[test]
fn metrics_count_handshakes_and_refusals_and_status_shows_the_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let server = Server::start(&[
        "--cert",
        &p(&pki, "localhost.pem"),
        "--key",
        &p(&pki, "localhost.key"),
        "--ca",
        &p(&pki, "ca.pem"),
        "--allow-cn",
        "alice",
        "--status",
        "127.0.0.1:0",
    ]);
    let log = server.wait_log("status listen=");
    let status = logged_port(&log, "status listen");
    assert_ne!(status, server.port(), "{log}");

    let (ok, refused) = (3, 2);
    for _ in 0..ok {
        let out = s_client(server.port(), &pki, "alice", "localhost");
        assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
    }
    for _ in 0..refused {
        s_client(server.port(), &pki, "bob", "localhost");
    }
    let listener = format!("127.0.0.1:{}", server.port());
    let l = listener.as_str();
    let s = scrape_until(&status, |s| {
        value(s, "sealtls_tls_handshakes_total", &[("result", "ok")]) >= ok as f64
            && value(s, "sealtls_tls_handshakes_total", &[("result", "failed")]) >= refused as f64
    });
    let ok_labels = [("listener", l), ("result", "ok"), ("version", "TLSv1.3"), ("group", "X25519")];
    assert_eq!(value(&s, "sealtls_tls_handshakes_total", &ok_labels), ok as f64, "{s:#?}");
    let denied = [("listener", l), ("result", "failed"), ("failure", "access_denied")];
    assert_eq!(value(&s, "sealtls_tls_handshakes_total", &denied), refused as f64, "{s:#?}");
    assert_eq!(value(&s, "sealtls_tls_handshakes_total", &[("result", "failed")]), refused as f64, "{s:#?}");
    assert_eq!(value(&s, "sealtls_tls_access_denied_total", &[("listener", l)]), refused as f64, "{s:#?}");
    assert_eq!(value(&s, "sealtls_tls_handshake_duration_seconds_count", &[("listener", l)]), ok as f64, "{s:#?}");
    assert_eq!(value(&s, "sealtls_tls_connections_open", &[("listener", l)]), 0.0, "{s:#?}");
    let expiry = value(&s, "sealtls_certificate_expiry_seconds", &[("listener", l), ("subject", "CN=localhost")]);
    assert!(expiry > 360.0 * 86_400.0 && expiry <= 366.0 * 86_400.0, "{expiry}");

    // /_status shows the certificate as openssl sees it, and the client CA.
    let (code, body) = get(&status, "/_status");
    assert_eq!(code, 200, "{body}");
    let report: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    let listeners = report["listeners"].as_array().unwrap();
    assert_eq!(listeners.len(), 1, "{body}");
    assert_eq!(listeners[0]["address"], l);
    assert_eq!(listeners[0]["mode"], "echo");
    let cert = &listeners[0]["certificates"][0];
    assert_eq!(cert["sha256"].as_str().unwrap().to_uppercase(), fingerprint(&pki.join("localhost.pem")), "{body}");
    assert_eq!(cert["subject"], "CN=localhost");
    assert!(cert["sans"].as_array().unwrap().iter().any(|n| n == "DNS:localhost"), "{body}");
    assert!((364..=365).contains(&cert["days_left"].as_i64().unwrap()), "{body}");
    assert!(listeners[0]["trust_anchors"][0]["subject"].as_str().unwrap().contains("sealtls development CA"), "{body}");
    assert_eq!(report["counts"]["handshakes"], ok, "{body}");
    assert_eq!(report["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(get(&status, "/_health"), (200, "ok\n".to_owned()));
    assert_eq!(get(&status, "/nothing").0, 404);
}

#[test]
fn a_status_address_off_loopback_is_refused_without_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let o = run(sealtls().args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--cert",
        &p(&pki, "localhost.pem"),
        "--key",
        &p(&pki, "localhost.key"),
        "--status",
        "0.0.0.0:0",
    ]));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("--status 0.0.0.0:0 is not a loopback address"), "{}", text(&o));
    assert!(text(&o).contains("fix: use 127.0.0.1:PORT or unix:PATH") && text(&o).contains("--unsafe-status"), "{}", text(&o));
    let o = run(sealtls().args(["serve", "--unsafe-status"]));
    assert_eq!(o.status.code(), Some(2), "--unsafe-status needs --status: {}", text(&o));
    for command in ["serve", "tunnel", "offload", "keyd", "up"] {
        let help = text(&run(sealtls().args([command, "--help"])));
        assert!(
            help.contains("--status <ADDR>") && help.contains("[default: none]") && help.contains("--unsafe-status"),
            "{command}: {help}"
        );
    }
    assert!(text(&run(sealtls().args(["up", "--help"]))).contains("--keyd-status <ADDR>"));
}

/// A tunnel's page counts what it carried, as a server's does: the handshake
/// with the target, the bytes each way, and a target that could not be reached.
#[test]
fn a_tunnel_counts_what_it_carries_and_shows_whom_it_trusts() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let mut remote = Server::start(&["--cert", &p(&pki, "localhost.pem"), "--key", &p(&pki, "localhost.key")]);
    let target = format!("127.0.0.1:{}", remote.port());
    let tunnel = Server::spawn(&[
        "tunnel",
        "--listen",
        "127.0.0.1:0",
        "--target",
        &target,
        "--server-name",
        "localhost",
        "--ca",
        &p(&pki, "ca.pem"),
        "--status",
        "127.0.0.1:0",
        // Long enough that the live connection below is still open when scraped, even on a slow machine.
        "--idle-timeout",
        "3",
    ]);
    let status = logged_port(&tunnel.wait_log("status listen="), "status listen");
    // Sends, then half-closes unless `wait_for_idle_close`; returns all that came back.
    let carry = |send: &[u8], wait_for_idle_close: bool| {
        let mut local = std::net::TcpStream::connect(&tunnel.addr).unwrap();
        local.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let _ = std::io::Write::write_all(&mut local, send);
        if !wait_for_idle_close {
            // The tunnel may have reset it already (a target that is down).
            let _ = local.shutdown(std::net::Shutdown::Write);
        }
        let mut back = Vec::new();
        let _ = std::io::Read::read_to_end(&mut local, &mut back);
        back
    };
    assert_eq!(carry(b"hello", false), b"hello", "{}", tunnel.log());
    let l = tunnel.addr.as_str();
    // A connection still open is counted as its bytes go, not when it ends.
    let mut live = std::net::TcpStream::connect(&tunnel.addr).unwrap();
    live.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    std::io::Write::write_all(&mut live, b"live").unwrap();
    std::io::Read::read_exact(&mut live, &mut [0u8; 4]).unwrap();
    let s = scrape_until(&status, |s| value(s, "sealtls_tls_received_bytes_total", &[("listener", l)]) == 9.0);
    assert_eq!(value(&s, "sealtls_tls_sent_bytes_total", &[("listener", l)]), 9.0, "{s:#?}");
    assert_eq!(value(&s, "sealtls_tls_connections_open", &[("listener", l)]), 1.0, "{s:#?}");
    drop(live);
    // Closed by the idle limit: its bytes count all the same.
    assert_eq!(carry(b"ping", true), b"ping", "{}", tunnel.log());
    let s = scrape_until(&status, |s| {
        value(s, "sealtls_tls_handshakes_total", &[("listener", l), ("result", "ok")]) == 3.0
            && value(s, "sealtls_tls_connections_open", &[("listener", l)]) == 0.0
    });
    let ok = [("listener", l), ("result", "ok"), ("version", "TLSv1.3")];
    assert_eq!(value(&s, "sealtls_tls_handshakes_total", &ok), 3.0, "{s:#?}");
    assert_eq!(value(&s, "sealtls_tls_handshake_duration_seconds_count", &[("listener", l)]), 3.0, "{s:#?}");
    assert_eq!(value(&s, "sealtls_tls_sent_bytes_total", &[("listener", l)]), 13.0, "{s:#?}");
    assert_eq!(value(&s, "sealtls_tls_received_bytes_total", &[("listener", l)]), 13.0, "{s:#?}");

    let _ = remote.child.kill();
    let _ = remote.child.wait();
    assert_eq!(carry(b"lost", false), b"", "a target that is down closes the local connection");
    let failed = [("listener", l), ("result", "failed"), ("failure", "network")];
    let s = scrape_until(&status, |s| value(s, "sealtls_tls_handshakes_total", &failed) == 1.0);
    assert_eq!(value(&s, "sealtls_tls_handshakes_total", &failed), 1.0, "{s:#?}\n{}", tunnel.log());

    let (code, body) = get(&status, "/_status");
    assert_eq!(code, 200, "{body}");
    let report: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    let shown = &report["listeners"][0];
    assert_eq!((shown["address"].as_str(), shown["mode"].as_str()), (Some(l), Some("tunnel")), "{body}");
    assert!(shown["trust_anchors"][0]["subject"].as_str().unwrap().contains("sealtls development CA"), "{body}");
    let counts = &shown["counts"];
    let got: Vec<_> = ["accepted", "handshakes", "handshakes_failed", "open", "bytes_in", "bytes_out"].map(|k| counts[k].as_u64()).into();
    assert_eq!(got, [Some(4), Some(3), Some(1), Some(0), Some(13), Some(13)], "{body}");
}

fn keyd(dir: &Path, extra: &[&str]) -> Server {
    let data = dir.join("keyd");
    let device = dir.join("secret/device.key");
    Server::spawn(&[&["keyd", "--data-dir", data.to_str().unwrap(), "--device-key", device.to_str().unwrap()], extra].concat())
}

fn put(socket: &str, pki: &Path, domain: &str) {
    let o = run(sealtls()
        .args(["key", "put", domain, &p(pki, &format!("{domain}.key")), "--cert", &p(pki, &format!("{domain}.pem"))])
        .args(["--keyd", &format!("unix:{socket}")]));
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn keyless_health_follows_keyd_and_keyd_counts_its_signatures() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let kd = keyd(dir.path(), &["--status", "127.0.0.1:0"]);
    let keyd_status = logged_port(&kd.wait_log("status listen="), "status listen");
    put(&kd.addr, &pki, "a.test");
    let server = Server::start(&["--keyd", &format!("unix:{}", kd.addr), "--status", "127.0.0.1:0"]);
    let status = logged_port(&server.wait_log("status listen="), "status listen");
    assert_eq!(health_becomes(&status, 200), "ok\n");

    let sign = [("operation", "SIGN"), ("result", "ok")];
    let before = value(&samples(&get(&keyd_status, "/metrics").1), "sealtls_keyd_requests_total", &sign);
    let handshakes = 2;
    for _ in 0..handshakes {
        let out = s_client(server.port(), &pki, "alice", "a.test");
        assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
    }
    let s = scrape_until(&keyd_status, |s| value(s, "sealtls_keyd_requests_total", &sign) >= before + handshakes as f64);
    assert_eq!(value(&s, "sealtls_keyd_requests_total", &sign), before + handshakes as f64, "{s:#?}");
    assert!(value(&s, "sealtls_keyd_sign_duration_seconds_count", &[("family", "ECDSA P-256")]) >= handshakes as f64, "{s:#?}");
    assert_eq!(value(&s, "sealtls_keyd_keys", &[]), 1.0, "{s:#?}");
    assert_eq!(value(&s, "sealtls_keyd_store_info", &[("store", "sealed-file")]), 1.0, "{s:#?}");
    assert!(value(&s, "sealtls_keyd_certificate_expiry_seconds", &[("domain", "a.test")]) > 360.0 * 86_400.0, "{s:#?}");
    // The keyless server's side: its signatures, and the certificate it serves now.
    let s = samples(&get(&status, "/metrics").1);
    assert!(value(&s, "sealtls_keyless_sign_duration_seconds_count", &[]) >= handshakes as f64, "{s:#?}");
    let report: serde_json::Value = serde_json::from_str(&get(&status, "/_status").1).unwrap();
    assert_eq!(report["listeners"][0]["mode"], "keyless");
    assert_eq!(report["listeners"][0]["certificates"][0]["subject"], "CN=a.test", "{report:#}");
    assert_eq!(report["listeners"][0]["keyd"]["healthy"], true, "{report:#}");

    // keyd gone: unhealthy, with the reason; keyd back on the same socket: healthy again.
    let socket = kd.addr.clone();
    drop(kd);
    let body = health_becomes(&status, 503);
    assert!(body.contains(&format!("keyd at unix:{socket} does not answer")), "{body}");
    let kd = keyd(dir.path(), &[]);
    assert_eq!(kd.addr, socket);
    assert_eq!(health_becomes(&status, 200), "ok\n");
}

/// `up --status` shows every service on one page; `--keyd-status` gives its keyd child its own.
#[test]
fn up_shows_all_its_services_on_one_status_page() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let (echo, console, keyless, tunnel) = (common::free_port(), common::free_port(), common::free_port(), common::free_port());
    let config = format!(
        "[tls]\nsrv_cert_file = \"sealtls-data/echo-localhost.pem\"\nsrv_key_file = \"sealtls-data/echo-localhost.key\"\nca_cert_file = \"sealtls-data/ca.pem\"\n\
         [echo]\nlisten = \"127.0.0.1:{echo}\"\n[console]\nlisten = \"127.0.0.1:{console}\"\n[offload]\nsocket = \"offload.sock\"\n[keyless]\nlisten = \"127.0.0.1:{keyless}\"\n[keyd]\nsocket = \"keyd.sock\"\n\
         [[tunnel]]\nlisten = \"127.0.0.1:{tunnel}\"\ntarget = \"127.0.0.1:{echo}\"\nserver_name = \"localhost\"\nca_file = \"sealtls-data/ca.pem\"\n"
    );
    std::fs::write(d.join("sealtls.toml"), config).unwrap();
    let keyd_status = d.join("keyd-status.sock");
    let mut up = sealtls()
        .current_dir(d)
        .args(["up", "--device-key", d.join("device.key").to_str().unwrap(), "--status", "127.0.0.1:0"])
        .args(["--keyd-status", &format!("unix:{}", keyd_status.display())])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = common::collect(up.stderr.take().unwrap());
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        let text = log.lock().unwrap().clone();
        if let Some(line) = text.lines().find(|l| l.contains("status listen=127.0.0.1:")) {
            break logged_port(line, "status listen");
        }
        assert!(Instant::now() < deadline && up.try_wait().unwrap().is_none(), "up did not start its status listener:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let (code, body) = get(&status, "/_status");
    assert_eq!(code, 200, "{body}");
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    let modes: Vec<&str> = report["listeners"].as_array().unwrap().iter().map(|l| l["mode"].as_str().unwrap()).collect();
    assert_eq!(modes, ["echo", "offload", "keyless", "tunnel", "console", "keyd"], "{body}");
    assert_eq!(report["listeners"][0]["address"], format!("127.0.0.1:{echo}"));
    let served = report["listeners"][0]["certificates"][0]["sha256"].as_str().unwrap().to_uppercase();
    assert_eq!(served, fingerprint(&d.join("sealtls-data/echo-localhost.pem")), "{body}");
    assert_eq!(health_becomes(&status, 200), "ok\n");
    // One connection to the echo server through the offload daemon, counted by both.
    let o = offload_send(&d.join("offload.sock"), &format!("localhost:{echo}"), "hi");
    assert!(o.status.success(), "{}", text(&o));
    let echo_listener = format!("127.0.0.1:{echo}");
    let s = scrape_until(&status, |s| {
        value(s, "sealtls_tls_connections_open", &[("listener", &echo_listener)]) == 0.0
            && value(s, "sealtls_offload_slots_in_use", &[]) == 0.0
    });
    assert_eq!(value(&s, "sealtls_tls_handshakes_total", &[("listener", &echo_listener), ("result", "ok")]), 1.0, "{s:#?}");
    assert_eq!(value(&s, "sealtls_tls_received_bytes_total", &[("listener", &echo_listener)]), 3.0, "{s:#?}");
    for op in ["connect", "handshake"] {
        assert_eq!(value(&s, "sealtls_offload_operations_total", &[("operation", op), ("code", "OS_SUCCESS")]), 1.0, "{op}: {s:#?}");
    }
    assert_eq!(value(&s, "sealtls_offload_slots_in_use", &[]), 0.0, "{s:#?}");
    assert!(s.iter().any(|x| x["name"] == "sealtls_keyless_requests_in_flight"), "{s:#?}");

    // The [[tunnel]] table counts on the same page: one connection through it to the echo server.
    let mut local = std::net::TcpStream::connect(("127.0.0.1", tunnel)).unwrap();
    local.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    std::io::Write::write_all(&mut local, b"through").unwrap();
    local.shutdown(std::net::Shutdown::Write).unwrap();
    let mut back = Vec::new();
    let _ = std::io::Read::read_to_end(&mut local, &mut back);
    assert_eq!(back, b"through");
    let tunnel_listener = format!("127.0.0.1:{tunnel}");
    let s = scrape_until(&status, |s| value(s, "sealtls_tls_received_bytes_total", &[("listener", &tunnel_listener)]) == 7.0);
    assert_eq!(value(&s, "sealtls_tls_handshakes_total", &[("listener", &tunnel_listener), ("result", "ok")]), 1.0, "{s:#?}");
    assert_eq!(value(&s, "sealtls_tls_received_bytes_total", &[("listener", &tunnel_listener)]), 7.0, "{s:#?}");

    // keyd's own page, on its Unix socket: up provisioned the development key through it.
    let o =
        run(Command::new("curl").args(["-s", "--max-time", "10", "--unix-socket", keyd_status.to_str().unwrap(), "http://keyd/metrics"]));
    let s = samples(&String::from_utf8_lossy(&o.stdout));
    assert_eq!(value(&s, "sealtls_keyd_requests_total", &[("operation", "PUT"), ("result", "ok")]), 1.0, "{s:#?}");
    assert_eq!(value(&s, "sealtls_keyd_keys", &[("state", "usable")]), 1.0, "{s:#?}");
    let _ = up.kill();
    let _ = up.wait();
}
