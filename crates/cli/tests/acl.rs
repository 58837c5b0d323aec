//! `sealtls serve --allow-*`: client identity rules over verified
//! certificates; a client that matches none is refused in the handshake
//! with access_denied and one log line naming it.
mod common;

use std::path::Path;
use std::process::Command;

use common::{dev_pki, p, run, sealtls, text, Server};

/// The development PKI plus a second client, `bob`, from the same CA.
fn pki(dir: &Path) {
    dev_pki(dir);
    let o = run(sealtls().args(["pki", "issue", "client", "--dir", dir.to_str().unwrap(), "--name", "bob"]));
    assert!(o.status.success(), "{}", text(&o));
}

fn serve(dir: &Path, extra: &[&str]) -> Server {
    Server::start(&[&["--cert", &p(dir, "localhost.pem"), "--key", &p(dir, "localhost.key"), "--ca", &p(dir, "ca.pem")], extra].concat())
}

/// `sealtls connect --send hello` as `who`.
fn hello(dir: &Path, server: &Server, who: &str) -> std::process::Output {
    run(sealtls().args(["connect", &server.addr, "--ca", &p(dir, "ca.pem"), "--server-name", "localhost"]).args([
        "--cert",
        &p(dir, &format!("{who}.pem")),
        "--key",
        &p(dir, &format!("{who}.key")),
        "--send",
        "hello",
    ]))
}

/// openssl s_client as `who`; its input stays open for a second, so a TLS
/// 1.3 refusal (sent after the client's Finished) is read before it exits.
fn s_client(dir: &Path, server: &Server, who: &str) -> String {
    let script = format!(
        "sleep 1 | openssl s_client -connect {} -CAfile {} -servername localhost -cert {} -key {}",
        server.addr,
        p(dir, "ca.pem"),
        p(dir, &format!("{who}.pem")),
        p(dir, &format!("{who}.key"))
    );
    text(&run(Command::new("sh").arg("-c").arg(script)))
}

#[test]
fn allowed_common_name_passes_and_another_is_refused_with_access_denied() {
    let dir = tempfile::tempdir().unwrap();
    pki(dir.path());
    let server = serve(dir.path(), &["--allow-cn", "alice", "--allow-uri", "spiffe://example.org/ns/*/sa/**"]);
    assert!(server.log().contains("only those matching an --allow rule") && server.log().contains("cn=alice"), "{}", server.log());

    let o = hello(dir.path(), &server, "alice");
    assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).contains("hello"), "{}", text(&o));

    // bob's certificate is valid (same CA) but no rule names him.
    let out = s_client(dir.path(), &server, "bob");
    assert!(out.contains("alert access denied") && out.contains("alert number 49"), "{out}");
    let log = server.wait_log("no rule allows it");
    let refusals: Vec<&str> = log.lines().filter(|l| l.contains("no rule allows it")).collect();
    assert_eq!(refusals.len(), 1, "{log}");
    assert!(refusals[0].contains("subject CN=bob") && refusals[0].contains("DNS:bob") && refusals[0].contains("SPKI sha256 "), "{log}");
    assert!(refusals[0].contains("allowed: cn=alice, uri=spiffe://example.org/ns/*/sa/**"), "{log}");

    // The Rust client hears the same alert and explains it.
    let o = hello(dir.path(), &server, "bob");
    assert_eq!(o.status.code(), Some(6), "{}", text(&o));
    assert!(text(&o).contains("access_denied"), "{}", text(&o));
    // Its chain was accepted: the fix points at the rules, not at the CA.
    assert!(text(&o).contains("--allow-cn") && !text(&o).contains("issued by a CA in the server's --ca"), "{}", text(&o));
}

#[test]
fn the_spki_hash_from_the_refusal_lets_the_client_in() {
    let dir = tempfile::tempdir().unwrap();
    pki(dir.path());
    let server = serve(dir.path(), &["--allow-cn", "alice"]);
    let _ = s_client(dir.path(), &server, "bob");
    let log = server.wait_log("no rule allows it");
    let hash = log.split("SPKI sha256 ").nth(1).unwrap().split(':').next().unwrap().to_owned();
    assert_eq!(hash.len(), 64, "{log}");
    // Colons between the bytes are allowed, as openssl prints fingerprints.
    let colons = hash.as_bytes().chunks(2).map(|c| std::str::from_utf8(c).unwrap()).collect::<Vec<_>>().join(":");
    let server = serve(dir.path(), &["--allow-spki-sha256", &colons.to_uppercase()]);
    let o = hello(dir.path(), &server, "bob");
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(hello(dir.path(), &server, "alice").status.code(), Some(6));
}

#[test]
fn allow_all_and_no_rule_accept_any_certificate_the_ca_issued() {
    let dir = tempfile::tempdir().unwrap();
    pki(dir.path());
    // With a narrower rule beside it, --allow-all still lets everyone in, and the start says why.
    let server = serve(dir.path(), &["--allow-all", "--allow-cn", "alice"]);
    assert!(server.log().contains("is let in (--allow-all)"), "{}", server.log());
    assert!(hello(dir.path(), &server, "bob").status.success(), "{}", server.log());
    let server = serve(dir.path(), &[]);
    assert!(server.log().contains("(no --allow-cn/-dns/-uri/-spki-sha256 rule)"), "{}", server.log());
    let starts: Vec<String> =
        server.log().lines().filter(|l| l.contains("any certificate the --ca CAs issued")).map(str::to_owned).collect();
    assert_eq!(starts.len(), 1, "{}", server.log());
    assert!(hello(dir.path(), &server, "bob").status.success(), "{}", server.log());
    assert!(hello(dir.path(), &server, "alice").status.success(), "{}", server.log());
}

#[test]
fn allow_flags_need_required_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    dev_pki(dir.path());
    let base = ["serve", "--listen", "127.0.0.1:0", "--cert", &p(dir.path(), "localhost.pem"), "--key", &p(dir.path(), "localhost.key")];
    let o = run(sealtls().args(base).args(["--allow-cn", "alice"]));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("--allow-*") && text(&o).contains("fix: give --ca FILE"), "{}", text(&o));
    let o = run(sealtls().args(base).args(["--ca", &p(dir.path(), "ca.pem"), "--client-auth", "optional", "--allow-cn", "alice"]));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let o = run(sealtls().args(base).args(["--ca", &p(dir.path(), "ca.pem"), "--allow-uri", "spiffe://e/a*"]));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("whole path segments"), "{}", text(&o));
}
