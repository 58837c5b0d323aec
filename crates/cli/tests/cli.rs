//! The `sealtls` binary against real peers: openssl, gnutls-cli, Python's
//! ssl module, and the certificate recipes of the seed guides.
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::*;

// ---------------------------------------------------------------- interop

#[test]
fn openssl_s_client_echoes_over_tls12_and_tls13_with_verification() {
    let tmp = tempfile::tempdir().unwrap();
    let d = dev_pki(tmp.path());
    let server = Server::start(&["--cert", &p(&d, "localhost.pem"), "--key", &p(&d, "localhost.key"), "--ca", &p(&d, "ca.pem")]);
    for version in ["-tls1_2", "-tls1_3"] {
        let line = format!("hello over {version}");
        let out = interactive_echo(
            Command::new("openssl")
                .args(["s_client", "-connect", &server.addr, version, "-verify_return_error", "-verify_hostname", "localhost"])
                .args(["-CAfile", &p(&d, "ca.pem"), "-cert", &p(&d, "alice.pem"), "-key", &p(&d, "alice.key")]),
            &line,
        );
        assert_eq!(echo_line_count(&out, &line), 1, "{version}: {out}");
        assert!(out.contains("Verification: OK") || out.contains("Verify return code: 0"), "{out}");
    }
    let log = server.wait_log("client=CN=alice");
    assert!(log.contains("version=TLSv1.2") && log.contains("version=TLSv1.3"), "{log}");
}

#[test]
fn gnutls_cli_echoes() {
    let tmp = tempfile::tempdir().unwrap();
    let d = dev_pki(tmp.path());
    let server = Server::start(&["--cert", &p(&d, "localhost.pem"), "--key", &p(&d, "localhost.key"), "--ca", &p(&d, "ca.pem")]);
    let out = interactive_echo(
        Command::new("gnutls-cli")
            .args(["--port", server.port(), "127.0.0.1", "--sni-hostname", "localhost", "--verify-hostname", "localhost"])
            .args(["--x509cafile", &p(&d, "ca.pem"), "--x509certfile", &p(&d, "alice.pem"), "--x509keyfile", &p(&d, "alice.key")]),
        "hello gnutls",
    );
    assert_eq!(echo_line_count(&out, "hello gnutls"), 1, "{out}");
}

#[test]
fn python_ssl_round_trips() {
    let tmp = tempfile::tempdir().unwrap();
    let d = dev_pki(tmp.path());
    let server = Server::start(&["--cert", &p(&d, "localhost.pem"), "--key", &p(&d, "localhost.key"), "--ca", &p(&d, "ca.pem")]);
    let script = r#"
import socket, ssl, sys
ca, cert, key, port = sys.argv[1:5]
ctx = ssl.create_default_context(cafile=ca)
ctx.load_cert_chain(cert, key)
with socket.create_connection(("127.0.0.1", int(port)), timeout=10) as s:
    with ctx.wrap_socket(s, server_hostname="localhost") as t:
        t.sendall(b"hello python")
        got = b""
        while len(got) < 12:
            got += t.recv(64)
        print(t.version(), got.decode())
"#;
    let o = run(Command::new("python3").args(["-c", script, &p(&d, "ca.pem"), &p(&d, "alice.pem"), &p(&d, "alice.key"), server.port()]));
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "TLSv1.3 hello python");
}

/// `connect --send TEXT` sends TEXT and one newline, none more when TEXT
/// ends with one; the echo server returns exactly those bytes.
#[test]
fn connect_send_appends_one_newline() {
    let tmp = tempfile::tempdir().unwrap();
    let d = dev_pki(tmp.path());
    let server = Server::start(&["--cert", &p(&d, "localhost.pem"), "--key", &p(&d, "localhost.key"), "--client-auth", "none"]);
    for (sent, echoed) in [("hello", "hello\n"), ("hello\n", "hello\n"), ("two\nlines", "two\nlines\n"), ("", "\n")] {
        let o = run(sealtls().args(["connect", &server.addr, "--server-name", "localhost", "--ca", &p(&d, "ca.pem"), "--send", sent]));
        assert!(o.status.success(), "{}", text(&o));
        assert_eq!(String::from_utf8_lossy(&o.stdout), echoed, "--send {sent:?}: {}", text(&o));
    }
}

