//! keyd for the tests: a development PKI with a.test and b.test, keyd on a
//! sealed-file store, `sealtls key`, and openssl s_client against keyless
//! servers.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::{p, run, sealtls, text, write_mode, Server};

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

/// A throw-away SoftHSM2 token labelled "sealtls" with user PIN 1234.
pub fn softhsm(dir: &Path) -> (PathBuf, PathBuf) {
    let tokens = dir.join("tokens");
    std::fs::create_dir(&tokens).unwrap();
    let conf = dir.join("softhsm2.conf");
    std::fs::write(&conf, format!("directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n", tokens.display())).unwrap();
    let o = run(Command::new("softhsm2-util").env("SOFTHSM2_CONF", &conf).args([
        "--init-token",
        "--free",
        "--label",
        "sealtls",
        "--pin",
        "1234",
        "--so-pin",
        "5678",
    ]));
    assert!(o.status.success(), "{}", text(&o));
    let pin = dir.join("pin");
    write_mode(&pin, "1234\n", 0o600);
    (conf, pin)
}
