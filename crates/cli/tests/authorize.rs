//! `sealtls keyd --authorize FILE`: which caller may sign for which domain,
//! over mutual TLS (by certificate CN) and over the Unix socket (by uid),
//! with the refusal reaching the TLS client as handshake_failure.
mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::{logged_port, p, run, sealtls, text, write_mode, Server};

fn ok(args: &[&str]) {
    let o = run(sealtls().args(args));
    assert!(o.status.success(), "{args:?}: {}", text(&o));
}

fn s_client(port: &str, name: &str, ca: &Path) -> String {
    text(&run(Command::new("openssl").args([
        "s_client",
        "-connect",
        &format!("127.0.0.1:{port}"),
        "-CAfile",
        ca.to_str().unwrap(),
        "-verify_return_error",
        "-tls1_3",
        "-servername",
        name,
    ])))
}

fn served(out: &str, name: &str) -> bool {
    (out.contains(&format!("subject=CN = {name}")) || out.contains(&format!("subject=CN={name}")))
        && out.contains("Verify return code: 0 (ok)")
}

fn refused(out: &str) -> bool {
    out.contains("alert number 40") && out.contains("handshake failure") && !out.contains("subject=")
}

fn keyd_args<'a>(d: &'a Path, extra: &[&'a str]) -> Vec<String> {
    let mut args: Vec<String> = ["keyd", "--data-dir", &p(d, "keyd"), "--device-key", &p(d, "device.key"), "--socket", &p(d, "keyd.sock")]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

#[test]
fn each_caller_signs_only_for_the_domains_it_is_granted() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (pki, edges) = (p(d, "pki"), p(d, "edges"));
    ok(&["pki", "init", "--dir", &pki]);
    ok(&["pki", "issue", "server", "--dir", &pki, "--name", "a.example"]);
    ok(&["pki", "issue", "server", "--dir", &pki, "--name", "b.example"]);
    ok(&["pki", "init", "--dir", &edges]);
    ok(&["pki", "issue", "client", "--dir", &edges, "--name", "edge-a"]);
    ok(&["pki", "issue", "server", "--dir", &edges, "--name", "localhost"]);
    let ca = d.join("pki/ca.pem");

    // Without grants keyd says that anyone connected may sign for anything.
    {
        let args = keyd_args(d, &[]);
        let kd = Server::spawn(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(kd.wait_log("any connected edge may sign for any domain").contains("--authorize"), "{}", kd.log());
    }

    // A bad file is refused with its name, the line and a fix.
    let auth = d.join("authorize.toml");
    write_mode(&auth, "[[grant]]\ncn = \"edge-a\"\ndomain = [\"a.example\"]\n", 0o644);
    let o = run(sealtls().args(keyd_args(d, &["--authorize", auth.to_str().unwrap()])));
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(
        text(&o).contains("authorize.toml") && text(&o).contains("line 3") && text(&o).contains("unknown field `domain`"),
        "{}",
        text(&o)
    );
    assert!(text(&o).contains("fix: "), "{}", text(&o));
    write_mode(&auth, "[[grant]]\ncn = \"edge-a\"\n", 0o644);
    let o = run(sealtls().args(keyd_args(d, &["--authorize", auth.to_str().unwrap()])));
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(text(&o).contains("grant #1: cn=edge-a has no domains") && text(&o).contains("fix: "), "{}", text(&o));

    // edge-a (over mutual TLS) and uid 0 (over the Unix socket) may each use a.example only.
    write_mode(&auth, "[[grant]]\ncn = \"edge-a\"\ndomains = [\"a.example\"]\n\n[[grant]]\nuid = 0\ndomains = [\"a.example\"]\n", 0o644);
    let args = keyd_args(
        d,
        &[
            "--authorize",
            auth.to_str().unwrap(),
            "--listen-tls",
            "127.0.0.1:0",
            "--tls-cert",
            &edges_file(d, "localhost.pem"),
            "--tls-key",
            &edges_file(d, "localhost.key"),
            "--client-ca",
            &edges_file(d, "ca.pem"),
        ],
    );
    let kd = Server::spawn(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(kd.wait_log("signing is limited").contains("grants=2"), "{}", kd.log());
    let tls_port = logged_port(&kd.wait_log("tls_listen="), "tls_listen");
    // Provisioning is not a grant matter: root is still an admin.
    for name in ["a.example", "b.example"] {
        let o = run(sealtls().args([
            "key",
            "put",
            name,
            &format!("{pki}/{name}.key"),
            "--cert",
            &format!("{pki}/{name}.pem"),
            "--keyd",
            &format!("unix:{}", kd.addr),
        ]));
        assert!(o.status.success(), "{}", text(&o));
    }

    let edge = Server::start(&[
        "--keyd",
        &format!("tls://localhost:{tls_port}"),
        "--keyd-ca",
        &edges_file(d, "ca.pem"),
        "--keyd-cert",
        &edges_file(d, "edge-a.pem"),
        "--keyd-key",
        &edges_file(d, "edge-a.key"),
    ]);
    assert!(served(&s_client(edge.port(), "a.example", &ca), "a.example"));
    let out = s_client(edge.port(), "b.example", &ca);
    assert!(refused(&out), "{out}");
    let log = edge.wait_log("FORBIDDEN");
    assert!(log.lines().any(|l| l.contains("FORBIDDEN") && l.contains("b.example") && l.contains("handshake refused")), "{log}");
    let log = kd.wait_log("refused (FORBIDDEN)");
    let line = log.lines().find(|l| l.contains("refused (FORBIDDEN)")).unwrap_or_default();
    assert!(line.contains("CN=edge-a") && line.contains("domain=b.example") && line.contains("no rule allows"), "{log}");
    assert!(line.contains("cn=edge-a: a.example"), "the caller's own grants are named: {log}");

    let local = Server::start(&["--keyd", &format!("unix:{}", kd.addr)]);
    assert!(served(&s_client(local.port(), "a.example", &ca), "a.example"));
    let out = s_client(local.port(), "b.example", &ca);
    assert!(refused(&out), "{out}");
    assert!(local.wait_log("FORBIDDEN").lines().any(|l| l.contains("FORBIDDEN") && l.contains("b.example")), "{}", local.log());
    let log = kd.wait_log("caller=uid 0");
    assert!(
        log.lines().any(|l| l.contains("refused (FORBIDDEN)") && l.contains("caller=uid 0") && l.contains("domain=b.example")),
        "{log}"
    );
    // Granted names keep working after refusals.
    assert!(served(&s_client(edge.port(), "a.example", &ca), "a.example"));
    assert!(std::fs::metadata(&auth).unwrap().permissions().mode() & 0o777 == 0o644);
}

fn edges_file(d: &Path, name: &str) -> String {
    p(&d.join("edges"), name)
}