/// `openssl s_server` with its own certificate; our client verifies and echoes nothing back (s_server is not an echo),
/// so we check the negotiated session and that our text reached the server.
#[test]
fn our_client_against_openssl_s_server() {
    let tmp = tempfile::tempdir().unwrap();
    let d = dev_pki(tmp.path());
    let s_server = OpensslServer::start(&d, &["-cert", "localhost.pem", "-key", "localhost.key"]);
    for version in ["1.2", "1.3"] {
        let o = run(sealtls().args([
            "connect",
            &format!("127.0.0.1:{}", s_server.port),
            "--server-name",
            "localhost",
            "--ca",
            &p(&d, "ca.pem"),
            "--tls",
            version,
            "--send",
            "to-openssl",
            "--json",
        ]));
        assert!(o.status.success(), "{}", text(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["session"]["version"], if version == "1.2" { "TLSv1.2" } else { "TLSv1.3" });
        assert_eq!(v["session"]["peer_chain"][0], "CN=localhost");
    }
    let out = s_server.wait_output("to-openssl");
    assert!(out.contains("to-openssl"), "s_server output: {out}");
}

// ---------------------------------------------------------------- seed 003: mutual TLS with openssl-made RSA 4096 certificates

const CA_CONF: &str = "[ ca ]\ndefault_ca = CA_default\n[ CA_default ]\ndir = .\ncertificate = $dir/ca_cert.pem\nprivate_key = $dir/ca_key.pem\n[ req ]\ndefault_bits = 4096\nprompt = no\ndefault_md = sha256\ndistinguished_name = dn\nx509_extensions = v3_ca\n[ dn ]\nCN = My Test CA\n[ v3_ca ]\n";
const CERT_CONF: &str = "[ req ]\ndefault_bits = 4096\nprompt = no\ndefault_md = sha256\ndistinguished_name = dn\nreq_extensions = req_ext\n[ dn ]\nCN = localhost\n[ req_ext ]\nsubjectAltName = @alt_names\n[ alt_names ]\nDNS.1 = localhost\n";

/// The seed's commands, verbatim, for a CA and `prefix` (server, client, bad).
fn seed003_pki(dir: &Path) {
    std::fs::write(dir.join("ca.conf"), CA_CONF).unwrap();
    std::fs::write(dir.join("cert.conf"), CERT_CONF).unwrap();
    sh(dir, "openssl genrsa -out ca_key.pem 4096 2>/dev/null
openssl req -new -x509 -days 3650 -config ca.conf -key ca_key.pem -out ca_cert.pem
for n in server client; do
  openssl genrsa -out ${n}_key.pem 4096 2>/dev/null
  openssl req -new -key ${n}_key.pem -out ${n}_csr.pem -config cert.conf
  openssl x509 -req -days 365 -in ${n}_csr.pem -CA ca_cert.pem -CAkey ca_key.pem -CAcreateserial -out ${n}_cert.pem -extfile cert.conf -extensions req_ext 2>/dev/null
done
openssl genrsa -out bad_ca_key.pem 4096 2>/dev/null
openssl req -new -x509 -days 3650 -config ca.conf -key bad_ca_key.pem -out bad_ca_cert.pem
openssl genrsa -out bad_key.pem 4096 2>/dev/null
openssl req -new -key bad_key.pem -out bad_csr.pem -config cert.conf
openssl x509 -req -days 365 -in bad_csr.pem -CA bad_ca_cert.pem -CAkey bad_ca_key.pem -CAcreateserial -out bad_cert.pem -extfile cert.conf -extensions req_ext 2>/dev/null");
}

fn seed_client(d: &Path, server: &Server, cert: &str, key: &str) -> Output {
    run(sealtls().args([
        "connect",
        "--server",
        "localhost",
        "-p",
        server.port(),
        "--ca-certificate",
        &p(d, "ca_cert.pem"),
        "--certificate",
        &p(d, cert),
        "--private-key",
        &p(d, key),
    ]))
}

#[test]
fn seed003_mutual_tls_scenarios() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    seed003_pki(d);
    let good = Server::start(&[
        "--ca-certificate",
        &p(d, "ca_cert.pem"),
        "--certificate",
        &p(d, "server_cert.pem"),
        "--private-key",
        &p(d, "server_key.pem"),
        "--mode",
        "handshake",
    ]);

    // Success: both sides verify.
    let o = seed_client(d, &good, "client_cert.pem", "client_key.pem");
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("verification        OK"), "{}", text(&o));
    assert!(good.wait_log("client=CN=localhost").contains("client=CN=localhost"));

    // A client certificate from an untrusted CA with the same name: refused by the server.
    let o = seed_client(d, &good, "bad_cert.pem", "bad_key.pem");
    assert_eq!(o.status.code(), Some(6), "{}", text(&o));
    assert!(text(&o).contains("rejected our client certificate (alert "), "{}", text(&o));
    let log = good.wait_log("not the trusted CA of the same name");
    assert!(log.contains("handshake failed") && log.contains("not the trusted CA of the same name"), "{log}");

    // No client certificate at all.
    let o = run(sealtls().args(["connect", "--server", "localhost", "-p", good.port(), "--ca", &p(d, "ca_cert.pem")]));
    assert_eq!(o.status.code(), Some(6), "{}", text(&o));
    assert!(text(&o).contains("requires a client certificate and none was sent"), "{}", text(&o));
    assert!(good.wait_log("sent no certificate").contains("sent no certificate"));

    // A server certificate from the untrusted CA: refused by the client.
    let bad = Server::start(&[
        "--ca-certificate",
        &p(d, "bad_ca_cert.pem"),
        "--certificate",
        &p(d, "bad_cert.pem"),
        "--private-key",
        &p(d, "bad_key.pem"),
        "--mode",
        "handshake",
    ]);
    let o = seed_client(d, &bad, "client_cert.pem", "client_key.pem");
    assert_eq!(o.status.code(), Some(5), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("not the trusted CA of the same name") && t.contains("fix: two different CAs"), "{t}");
}

