//! `sealtls serve --target ... --proxy-protocol v2` against real peers:
//! nginx and haproxy must see the client's own address and port, and a raw
//! listener checks every TLV. curl is the client; its `%{local_port}` is the
//! port the target must report.
mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;

/// A program from a Debian package; the test fails, naming the package, without it.
fn installed(program: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{program} is not installed: install the Debian package `{package}` (scripts/test installs it)"))
}

/// A peer process, killed on drop.
struct Peer {
    child: Child,
    name: &'static str,
    log: PathBuf,
}

impl Peer {
    fn start(name: &'static str, cmd: &mut Command, port: u16, log: PathBuf) -> Peer {
        let out = std::fs::File::create(&log).unwrap();
        let child = cmd.stdin(Stdio::null()).stdout(out.try_clone().unwrap()).stderr(out).spawn().expect("spawn peer");
        let mut peer = Peer { child, name, log };
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = peer.child.try_wait().unwrap() {
                panic!("{name} exited ({status}): {}", peer.log());
            }
            assert!(Instant::now() < deadline, "{name} did not listen on {port}: {}", peer.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        peer
    }

    fn log(&self) -> String {
        format!("{} log:\n{}", self.name, std::fs::read_to_string(&self.log).unwrap_or_default())
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// nginx in `dir`, alone in one process, answering with the PROXY header's
/// source address and port.
fn nginx(dir: &Path) -> (Peer, u16) {
    let bin = installed("nginx", "nginx");
    let port = free_port();
    let d = dir.display();
    let conf = format!(
        "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log;\nevents {{ worker_connections 64; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n\
         \x20 uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  server {{\n    listen 127.0.0.1:{port} proxy_protocol;\n\
         \x20   default_type text/plain;\n    return 200 \"$proxy_protocol_addr $proxy_protocol_port\\n\";\n  }}\n}}\n"
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let mut cmd = Command::new(bin);
    cmd.arg("-p").arg(format!("{d}/")).arg("-c").arg(dir.join("nginx.conf")).arg("-e").arg(dir.join("nginx-error.log"));
    (Peer::start("nginx", &mut cmd, port, dir.join("nginx.out")), port)
}

/// haproxy in the foreground, answering with the source address and port
/// it took from the PROXY header, and the authority TLV.
fn haproxy(dir: &Path) -> (Peer, u16) {
    let bin = installed("haproxy", "haproxy");
    let port = free_port();
    let conf = format!(
        "defaults\n  mode http\n  timeout connect 5s\n  timeout client 10s\n  timeout server 10s\n\
         frontend fe\n  bind 127.0.0.1:{port} accept-proxy\n\
         \x20 http-request return status 200 content-type text/plain lf-string \"%[src] %[src_port] %[fc_pp_authority]\\n\"\n"
    );
    std::fs::write(dir.join("haproxy.cfg"), conf).unwrap();
    let mut cmd = Command::new(bin);
    cmd.arg("-db").arg("-f").arg(dir.join("haproxy.cfg"));
    (Peer::start("haproxy", &mut cmd, port, dir.join("haproxy.out")), port)
}

/// `curl https://localhost:PORT/` (or `url_host` instead of localhost)
/// trusting the dev CA; returns the body and curl's own address and port.
fn curl(dir: &Path, url_host: &str, port: &str, extra: &[&str]) -> (String, String) {
    let url = format!("https://{url_host}:{port}/");
    let o = run(Command::new(installed("curl", "curl"))
        .args(["-sS", "--max-time", "20", "--cacert", &p(dir, "ca.pem")])
        .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
        .args(["-w", "\n%{local_ip} %{local_port}"])
        .args(extra)
        .arg(url));
    assert!(o.status.success(), "curl: {}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let (body, local) = out.rsplit_once('\n').unwrap();
    (body.trim_end().to_owned(), local.to_owned())
}

fn serve_to(dir: &Path, target_port: u16, extra: &[&str]) -> Server {
    let (cert, key, target) = (p(dir, "localhost.pem"), p(dir, "localhost.key"), format!("127.0.0.1:{target_port}"));
    let args = [&["--cert", cert.as_str(), "--key", &key, "--target", &target], extra].concat();
    Server::start(&args)
}

#[test]
fn nginx_sees_the_clients_address_and_port() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dev_pki(dir.path());
    let (nginx, nginx_port) = nginx(&dir);
    let serve = serve_to(&dir, nginx_port, &["--proxy-protocol", "v2"]);
    let (body, client) = curl(&dir, "localhost", serve.port(), &[]);
    assert_eq!(body, client, "nginx's $proxy_protocol_addr $proxy_protocol_port\n{}\n{}", serve.log(), nginx.log());
    assert!(serve.log().contains(&format!("peer={}", client.replace(' ', ":"))), "{}", serve.log());
}

#[test]
fn haproxy_sees_the_clients_address_port_and_server_name() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dev_pki(dir.path());
    let (haproxy, haproxy_port) = haproxy(&dir);
    let serve = serve_to(&dir, haproxy_port, &["--proxy-protocol", "v2", "--alpn", "http/1.1"]);
    let (body, client) = curl(&dir, "localhost", serve.port(), &["--http1.1"]);
    assert_eq!(body, format!("{client} localhost"), "haproxy's src, src_port, fc_pp_authority\n{}\n{}", serve.log(), haproxy.log());
    // Without a PROXY header haproxy refuses the connection: the header is what it read.
    let plain = serve_to(&dir, haproxy_port, &[]);
    let o = run(Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert", &p(&dir, "ca.pem")])
        .arg(format!("https://127.0.0.1:{}/", plain.port())));
    assert!(!o.status.success(), "haproxy answered without a PROXY header: {}", text(&o));
}

/// What a target read before the client's bytes.
struct Header {
    ver_cmd: u8,
    family: u8,
    src: SocketAddr,
    dst: SocketAddr,
    tlvs: Vec<(u8, Vec<u8>)>,
}

impl Header {
    fn tlv(&self, kind: u8) -> Option<&[u8]> {
        self.tlvs.iter().find(|t| t.0 == kind).map(|t| t.1.as_slice())
    }

    /// The SSL TLV: client bits, verify, and its sub-TLVs.
    fn ssl(&self) -> (u8, u32, Vec<(u8, Vec<u8>)>) {
        let v = self.tlv(0x20).expect("PP2_TYPE_SSL");
        (v[0], u32::from_be_bytes(v[1..5].try_into().unwrap()), tlvs(&v[5..]))
    }
}

fn tlvs(mut v: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while !v.is_empty() {
        assert!(v.len() >= 3, "truncated TLV: {v:?}");
        let len = u16::from_be_bytes([v[1], v[2]]) as usize;
        out.push((v[0], v[3..3 + len].to_vec()));
        v = &v[3 + len..];
    }
    out
}

fn sub(subs: &[(u8, Vec<u8>)], kind: u8) -> Option<String> {
    subs.iter().find(|t| t.0 == kind).map(|t| String::from_utf8(t.1.clone()).unwrap())
}

/// A target that reads one PROXY v2 header (IPv4 addresses), then the HTTP
/// request behind it, answers it and sends back what it read.
fn raw_target() -> (u16, mpsc::Receiver<(Header, String)>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut fixed = [0u8; 16];
        conn.read_exact(&mut fixed).unwrap();
        assert_eq!(&fixed[..12], b"\r\n\r\n\0\r\nQUIT\n", "PROXY v2 signature");
        let mut rest = vec![0u8; u16::from_be_bytes([fixed[14], fixed[15]]) as usize];
        conn.read_exact(&mut rest).unwrap();
        assert_eq!(fixed[13], 0x11, "TCP over IPv4");
        let addr = |ip: &[u8], port: &[u8]| SocketAddr::from(([ip[0], ip[1], ip[2], ip[3]], u16::from_be_bytes([port[0], port[1]])));
        let header = Header {
            ver_cmd: fixed[12],
            family: fixed[13],
            src: addr(&rest[0..4], &rest[8..10]),
            dst: addr(&rest[4..8], &rest[10..12]),
            tlvs: tlvs(&rest[12..]),
        };
        // The client's request follows, untouched.
        let mut request = Vec::new();
        let mut byte = [0u8; 1];
        while !request.ends_with(b"\r\n\r\n") && conn.read(&mut byte).unwrap() == 1 {
            request.push(byte[0]);
        }
        conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n").unwrap();
        let _ = tx.send((header, String::from_utf8_lossy(&request).into_owned()));
    });
    (port, rx)
}

#[test]
fn the_header_carries_sni_alpn_tls_facts_and_the_client_cn() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dev_pki(dir.path());
    let (target_port, read) = raw_target();
    let serve = serve_to(&dir, target_port, &["--ca", &p(&dir, "ca.pem"), "--alpn", "h2,http/1.1", "--proxy-protocol", "v2"]);
    let (body, client) =
        curl(&dir, "localhost", serve.port(), &["--http1.1", "--cert", &p(&dir, "alice.pem"), "--key", &p(&dir, "alice.key")]);
    assert_eq!(body, "ok");
    let (h, request) = read.recv_timeout(Duration::from_secs(20)).unwrap();
    assert!(request.starts_with("GET / HTTP/1.1\r\n"), "the client's bytes follow the header: {request:?}");
    assert_eq!((h.ver_cmd, h.family), (0x21, 0x11), "v2 PROXY, TCP over IPv4");
    assert_eq!(h.src.to_string(), client.replace(' ', ":"));
    assert_eq!(h.dst.to_string(), serve.addr, "the destination is the listener");
    assert_eq!(h.tlv(0x01), Some(&b"http/1.1"[..]), "PP2_TYPE_ALPN");
    assert_eq!(h.tlv(0x02), Some(&b"localhost"[..]), "PP2_TYPE_AUTHORITY");
    let (client_bits, verify, subs) = h.ssl();
    assert_eq!(client_bits, 0x07, "PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS");
    assert_eq!(verify, 0, "the certificate was verified");
    assert_eq!(sub(&subs, 0x21).as_deref(), Some("TLSv1.3"));
    assert_eq!(sub(&subs, 0x22).as_deref(), Some("alice"), "PP2_SUBTYPE_SSL_CN");
    let cipher = sub(&subs, 0x23).unwrap();
    assert!(["TLS_AES_256_GCM_SHA384", "TLS_AES_128_GCM_SHA256", "TLS_CHACHA20_POLY1305_SHA256"].contains(&cipher.as_str()), "{cipher}");
    let log = serve.wait_log("session ended");
    assert!(log.contains("alpn=http/1.1"), "the negotiated protocol is logged: {log}");
}

