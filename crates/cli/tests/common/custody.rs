//! keyd for the tests: a development PKI with a.test and b.test, keyd on a
//! sealed-file store, `sealtls key`, and openssl s_client against keyless
//! servers.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::{p, run, sealtls, text, Server};

/// A CA with server certificates for a.test and b.test.
pub fn pki(dir: &Path) -> PathBuf {
    let d = dir.join("pki");
    let ds = d.to_str().unwrap();
    for args in [
        vec!["pki", "init", "--dir", ds],
        vec!["pki", "issue", "server", "--dir", ds, "--name", "a.test"],
        vec!["pki", "issue", "server", "--dir", ds, "--name", "b.test"],
    ] {
        let o = run(sealtls().args(&args));
        assert!(o.status.success(), "{}", text(&o));
    }
    d
}

/// `sealtls keyd` on a sealed-file store; `addr` is its socket.
pub fn keyd(data: &Path, device: &Path, extra: &[&str]) -> Server {
    Server::spawn(&[&["keyd", "--data-dir", data.to_str().unwrap(), "--device-key", device.to_str().unwrap()], extra].concat())
}

pub fn key(socket: &str, args: &[&str]) -> Output {
    run(sealtls().arg("key").args(args).args(["--keyd", &format!("unix:{socket}")]))
}

pub fn put(socket: &str, pki: &Path, domain: &str) {
    let o = key(socket, &["put", domain, &p(pki, &format!("{domain}.key")), "--cert", &p(pki, &format!("{domain}.pem"))]);
    assert!(o.status.success() && text(&o).contains(&format!("Installed {domain}")), "{}", text(&o));
}

/// openssl s_client against `port`, with SNI `name` (none for `None`), verifying against `ca`.
pub fn s_client(port: &str, name: Option<&str>, ca: &Path, version: &str) -> String {
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect", &format!("127.0.0.1:{port}"), "-CAfile", ca.to_str().unwrap(), "-verify_return_error", version]);
    match name {
        Some(n) => cmd.args(["-servername", n]),
        None => cmd.arg("-noservername"),
    };
    text(&run(&mut cmd))
}

pub fn served(out: &str, name: &str) -> bool {
    (out.contains(&format!("subject=CN = {name}")) || out.contains(&format!("subject=CN={name}")))
        && out.contains("Verify return code: 0 (ok)")
}