// ---------------------------------------------------------------- seed 000: the guide's certificates as written

#[test]
fn seed000_guide_certificates() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    seed000_pki(d);

    // What OpenSSL 3 really made: version 1, no extensions.
    let o = run(sealtls().args(["inspect", "--json", &p(d, "server.pem"), &p(d, "server.key")]));
    assert!(o.status.success(), "{}", text(&o));
    let items: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(items[0]["version"], 1);
    assert_eq!(items[0]["has_san_extension"], false);
    assert!(items[1]["matches"].as_str().unwrap().contains("CN=*"));

    let mut server = Server::start(&["--cert", &p(d, "server.pem"), "--key", &p(d, "server.key")]);
    assert!(server.log().contains("clients will refuse this certificate: X.509 version 1"), "{}", server.log());

    // openssl s_client -tls1_2 echoes through it.
    let out = interactive_echo(
        Command::new("openssl").args(["s_client", "-connect", &server.addr, "-tls1_2", "-CAfile", &p(d, "RootCA.pem")]),
        "bitvisor echo",
    );
    assert_eq!(echo_line_count(&out, "bitvisor echo"), 1, "{out}");
    assert!(out.contains("Protocol  : TLSv1.2"), "{out}");

    // Our client refuses that certificate and explains why.
    let o = run(sealtls().args(["connect", &server.addr, "--ca", &p(d, "RootCA.pem"), "--send", "x"]));
    assert_eq!(o.status.code(), Some(5), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("is X.509 version 1") && t.contains("fix: OpenSSL makes version 1 certificates"), "{t}");
    server.assert_alive();
}

// ---------------------------------------------------------------- bad input

