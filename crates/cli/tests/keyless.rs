//! Keyless TLS: `sealtls keyd` holding keys (sealed files or a SoftHSM2
//! token), `sealtls key` provisioning, and `sealtls serve --keyd` serving
//! by SNI to openssl s_client, with the failures the store must survive.
mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::custody::{key, keyd, pki, put, s_client, served, softhsm};
use common::{logged_port, p, run, sealtls, text, Server};

/// Both names served over 1.3 and 1.2 with their own certificate; an
/// unknown name gets unrecognized_name, no SNI gets handshake_failure,
/// and a good handshake still works after them.
fn serves_by_sni(server: &mut Server, ca: &Path) {
    for version in ["-tls1_3", "-tls1_2"] {
        for name in ["a.test", "b.test"] {
            let out = s_client(server.port(), Some(name), ca, version);
            assert!(served(&out, name), "{name} {version}: {out}");
        }
    }
    let out = s_client(server.port(), Some("c.test"), ca, "-tls1_3");
    assert!(out.contains("alert number 112") && !out.contains("subject="), "unknown name: {out}");
    let out = s_client(server.port(), None, ca, "-tls1_3");
    assert!(out.contains("alert number 40") && !out.contains("subject="), "no SNI: {out}");
    assert!(served(&s_client(server.port(), Some("a.test"), ca, "-tls1_3"), "a.test"));
    let log = server.wait_log("no server name");
    assert!(log.contains("server_name=\"c.test\"") && log.contains("keyd has no key for this name"), "{log}");
    assert!(log.contains("the client sent no server name (SNI)"), "{log}");
    server.assert_alive();
}