#[test]
fn without_sni_alpn_or_client_certificate_only_the_ssl_tlv_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dev_pki(dir.path());
    let (target_port, read) = raw_target();
    let serve =
        serve_to(&dir, target_port, &["--ca", &p(&dir, "ca.pem"), "--client-auth", "optional", "--tls", "1.2", "--proxy-protocol", "v2"]);
    // curl sends no SNI for an IP address.
    let (body, client) = curl(&dir, "127.0.0.1", serve.port(), &["--http1.1"]);
    assert_eq!(body, "ok");
    let (h, _) = read.recv_timeout(Duration::from_secs(20)).unwrap();
    assert_eq!(h.src.to_string(), client.replace(' ', ":"));
    assert_eq!(h.tlvs.iter().map(|t| t.0).collect::<Vec<_>>(), [0x20], "no ALPN or authority TLV");
    let (client_bits, verify, subs) = h.ssl();
    assert_eq!(client_bits, 0x01, "PP2_CLIENT_SSL only");
    assert_ne!(verify, 0, "no certificate was verified");
    assert_eq!(sub(&subs, 0x21).as_deref(), Some("TLSv1.2"));
    assert_eq!(sub(&subs, 0x22), None, "no CN without a certificate");
    assert!(sub(&subs, 0x23).unwrap().starts_with("TLS_ECDHE_ECDSA_WITH_"), "{subs:?}");
}

#[test]
fn proxy_protocol_needs_a_target_and_is_v2_only() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let o = run(sealtls().args(["serve", "--cert", &p(d, "x.pem"), "--key", &p(d, "x.key"), "--proxy-protocol", "v2"]));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("--target"), "{}", text(&o));
    let o = run(sealtls().args(["serve", "--cert", "x.pem", "--key", "x.key", "--target", "127.0.0.1:9", "--proxy-protocol", "v1"]));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("v1 is not offered"), "{}", text(&o));
}