#[test]
fn hostile_bytes_do_not_stop_the_server() {
    let tmp = tempfile::tempdir().unwrap();
    let d = dev_pki(tmp.path());
    let mut server = Server::start(&["--cert", &p(&d, "localhost.pem"), "--key", &p(&d, "localhost.key"), "--client-auth", "none"]);
    let garbage: [&[u8]; 3] = [
        b"\x00\xff\x13\x37garbage garbage garbage",
        // A ClientHello record header promising 512 bytes, then 10 of them and a close.
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\x00\x00\x00\x00",
        b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
    ];
    for bytes in garbage {
        let mut s = TcpStream::connect(&server.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(bytes).unwrap();
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
    }
    let log = server.wait_log("does not speak TLS");
    assert!(log.contains("does not speak TLS"), "{log}");
    server.assert_alive();
    let o = run(sealtls().args(["connect", &server.addr, "--server-name", "localhost", "--ca", &p(&d, "ca.pem"), "--send", "still here"]));
    assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).contains("still here"), "{}", text(&o));
}

#[test]
fn bad_files_are_refused_with_their_name_and_a_fix() {
    let tmp = tempfile::tempdir().unwrap();
    let d = dev_pki(tmp.path());
    let junk = p(&d, "junk.pem");
    std::fs::write(&junk, "-----BEGIN CERTIFICATE-----\nnot base64 at all!!\n-----END CERTIFICATE-----\n").unwrap();
    let enc = p(&d, "enc.key");
    sh(&d, "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -aes256 -pass pass:secret -out enc.key 2>/dev/null; chmod 600 enc.key");
    let open = p(&d, "open.key");
    std::fs::copy(d.join("localhost.key"), &open).unwrap();
    sh(&d, "chmod 644 open.key");
    let cert = p(&d, "localhost.pem");
    let cases = [
        (junk.clone(), p(&d, "localhost.key"), "junk.pem: damaged PEM"),
        (cert.clone(), enc.clone(), "encrypted with a passphrase"),
        (cert.clone(), p(&d, "missing.key"), "missing.key: cannot read"),
        (cert.clone(), open.clone(), "chmod 600"),
        (cert.clone(), p(&d, "alice.key"), "does not belong to the certificate"),
        (p(&d, "localhost.key"), p(&d, "localhost.key"), "were the certificate and key files swapped"),
    ];
    for (c, k, expected) in cases {
        let o = run(sealtls().args(["serve", "--listen", "127.0.0.1:0", "--cert", &c, "--key", &k]));
        assert_eq!(o.status.code(), Some(3), "{expected}: {}", text(&o));
        let t = text(&o);
        assert!(t.contains(expected) && t.contains("fix:"), "{expected}: {t}");
    }
}

#[test]
fn pki_refuses_to_overwrite_and_writes_private_keys_0600() {
    let tmp = tempfile::tempdir().unwrap();
    let d = dev_pki(tmp.path());
    use std::os::unix::fs::PermissionsExt;
    for key in ["ca.key", "localhost.key", "alice.key"] {
        assert_eq!(std::fs::metadata(d.join(key)).unwrap().permissions().mode() & 0o777, 0o600, "{key}");
    }
    let before = std::fs::read(d.join("ca.key")).unwrap();
    let o = run(sealtls().args(["pki", "init", "--dir", d.to_str().unwrap()]));
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(text(&o).contains("--force"), "{}", text(&o));
    assert_eq!(std::fs::read(d.join("ca.key")).unwrap(), before);
    for kt in ["ecdsa-p384", "ed25519", "rsa2048"] {
        let o = run(sealtls().args([
            "pki",
            "issue",
            "server",
            "--dir",
            d.to_str().unwrap(),
            "--name",
            &format!("s-{kt}"),
            "--key-type",
            kt,
            "--san",
            "localhost",
        ]));
        assert!(o.status.success(), "{kt}: {}", text(&o));
    }
}