#[test]
fn keyless_server_picks_the_key_by_sni_and_refuses_unknown_names() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let kd = keyd(&dir.path().join("keyd"), &dir.path().join("secret/device.key"), &[]);
    put(&kd.addr, &pki, "a.test");
    put(&kd.addr, &pki, "b.test");
    let mut server = Server::start(&["--keyd", &format!("unix:{}", kd.addr)]);
    serves_by_sni(&mut server, &pki.join("ca.pem"));

    // The listing names both, with key type and expiry; keys are refused for the wrong certificate.
    let ls = text(&key(&kd.addr, &["ls", "--json"]));
    let rows: serde_json::Value = serde_json::from_str(ls.lines().next().unwrap()).unwrap_or_else(|e| panic!("{e}: {ls}"));
    assert_eq!(rows.as_array().unwrap().len(), 2, "{ls}");
    assert_eq!(rows[0]["domain"], "a.test");
    assert_eq!(rows[0]["key_type"], "ECDSA P-256");
    assert!(rows[0]["not_after"].as_i64().unwrap() > 0, "{ls}");
    let o = key(&kd.addr, &["put", "b.test", &p(&pki, "a.test.key"), "--cert", &p(&pki, "b.test.pem")]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(text(&o).contains("the key does not match the certificate"), "{}", text(&o));
    let o = key(&kd.addr, &["has", "a.test"]);
    assert!(o.status.success() && text(&o).contains("Key found"), "{}", text(&o));
    // --json for scripts, from every subcommand.
    let json = |args: &[&str]| -> serde_json::Value {
        let o = key(&kd.addr, args);
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{args:?}: {e}: {}", text(&o)))
    };
    assert_eq!(json(&["has", "a.test", "--json"]), serde_json::json!({"domain": "a.test", "found": true}));
    assert_eq!(json(&["rm", "a.test", "--json"]), serde_json::json!({"domain": "a.test", "removed": true}));
    let made = json(&["gen", "c.test", "--json"]);
    assert!(made["csr_pem"].as_str().unwrap().starts_with("-----BEGIN CERTIFICATE REQUEST-----"), "{made}");
    let o = key(&kd.addr, &["has", "a.test"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert_eq!(json(&["has", "a.test", "--json"])["found"], false);
    assert!(key(&kd.addr, &["rm", "c.test"]).status.success());
    assert!(text(&o).contains("Key not found"), "{}", text(&o));

    // Nothing in the data directory or the device secret is readable by others; no key is in the clear.
    for f in ["keyd", "keyd/keys", "secret/device.key"] {
        assert_eq!(std::fs::metadata(dir.path().join(f)).unwrap().permissions().mode() & 0o077, 0, "{f}");
    }
    let pem = std::fs::read_to_string(pki.join("b.test.key")).unwrap();
    let der: Vec<u8> = pem_body(&pem);
    for entry in std::fs::read_dir(dir.path().join("keyd/keys")).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        assert!(!bytes.windows(32).any(|w| der.windows(32).any(|k| k == w)), "key material in the clear");
    }
    assert!(!kd.log().contains("PRIVATE KEY"));
}

fn pem_body(pem: &str) -> Vec<u8> {
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let o = run(Command::new("sh").args(["-c", &format!("echo '{b64}' | base64 -d")]));
    o.stdout
}

#[test]
fn a_key_generated_in_custody_gets_its_certificate_later() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let kd = keyd(&dir.path().join("keyd"), &dir.path().join("device.key"), &[]);
    let csr = dir.path().join("g.csr");
    let o = key(&kd.addr, &["gen", "g.test", "--key-type", "ecdsa-p384", "--out", csr.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    // A corrupted request is refused: one byte of the base64 body changed.
    let pem = std::fs::read_to_string(&csr).unwrap();
    let line = pem.lines().nth(3).unwrap().to_string();
    let flipped: String = line
        .chars()
        .enumerate()
        .map(|(i, c)| {
            if i == 10 {
                if c == 'A' {
                    'B'
                } else {
                    'A'
                }
            } else {
                c
            }
        })
        .collect();
    std::fs::write(dir.path().join("bad.csr"), pem.replacen(&line, &flipped, 1)).unwrap();
    let sign = |csr: &str, out: &str| run(sealtls().current_dir(dir.path()).args(["pki", "sign", "--dir", "pki", csr, "--out", out]));
    let o = sign("bad.csr", "bad.pem");
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(text(&o).contains("bad.csr") && text(&o).contains("fix: "), "{}", text(&o));
    assert!(!dir.path().join("bad.pem").exists());
    // A CA key that others can read is refused.
    std::fs::set_permissions(pki.join("ca.key"), std::fs::Permissions::from_mode(0o640)).unwrap();
    let o = sign("g.csr", "g.pem");
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(text(&o).contains("ca.key") && text(&o).contains("chmod 600"), "{}", text(&o));
    std::fs::set_permissions(pki.join("ca.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
    // Signed by the CA, names from the request (g.test), a server leaf that openssl verifies.
    let o = sign("g.csr", "g.pem");
    assert!(o.status.success() && text(&o).contains("g.test"), "{}", text(&o));
    let v =
        run(Command::new("openssl").current_dir(dir.path()).args(["verify", "-CAfile", "pki/ca.pem", "-purpose", "sslserver", "g.pem"]));
    assert!(v.status.success() && text(&v).contains("g.pem: OK"), "{}", text(&v));
    let ls = text(&key(&kd.addr, &["ls"]));
    assert!(ls.contains("g.test") && ls.contains("ECDSA P-384") && ls.contains("waiting for a certificate"), "{ls}");
    let o = key(&kd.addr, &["put", "g.test", "--cert", &p(dir.path(), "g.pem")]);
    assert!(o.status.success(), "{}", text(&o));
    let server = Server::start(&["--keyd", &format!("unix:{}", kd.addr)]);
    let out = s_client(server.port(), Some("g.test"), &pki.join("ca.pem"), "-tls1_3");
    assert!(served(&out, "g.test"), "{out}");
}

#[test]
fn a_copied_data_dir_or_an_exposed_secret_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let data = dir.path().join("keyd");
    {
        let kd = keyd(&data, &dir.path().join("one.key"), &[]);
        put(&kd.addr, &pki, "a.test");
    }
    let o = run(sealtls().args(["keyd", "--data-dir", data.to_str().unwrap(), "--device-key", &p(dir.path(), "two.key")]));
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(text(&o).contains("sealed under a different device secret") && text(&o).contains("serves nothing"), "{}", text(&o));

    std::fs::set_permissions(dir.path().join("one.key"), std::fs::Permissions::from_mode(0o640)).unwrap();
    let o = run(sealtls().args(["keyd", "--data-dir", data.to_str().unwrap(), "--device-key", &p(dir.path(), "one.key")]));
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(text(&o).contains("one.key") && text(&o).contains("chmod 600"), "{}", text(&o));
    std::fs::set_permissions(dir.path().join("one.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let o = run(sealtls().args(["keyd", "--data-dir", data.to_str().unwrap(), "--device-key", &p(dir.path(), "one.key")]));
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(text(&o).contains("chmod 700"), "{}", text(&o));
}

fn entry_of(data: &Path, domain: &str) -> PathBuf {
    std::fs::read_dir(data.join("keys"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| std::fs::read(p).unwrap().windows(domain.len()).any(|w| w == domain.as_bytes()))
        .unwrap_or_else(|| panic!("no entry for {domain}"))
}

#[test]
fn a_tampered_entry_is_reported_with_its_domain_and_the_others_keep_working() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let (data, device) = (dir.path().join("keyd"), dir.path().join("device.key"));
    {
        let kd = keyd(&data, &device, &[]);
        put(&kd.addr, &pki, "a.test");
        put(&kd.addr, &pki, "b.test");
    }
    let file = entry_of(&data, "a.test");
    let mut bytes = std::fs::read(&file).unwrap();
    let i = bytes.len() - 40;
    bytes[i] ^= 0x01;
    std::fs::write(&file, bytes).unwrap();

    let kd = keyd(&data, &device, &[]);
    let log = kd.wait_log("failed authentication");
    assert!(log.contains("domain=a.test") && log.contains("failed authentication"), "{log}");
    let ls = text(&key(&kd.addr, &["ls"]));
    assert!(ls.lines().any(|l| l.starts_with("a.test") && l.contains("unavailable")), "{ls}");
    assert!(ls.lines().any(|l| l.starts_with("b.test") && l.contains("ok")), "{ls}");
    let server = Server::start(&["--keyd", &format!("unix:{}", kd.addr)]);
    let out = s_client(server.port(), Some("a.test"), &pki.join("ca.pem"), "-tls1_3");
    assert!(out.contains("alert number 40") && !out.contains("subject="), "{out}");
    assert!(server.wait_log("cannot be used").contains("a.test"), "{}", server.log());
    assert!(served(&s_client(server.port(), Some("b.test"), &pki.join("ca.pem"), "-tls1_3"), "b.test"));
}

#[test]
fn keyd_killed_during_puts_keeps_each_key_whole() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let (data, device) = (dir.path().join("keyd"), dir.path().join("device.key"));
    // Two keys with certificates for a.test; each round replaces one with the other and is cut short.
    let pd = pki.to_str().unwrap();
    let o = run(sealtls().args(["pki", "issue", "server", "--dir", pd, "--name", "a.test", "--force"]));
    assert!(o.status.success(), "{}", text(&o));
    std::fs::rename(pki.join("a.test.key"), pki.join("a2.key")).unwrap();
    std::fs::rename(pki.join("a.test.pem"), pki.join("a2.pem")).unwrap();
    let o = run(sealtls().args(["pki", "issue", "server", "--dir", pd, "--name", "a.test", "--force"]));
    assert!(o.status.success(), "{}", text(&o));
    let ids = |ls: &str| -> Vec<String> {
        ls.lines().filter(|l| l.starts_with("a.test")).map(|l| l.split_whitespace().nth(5).unwrap_or("").to_string()).collect()
    };
    let mut seen = std::collections::HashSet::new();
    for round in 0..10u64 {
        let mut kd = keyd(&data, &device, &[]);
        let (k, c) = if round % 2 == 0 { ("a.test.key", "a.test.pem") } else { ("a2.key", "a2.pem") };
        let mut put = sealtls()
            .args(["key", "put", "a.test", &p(&pki, k), "--cert", &p(&pki, c), "--keyd", &format!("unix:{}", kd.addr)])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // From before the request arrives to after the rename, across the rounds.
        std::thread::sleep(Duration::from_millis(3 * round));
        kd.child.kill().unwrap();
        let _ = put.wait();
        drop(kd);
        let kd = keyd(&data, &device, &[]);
        let ls = text(&key(&kd.addr, &["ls"]));
        let rows: Vec<_> = ls.lines().filter(|l| l.starts_with("a.test")).collect();
        match rows.as_slice() {
            [] => assert!(seen.is_empty(), "round {round}: an installed key vanished: {ls}"),
            [row] => assert!(row.ends_with(" ok"), "round {round}: {ls}"),
            _ => panic!("round {round}: {ls}"),
        }
        seen.extend(ids(&ls));
        assert!(!kd.log().contains("failed authentication"), "{}", kd.log());
        let leftovers: Vec<_> = std::fs::read_dir(data.join("keys"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    }
    let kd = keyd(&data, &device, &[]);
    put(&kd.addr, &pki, "a.test");
    seen.extend(ids(&text(&key(&kd.addr, &["ls"]))));
    assert!(!seen.is_empty() && seen.len() <= 2, "only the two keys ever appear: {seen:?}");
}

#[test]
fn over_tls_an_edge_may_sign_but_only_an_admin_may_provision() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let d = dir.path();
    for (ca, client) in [("edges", "edge1"), ("admins", "admin1")] {
        let cd = d.join(ca);
        let cs = cd.to_str().unwrap();
        for args in [vec!["pki", "init", "--dir", cs], vec!["pki", "issue", "client", "--dir", cs, "--name", client]] {
            let o = run(sealtls().args(&args));
            assert!(o.status.success(), "{}", text(&o));
        }
    }
    let o = run(sealtls().args(["pki", "issue", "server", "--dir", d.join("edges").to_str().unwrap(), "--name", "localhost"]));
    assert!(o.status.success(), "{}", text(&o));
    // Another local user must be able to reach the socket for the SO_PEERCRED check below.
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    let kd = keyd(
        &d.join("keyd"),
        &d.join("device.key"),
        &[
            "--socket",
            &p(d, "keyd.sock"),
            "--listen-tls",
            "127.0.0.1:0",
            "--tls-cert",
            &p(d, "edges/localhost.pem"),
            "--tls-key",
            &p(d, "edges/localhost.key"),
            "--client-ca",
            &p(d, "edges/ca.pem"),
            "--admin-ca",
            &p(d, "admins/ca.pem"),
        ],
    );
    let tls_port = logged_port(&kd.wait_log("tls_listen="), "tls_listen");
    let remote = format!("tls://localhost:{tls_port}");
    let as_who = |who: &str, args: &[&str]| {
        run(sealtls().arg("key").args(args).args([
            "--keyd",
            &remote,
            "--keyd-ca",
            &p(d, "edges/ca.pem"),
            "--admin-cert",
            &p(d, &format!("{who}.pem")),
            "--admin-key",
            &p(d, &format!("{who}.key")),
        ]))
    };
    let a_key = [p(&pki, "a.test.key"), "--cert".into(), p(&pki, "a.test.pem")];
    let o = as_who("edges/edge1", &[&["put", "a.test"], &a_key.iter().map(String::as_str).collect::<Vec<_>>()[..]].concat());
    assert_eq!(o.status.code(), Some(6), "{}", text(&o));
    assert!(text(&o).contains("FORBIDDEN") || text(&o).contains("may only sign"), "{}", text(&o));
    assert!(kd.wait_log("refused: not an admin").contains("CN=edge1"), "{}", kd.log());
    let o = as_who("admins/admin1", &[&["put", "a.test"], &a_key.iter().map(String::as_str).collect::<Vec<_>>()[..]].concat());
    assert!(o.status.success(), "{}", text(&o));
    assert!(kd.wait_log("admin operation done").contains("CN=admin1"), "{}", kd.log());

    // Refused TLS sessions are told apart from a keyd that is down: our certificate
    // from a CA keyd does not know (6, rejected), keyd's from a CA we do not trust (5).
    let strangers = d.join("strangers");
    for args in [
        vec!["pki", "init", "--dir", strangers.to_str().unwrap()],
        vec!["pki", "issue", "client", "--dir", strangers.to_str().unwrap(), "--name", "mallory"],
    ] {
        assert!(run(sealtls().args(&args)).status.success());
    }
    let ls_with = |keyd_ca: &str, who: &str| {
        run(sealtls().args(["key", "ls", "--keyd", &remote, "--keyd-ca", keyd_ca]).args([
            "--admin-cert",
            &format!("{who}.pem"),
            "--admin-key",
            &format!("{who}.key"),
        ]))
    };
    let o = ls_with(&p(d, "edges/ca.pem"), &p(d, "strangers/mallory"));
    assert_eq!(o.status.code(), Some(6), "{}", text(&o));
    assert!(text(&o).contains("--admin-ca") && !text(&o).contains("unreachable"), "{}", text(&o));
    let o = ls_with(&p(d, "strangers/ca.pem"), &p(d, "admins/admin1"));
    assert_eq!(o.status.code(), Some(5), "{}", text(&o));
    assert!(text(&o).contains("--keyd-ca") && !text(&o).contains("unreachable"), "{}", text(&o));

    // The edge's certificate is good for signing: a server on it serves a.test,
    // reaching keyd through a forwarder whose connections the test can cut.
    let cut = Forwarder::start(&format!("127.0.0.1:{tls_port}"));
    let server = Server::start(&[
        "--keyd",
        &format!("tls://localhost:{}", cut.port),
        "--keyd-pool",
        "1",
        "--keyd-ca",
        &p(d, "edges/ca.pem"),
        "--keyd-cert",
        &p(d, "edges/edge1.pem"),
        "--keyd-key",
        &p(d, "edges/edge1.key"),
    ]);
    assert!(served(&s_client(server.port(), Some("a.test"), &pki.join("ca.pem"), "-tls1_3"), "a.test"));
    let edge_connects = |log: &str| log.lines().filter(|l| l.contains("TLS client connected") && l.contains("CN=edge1")).count();
    assert!(kd.log().lines().any(|l| l.contains("CN=edge1") && l.contains("resumed=false")), "{}", kd.log());
    // The edge's connection to keyd breaks: it reconnects with a resumed session.
    let before = edge_connects(&kd.log());
    cut.cut();
    assert!(served(&s_client(server.port(), Some("a.test"), &pki.join("ca.pem"), "-tls1_3"), "a.test"), "{}", server.log());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while edge_connects(&kd.log()) == before && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let reconnect =
        kd.log().lines().filter(|l| l.contains("TLS client connected") && l.contains("CN=edge1")).nth(before).map(str::to_owned);
    assert!(reconnect.as_deref().is_some_and(|l| l.contains("resumed=true")), "reconnect: {reconnect:?}\n{}", kd.log());

    // Over the Unix socket, another user may reach keyd but not provision.
    std::fs::set_permissions(&kd.addr, std::fs::Permissions::from_mode(0o666)).unwrap();
    let mut cmd = sealtls();
    std::os::unix::process::CommandExt::uid(&mut cmd, 65534);
    let o = run(cmd.args(["key", "ls", "--keyd", &format!("unix:{}", kd.addr)]));
    assert_eq!(o.status.code(), Some(6), "{}", text(&o));
    assert!(kd.wait_log("uid 65534").contains("refused: not an admin"), "{}", kd.log());
}

#[test]
fn a_running_server_recovers_when_keyd_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let (data, device) = (dir.path().join("keyd"), dir.path().join("device.key"));
    let kd = keyd(&data, &device, &[]);
    put(&kd.addr, &pki, "a.test");
    let socket = kd.addr.clone();
    let mut server = Server::start(&["--keyd", &format!("unix:{socket}"), "--keyd-health-ms", "100"]);
    let ca = pki.join("ca.pem");
    assert!(served(&s_client(server.port(), Some("a.test"), &ca, "-tls1_3"), "a.test"));
    drop(kd);
    let out = s_client(server.port(), Some("a.test"), &ca, "-tls1_3");
    // Refused with an alert, whether the gate already knew keyd was down or the signature failed.
    assert!(!out.contains("subject=") && out.contains("alert handshake failure"), "served without keyd: {out}");
    assert!(server.wait_log("unreachable").contains("unreachable"), "{}", server.log());
    // With one keyd there are no others to go to, and the log does not pretend there are.
    let down = server.wait_log("keyd is down");
    assert!(down.contains("requests fail until it answers PING again") && !down.contains("go to the others"), "{down}");
    // Taken back at its next PING (every 100 ms here).
    let _kd = keyd(&data, &device, &[]);
    assert!(server.wait_log("keyd answers again").contains("keyd answers again"), "{}", server.log());
    assert!(served(&s_client(server.port(), Some("a.test"), &ca, "-tls1_3"), "a.test"));
    assert!(served(&s_client(server.port(), Some("a.test"), &ca, "-tls1_2"), "a.test"));
    server.assert_alive();
}

#[test]
fn the_pkcs11_backend_on_softhsm_serves_by_sni_too() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let (conf, pin) = softhsm(dir.path());
    let data = dir.path().join("keyd");
    let start = || {
        std::env::set_var("SOFTHSM2_CONF", &conf);
        keyd(
            &data,
            &dir.path().join("device.key"),
            &[
                "--backend",
                "pkcs11",
                "--module",
                "/usr/lib/softhsm/libsofthsm2.so",
                "--token",
                "sealtls",
                "--pin-file",
                pin.to_str().unwrap(),
            ],
        )
    };
    let kd = start();
    put(&kd.addr, &pki, "a.test");
    put(&kd.addr, &pki, "b.test");
    let ls = text(&key(&kd.addr, &["ls", "--json"]));
    assert!(ls.contains("token sealtls, object a.test"), "{ls}");
    let mut server = Server::start(&["--keyd", &format!("unix:{}", kd.addr)]);
    serves_by_sni(&mut server, &pki.join("ca.pem"));

    // Keys stay on the token across restarts, and a key generated there signs its CSR.
    drop(kd);
    let kd = start();
    assert!(served(&s_client(server.port(), Some("b.test"), &pki.join("ca.pem"), "-tls1_3"), "b.test"));
    let o = key(&kd.addr, &["gen", "t.test", "--key-type", "ecdsa-p256"]);
    assert!(o.status.success(), "{}", text(&o));
    let csr = dir.path().join("t.csr");
    std::fs::write(&csr, &o.stdout).unwrap();
    let v = run(Command::new("openssl").args(["req", "-in", csr.to_str().unwrap(), "-noout", "-verify", "-subject"]));
    assert!(v.status.success() && text(&v).contains("t.test"), "{}", text(&v));
}

#[test]
fn a_certificate_without_subject_alt_name_is_refused_with_how_to_reissue() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let kd = keyd(&d.join("keyd"), &d.join("device.key"), &[]);
    // OpenSSL's `req -x509` without -addext: CN only, no subjectAltName.
    let o = run(Command::new("openssl").current_dir(d).args([
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "n.key",
        "-out",
        "n.pem",
        "-subj",
        "/CN=n.test",
        "-days",
        "30",
    ]));
    assert!(o.status.success(), "{}", text(&o));
    std::fs::set_permissions(d.join("n.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let o = key(&kd.addr, &["put", "n.test", &p(d, "n.key"), "--cert", &p(d, "n.pem")]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let t = text(&o);
    assert!(!t.contains("its names are []"), "{t}");
    assert!(t.contains("has no subjectAltName") && t.contains("match names only there"), "{t}");
    assert!(
        t.contains("fix: reissue it with n.test in subjectAltName")
            && t.contains("sealtls pki issue server")
            && t.contains("sealtls pki sign")
            && t.contains("-extfile"),
        "{t}"
    );
}

/// keyd's connection limits come from its flags: with `--max-connections 1` a
/// second connection is answered BUSY and closed, and with `--first-byte-timeout 1`
/// a connection that sends nothing is closed after a second.
#[test]
fn keyd_connection_limits_come_from_its_flags() {
    use std::io::Read;
    use std::os::unix::net::UnixStream;
    use std::time::Instant;
    let dir = tempfile::tempdir().unwrap();
    let kd =
        keyd(&dir.path().join("keyd"), &dir.path().join("secret/device.key"), &["--max-connections", "1", "--first-byte-timeout", "1"]);
    let opened = Instant::now();
    let mut silent = UnixStream::connect(&kd.addr).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let mut second = UnixStream::connect(&kd.addr).unwrap();
    second.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut answer = Vec::new();
    second.read_to_end(&mut answer).unwrap();
    assert!(String::from_utf8_lossy(&answer).contains("keyd serves at most 1 connections"), "{answer:?}");
    silent.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut rest = Vec::new();
    silent.read_to_end(&mut rest).unwrap();
    let waited = opened.elapsed();
    assert!(rest.is_empty() && waited >= Duration::from_millis(900) && waited < Duration::from_secs(5), "{waited:?} {rest:?}");
    let log = kd.wait_log("the connection sent nothing in time");
    assert!(log.contains("the connection sent nothing in time") && log.contains("connection refused: 1 connections are open"), "{log}");
    let o = run(sealtls().args(["keyd", "--help"]));
    for flag in [
        "--max-connections <N>",
        "[default: 1024]",
        "--max-in-flight <N>",
        "[default: 64]",
        "--frame-timeout <SECS>",
        "--first-byte-timeout <SECS>",
    ] {
        assert!(text(&o).contains(flag), "{flag}: {}", text(&o));
    }
}

/// A TLS 1.3 ClientHello record for `name` (x25519 key share, ECDSA, RSA-PSS
/// and Ed25519 signatures), its random, session id and key share from `rng`.
fn client_hello(name: &str, rng: &mut u64) -> Vec<u8> {
    fn u16be(v: usize) -> [u8; 2] {
        (v as u16).to_be_bytes()
    }
    fn ext(out: &mut Vec<u8>, kind: u16, data: &[u8]) {
        out.extend(kind.to_be_bytes());
        out.extend(u16be(data.len()));
        out.extend(data);
    }
    let mut random = |n: usize| (0..n).map(|_| (xorshift(rng) >> 24) as u8).collect::<Vec<u8>>();
    let mut body = vec![0x03, 0x03];
    body.extend(random(32));
    body.push(32);
    body.extend(random(32));
    body.extend([0x00, 0x06, 0x13, 0x01, 0x13, 0x02, 0x13, 0x03, 0x01, 0x00]);
    let mut exts = Vec::new();
    let mut sni = u16be(name.len() + 3).to_vec();
    sni.push(0);
    sni.extend(u16be(name.len()));
    sni.extend(name.as_bytes());
    ext(&mut exts, 0x0000, &sni);
    ext(&mut exts, 0x000a, &[0x00, 0x02, 0x00, 0x1d]);
    ext(&mut exts, 0x000d, &[0x00, 0x06, 0x04, 0x03, 0x08, 0x04, 0x08, 0x07]);
    ext(&mut exts, 0x002b, &[0x02, 0x03, 0x04]);
    let mut share = vec![0x00, 0x24, 0x00, 0x1d, 0x00, 0x20];
    share.extend(random(32));
    ext(&mut exts, 0x0033, &share);
    body.extend(u16be(exts.len()));
    body.extend(exts);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend(u16be(body.len() + 4));
    record.extend([0x01, 0x00]);
    record.extend(u16be(body.len()));
    record.extend(body);
    record
}

fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// The resident set of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Sends `total` ClientHellos from `threads` threads, each for a fresh random
/// name made by `name`, reading only the first record of each answer:
/// (ServerHello records, alert records, anything else).
fn flood(port: &str, total: usize, threads: usize, name: fn(&mut u64) -> String) -> (usize, usize, usize) {
    use std::io::{Read, Write};
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            std::thread::spawn(move || {
                let mut rng = (seed ^ (t as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1;
                let mut counts = (0, 0, 0);
                for _ in 0..total / threads {
                    let hello = client_hello(&name(&mut rng), &mut rng);
                    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(10)).unwrap();
                    // Closed with a reset: 40,000 connections leave no TIME_WAIT behind.
                    socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO)).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    s.write_all(&hello).unwrap();
                    let mut header = [0u8; 5];
                    match s.read_exact(&mut header).map(|()| header[0]) {
                        Ok(0x16) => counts.0 += 1,
                        Ok(0x15) => counts.1 += 1,
                        _ => counts.2 += 1,
                    }
                }
                counts
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).fold((0, 0, 0), |a, c| (a.0 + c.0, a.1 + c.1, a.2 + c.2))
}

fn random_label(rng: &mut u64) -> String {
    (0..12).map(|_| (b'a' + (xorshift(rng) % 26) as u8) as char).collect()
}

fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().count()
}

/// The resolver flood, measured as memory: 20,000 ClientHellos with random
/// names under a wildcard key, then 20,000 with random unknown names, each
/// keep the keyless server's resident set within 10 MiB of what it was
/// before, and a good handshake still succeeds afterwards. Signatures wait
/// for keyd on at most `--keyless-signing-threads` blocking threads, so the
/// flood adds no more threads than that.
#[test]
fn a_flood_of_random_names_keeps_the_servers_memory_flat() {
    const HELLOS: usize = 20_000;
    const THREADS: usize = 8;
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let ds = pki.to_str().unwrap();
    for args in [vec!["pki", "init", "--dir", ds], vec!["pki", "issue", "server", "--dir", ds, "--name", "flood", "--san", "*.flood.test"]]
    {
        let o = run(sealtls().args(&args));
        assert!(o.status.success(), "{}", text(&o));
    }
    let kd = keyd(&dir.path().join("keyd"), &dir.path().join("secret/device.key"), &[]);
    let o = key(&kd.addr, &["put", "*.flood.test", &p(&pki, "flood.key"), "--cert", &p(&pki, "flood.pem")]);
    assert!(o.status.success(), "{}", text(&o));
    const SIGNING_THREADS: usize = 4;
    let mut server = Server::start(&[
        "--keyd",
        &format!("unix:{}", kd.addr),
        "--keyless-cache",
        "1000",
        "--keyless-signing-threads",
        &SIGNING_THREADS.to_string(),
    ]);
    let ca = pki.join("ca.pem");
    assert!(served(&s_client(server.port(), Some("first.flood.test"), &ca, "-tls1_3"), "flood"));
    let pid = server.child.id();
    let threads_at_start = threads(pid);
    let wildcard: fn(&mut u64) -> String = |rng| format!("{}.flood.test", random_label(rng));
    let unknown: fn(&mut u64) -> String = |rng| format!("{}.unknown.test", random_label(rng));
    for (what, total, name) in [("random names under *.flood.test", HELLOS, wildcard), ("random unknown names", HELLOS, unknown)] {
        let (before, threads_before) = (rss_kib(pid), threads(pid));
        let started = std::time::Instant::now();
        let (hellos, alerts, other) = flood(server.port(), total, THREADS, name);
        let secs = started.elapsed().as_secs_f64();
        let after = rss_kib(pid);
        println!(
            "{what}: {total} ClientHellos from {THREADS} threads in {secs:.1} s ({:.0}/s): {hellos} ServerHello, {alerts} alert, {other} other; \
             server RSS {before} KiB before, {after} KiB after ({:+} KiB), threads {threads_before} -> {}",
            total as f64 / secs,
            after as i64 - before as i64,
            threads(pid)
        );
        assert_eq!(other, 0, "{what}: answers that were neither a handshake record nor an alert");
        if what.contains("unknown") {
            assert_eq!(alerts, total, "{what}: unknown names must be refused");
        } else {
            assert!(hellos >= total * 9 / 10, "{what}: only {hellos} of {total} hellos were answered with a ServerHello");
        }
        assert!(after < before + 10 * 1024, "{what}: RSS grew from {before} KiB to {after} KiB");
        // The first handshake may have started one blocking thread already.
        assert!(
            threads(pid) <= threads_at_start + SIGNING_THREADS,
            "{what}: {} threads after the flood, {threads_at_start} at start, at most {SIGNING_THREADS} signing threads allowed",
            threads(pid)
        );
        server.assert_alive();
    }
    let out = s_client(server.port(), Some("last.flood.test"), &ca, "-tls1_3");
    assert!(served(&out, "flood"), "{out}");
}

/// A TCP forwarder to `upstream` whose open connections can be cut, as a
/// network failure would.
struct Forwarder {
    port: u16,
    open: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl Forwarder {
    fn start(upstream: &str) -> Forwarder {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (upstream, kept) = (upstream.to_owned(), open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().map_while(Result::ok) {
                let Ok(server) = std::net::TcpStream::connect(&upstream) else { continue };
                let mut kept = kept.lock().unwrap();
                for (from, to) in [(&client, &server), (&server, &client)] {
                    let (mut from, mut to) = (from.try_clone().unwrap(), to.try_clone().unwrap());
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
                kept.extend([client, server]);
            }
        });
        Forwarder { port, open }
    }

    /// Closes every connection made so far.
    fn cut(&self) {
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}
