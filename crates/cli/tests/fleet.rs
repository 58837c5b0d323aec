//! Several keyds holding the same keys: a keyless server that fails over
//! between them and takes them back, and `sealtls key` run on every keyd
//! of a fleet at once.
mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::custody::{keyd, pki, s_client, served};
use common::{p, run, sealtls, text, Server};

/// One keyd of the fleet: its own data directory and device secret.
struct Member {
    data: PathBuf,
    device: PathBuf,
}

impl Member {
    fn new(dir: &Path, name: &str) -> Member {
        Member { data: dir.join(name).join("keyd"), device: dir.join(name).join("device.key") }
    }

    fn start(&self) -> Server {
        keyd(&self.data, &self.device, &[])
    }
}

/// `sealtls key ARGS --keyd unix:S ...` for every socket.
fn fleet_key(sockets: &[&str], args: &[&str]) -> std::process::Output {
    let mut cmd = sealtls();
    cmd.arg("key").args(args);
    for s in sockets {
        cmd.args(["--keyd", &format!("unix:{s}")]);
    }
    run(&mut cmd)
}

fn fleet_put(sockets: &[&str], pki: &Path, domain: &str) -> std::process::Output {
    fleet_key(sockets, &["put", domain, &p(pki, &format!("{domain}.key")), "--cert", &p(pki, &format!("{domain}.pem"))])
}

#[test]
fn a_keyless_server_fails_over_between_keyds_and_takes_them_back() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let ca = pki.join("ca.pem");
    let (a, b) = (Member::new(dir.path(), "a"), Member::new(dir.path(), "b"));
    let (kd_a, kd_b) = (a.start(), b.start());
    let (socket_a, socket_b) = (kd_a.addr.clone(), kd_b.addr.clone());
    for domain in ["a.test", "b.test"] {
        let o = fleet_put(&[&socket_a, &socket_b], &pki, domain);
        let out = text(&o);
        assert!(o.status.success(), "{out}");
        for s in [&socket_a, &socket_b] {
            assert!(out.contains(&format!("unix:{s}: Installed {domain}")), "{out}");
        }
    }
    // Both refuse a key that is not the certificate's: the cause (3, bad input) and each fix are kept.
    let o = fleet_key(&[&socket_a, &socket_b], &["put", "b.test", &p(&pki, "a.test.key"), "--cert", &p(&pki, "b.test.pem")]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert_eq!(text(&o).matches(".sock: failed: ").count(), 2, "{}", text(&o));
    assert!(text(&o).contains("(fix: "), "{}", text(&o));
    // --json on several keyds: one object per keyd, naming it.
    let o = fleet_key(&[&socket_a, &socket_b], &["has", "a.test", "--json"]);
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2, "{}", text(&o));
    for (line, socket) in lines.iter().zip([&socket_a, &socket_b]) {
        assert_eq!((line["found"].as_bool(), line["keyd"].as_str()), (Some(true), Some(format!("unix:{socket}").as_str())), "{line}");
    }
    let ls = fleet_key(&[&socket_a, &socket_b], &["ls", "--json"]);
    let listed: serde_json::Value = serde_json::from_slice(&ls.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&ls)));
    for row in listed["domains"].as_array().unwrap() {
        assert_eq!(row["held_by"].as_array().unwrap().len(), 2, "{row}");
        assert_eq!(row["agree"], true, "the same key file was put into both: {row}");
    }

    let mut server =
        Server::start(&["--keyd", &format!("unix:{socket_a}"), "--keyd", &format!("unix:{socket_b}"), "--keyd-health-ms", "100"]);
    for name in ["a.test", "b.test"] {
        assert!(served(&s_client(server.port(), Some(name), &ca, "-tls1_3"), name));
    }

    // One keyd killed: every handshake still succeeds, the first through a retry on the other.
    drop(kd_a);
    for i in 0..6 {
        let name = if i % 2 == 0 { "a.test" } else { "b.test" };
        let out = s_client(server.port(), Some(name), &ca, "-tls1_3");
        assert!(served(&out, name), "handshake {i} with keyd a killed: {out}\n{}", server.log());
    }
    let log = server.wait_log("keyd is down");
    assert!(log.contains("keyd is down") && log.contains(&socket_a), "{log}");
    let ls = fleet_key(&[&socket_a, &socket_b], &["ls"]);
    assert!(!ls.status.success(), "ls with a keyd down must fail: {}", text(&ls));
    assert!(text(&ls).contains(&format!("unix:{socket_a}: failed")) && text(&ls).contains("a.test"), "{}", text(&ls));

    // Back: taken in again after a PING, without a restart.
    let kd_a = a.start();
    let log = server.wait_log("keyd answers again");
    assert!(log.contains("keyd answers again"), "{log}");

    // Both down: once the PINGs have found it, handshakes are refused at
    // once with an alert, and the log names both keyds.
    let downs = |log: &str| log.matches("keyd is down").count();
    let before = downs(&server.log());
    drop(kd_a);
    drop(kd_b);
    let deadline = Instant::now() + Duration::from_secs(5);
    while downs(&server.log()) < before + 2 {
        assert!(Instant::now() < deadline, "the health checks did not find both keyds down: {}", server.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let started = Instant::now();
    let out = s_client(server.port(), Some("a.test"), &ca, "-tls1_3");
    assert!(!out.contains("subject=") && out.contains("alert handshake failure"), "served with both keyds down: {out}");
    assert!(started.elapsed() < Duration::from_secs(5), "refusal took {:?}", started.elapsed());
    let log = server.wait_log("none of them answers");
    let line = log.lines().find(|l| l.contains("none of them answers")).unwrap_or_else(|| panic!("{log}"));
    assert!(line.contains(&socket_a) && line.contains(&socket_b), "{line}");

    // One comes back: serving resumes.
    let _kd_b = b.start();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = s_client(server.port(), Some("b.test"), &ca, "-tls1_3");
        if served(&out, "b.test") {
            break;
        }
        assert!(Instant::now() < deadline, "not served after keyd b came back: {out}\n{}", server.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    server.assert_alive();
}

#[test]
fn key_commands_on_a_fleet_report_per_keyd_and_fail_if_any_failed() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let a = Member::new(dir.path(), "a");
    let kd_a = a.start();
    let down = dir.path().join("nobody.sock");
    let (up, down) = (kd_a.addr.as_str(), down.to_str().unwrap());

    let o = fleet_put(&[up, down], &pki, "a.test");
    let out = text(&o);
    assert!(!o.status.success(), "{out}");
    assert!(out.contains(&format!("unix:{up}: Installed a.test")), "the reachable keyd still takes the key: {out}");
    assert!(out.contains(&format!("unix:{down}: failed")) && out.contains("1 of 2 keyds failed"), "{out}");

    let o = fleet_key(&[up, down], &["rm", "a.test"]);
    assert!(!o.status.success() && text(&o).contains(&format!("unix:{up}: Removed a.test")), "{}", text(&o));

    let o = fleet_key(&[up, up], &["gen", "c.test"]);
    assert!(!o.status.success() && text(&o).contains("would make 2 different keys"), "{}", text(&o));
}