#[test]
fn each_new_ca_gets_its_own_default_name() {
    let tmp = tempfile::tempdir().unwrap();
    let subject = |name: &str| {
        let dir = tmp.path().join(name);
        let o = run(sealtls().args(["pki", "init", "--dir", dir.to_str().unwrap()]));
        assert!(o.status.success(), "{}", text(&o));
        let o = run(sealtls().args(["inspect", "--json", &p(&dir, "ca.pem")]));
        let items: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        items[0]["subject"].as_str().unwrap().to_owned()
    };
    let (a, b) = (subject("one"), subject("two"));
    assert!(a.starts_with("CN=sealtls development CA ") && b.starts_with("CN=sealtls development CA "), "{a} {b}");
    assert_ne!(a, b, "two development CAs must not look alike");
    let dir = tmp.path().join("named");
    let o = run(sealtls().args(["pki", "init", "--dir", dir.to_str().unwrap(), "--cn", "Lab CA"]));
    assert!(o.status.success(), "{}", text(&o));
    let o = run(sealtls().args(["inspect", &p(&dir, "ca.pem")]));
    assert!(text(&o).contains("CN=Lab CA"), "{}", text(&o));
    let help = text(&run(sealtls().args(["pki", "init", "--help"])));
    assert!(help.contains("sealtls development CA") && help.contains("random"), "{help}");
}

#[test]
fn send_moves_a_file_through_echo_and_sink() {
    let tmp = tempfile::tempdir().unwrap();
    let d = dev_pki(tmp.path());
    let file = p(&d, "payload.bin");
    let data: Vec<u8> = (0..8 * 1024 * 1024u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    std::fs::write(&file, &data).unwrap();
    for mode in ["echo", "sink"] {
        let server =
            Server::start(&["--cert", &p(&d, "localhost.pem"), "--key", &p(&d, "localhost.key"), "--client-auth", "none", "--mode", mode]);
        let o = run(sealtls().args([
            "send",
            &server.addr,
            "--server-name",
            "localhost",
            "--ca",
            &p(&d, "ca.pem"),
            "--file",
            &file,
            "--expect",
            mode,
            "--json",
        ]));
        assert!(o.status.success(), "{mode}: {}", text(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["transfer"]["bytes_confirmed"], data.len() as u64, "{mode}");
    }
    // A sink is not an echo: asking for an echo from it must fail, not pass.
    let server =
        Server::start(&["--cert", &p(&d, "localhost.pem"), "--key", &p(&d, "localhost.key"), "--client-auth", "none", "--mode", "sink"]);
    let o = run(sealtls().args([
        "send",
        &server.addr,
        "--server-name",
        "localhost",
        "--ca",
        &p(&d, "ca.pem"),
        "--file",
        &file,
        "--expect",
        "echo",
    ]));
    assert_eq!(o.status.code(), Some(8), "{}", text(&o));
}

#[test]
fn a_misspelt_benchmark_server_is_refused_with_the_names_there_are() {
    let out = sealtls().args(["bench", "proxy", "--proxies", "sealtls,ngnix"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("ngnix") && err.contains("nginx") && err.contains("sealtls-keyd"), "{err}");
}

/// Limits that would let nothing through are refused before anything starts,
/// as is a connect limit for a server that connects nowhere.
#[test]
fn limits_that_let_nothing_through_are_refused() {
    for args in [
        &["serve", "--handshake-timeout", "0"][..],
        &["serve", "--max-connections", "0"],
        &["serve", "--target", "127.0.0.1:9", "--connect-timeout", "0"],
        &["tunnel", "--listen", "127.0.0.1:0", "--target", "127.0.0.1:9", "--ca", "ca.pem", "--connect-timeout", "0"],
        &["tunnel", "--listen", "127.0.0.1:0", "--target", "127.0.0.1:9", "--ca", "ca.pem", "--max-connections", "0"],
    ] {
        let o = run(sealtls().args(args));
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
        assert!(text(&o).contains("give at least 1"), "{args:?}: {}", text(&o));
    }
    // Times a clock cannot add are refused too, rather than panicking at the first connection.
    let huge = "18446744073709551614";
    for args in [
        &["serve", "--idle-timeout", huge][..],
        &["keyd", "--frame-timeout", huge],
        &["offload", "--connect-timeout", huge],
        &["tunnel", "--listen", "127.0.0.1:0", "--target", "127.0.0.1:9", "--ca", "ca.pem", "--idle-timeout", huge],
    ] {
        let o = run(sealtls().args(args));
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
        assert!(text(&o).contains("give at most 31536000"), "{args:?}: {}", text(&o));
    }
    let o = run(sealtls().args(["serve", "--connect-timeout", "5"]));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("--target"), "{}", text(&o));
    let o = run(sealtls().args(["tunnel", "--listen", "127.0.0.1:0", "--target", "127.0.0.1:0", "--ca", "ca.pem"]));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("`127.0.0.1:0` is not HOST:PORT"), "{}", text(&o));
}

/// A tunnel's help lists only what a tunnel uses: the keyd link, not the keyless server's cache.
#[test]
fn tunnel_help_offers_the_keyd_link_but_not_server_settings() {
    let help = text(&run(sealtls().args(["tunnel", "--help"])));
    assert!(help.contains("--keyd-cert") && help.contains("Our client certificate for keyd"), "{help}");
    assert!(!help.contains("--keyless-"), "{help}");
    let help = text(&run(sealtls().args(["serve", "--help"])));
    assert!(help.contains("--keyless-cache") && help.contains("--keyless-signing-threads"), "{help}");
}

/// `connect` ends when the server closes, even while its standard input
/// stays open (as `openssl s_client` does), instead of waiting for more input.
#[test]
fn connect_exits_when_the_server_closes_though_stdin_is_open() {
    let tmp = tempfile::tempdir().unwrap();
    let d = dev_pki(tmp.path());
    let server = Server::start(&["--cert", &p(&d, "localhost.pem"), "--key", &p(&d, "localhost.key"), "--idle-timeout", "1"]);
    let mut client = sealtls()
        .args(["connect", &server.addr, "--server-name", "localhost", "--ca", &p(&d, "ca.pem")])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _stdin_kept_open = client.stdin.take();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(status) = client.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = client.kill();
            panic!("connect still waits on its standard input after the server closed:\n{}", server.log());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    server.wait_log("within the idle timeout");
}

/// `pki` refuses bad values as usage errors before touching a file, and
/// `inspect` reads within a bound and survives a reader that stops early.
#[test]
fn pki_refuses_bad_values_and_inspect_reads_within_bounds() {
    let tmp = tempfile::tempdir().unwrap();
    let d = dev_pki(tmp.path());
    let dir = d.to_str().unwrap();
    for args in [
        &["pki", "init", "--dir", "never-made", "--days", "3000000"][..],
        &["pki", "init", "--dir", "never-made", "--days", "0"],
        &["pki", "issue", "server", "--dir", dir, "--name", "bad", "--san", "foo bar"],
        &["pki", "issue", "server", "--dir", dir, "--name", "bad", "--san", "300.1.1.1"],
        &["pki", "issue", "server", "--dir", dir, "--name", "a/b"],
    ] {
        let o = run(sealtls().current_dir(tmp.path()).args(args));
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
        assert!(!text(&o).contains("check the file"), "{args:?}: {}", text(&o));
    }
    assert!(!tmp.path().join("never-made").exists());
    assert!(!d.join("bad.pem").exists());

    let o = run(sealtls().args(["inspect", "/dev/zero"]));
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(text(&o).contains("larger than 4 MiB"), "{}", text(&o));
    // More than a pipe holds, so that the writer meets the closed pipe.
    let many = vec![format!("'{}'", p(&d, "ca.pem")); 300].join(" ");
    let script = format!("'{}' inspect {many} | head -c 1 >/dev/null; echo ${{PIPESTATUS[0]}}", env!("CARGO_BIN_EXE_sealtls"));
    let o = run(Command::new("bash").args(["-c", &script]));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "0", "{}", text(&o));
}

/// `serve` refuses a Unix socket to listen on, and leaves no socket file behind.
#[test]
fn serve_on_a_unix_socket_is_refused_without_leaving_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let d = dev_pki(tmp.path());
    let socket = tmp.path().join("serve.sock");
    let listen = format!("unix:{}", socket.display());
    let o = run(sealtls().args(["serve", "--cert", &p(&d, "localhost.pem"), "--key", &p(&d, "localhost.key"), "--listen", &listen]));
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(text(&o).contains("TCP only"), "{}", text(&o));
    assert!(!socket.exists(), "the refused socket was left behind");
}
