//! `sealtls keyd --seal tpm`: the store key sealed by a software TPM
//! (swtpm), each test with its own swtpm on free ports: keys survive a
//! restart; another TPM, a damaged blob or a changed PCR is refused.
#![cfg(feature = "tpm")]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{p, run, sealtls, text, Server, Swtpm};

fn args<'a>(data: &'a str, tcti: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    [&["keyd", "--data-dir", data, "--seal", "tpm", "--tpm", tcti], extra].concat()
}

fn keyd(data: &Path, tpm: &Swtpm, extra: &[&str]) -> Server {
    Server::spawn(&args(data.to_str().unwrap(), &tpm.tcti(), extra))
}

/// keyd that must refuse to start.
fn refused(data: &Path, tpm: &Swtpm, extra: &[&str]) -> String {
    let o = run(sealtls().args(args(data.to_str().unwrap(), &tpm.tcti(), extra)));
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    text(&o)
}

fn key(socket: &str, args: &[&str]) -> Output {
    run(sealtls().arg("key").args(args).args(["--keyd", &format!("unix:{socket}")]))
}

/// A CA with a server certificate for a.test.
fn pki(dir: &Path) -> PathBuf {
    let d = dir.join("pki");
    let ds = d.to_str().unwrap();
    for args in [vec!["pki", "init", "--dir", ds], vec!["pki", "issue", "server", "--dir", ds, "--name", "a.test"]] {
        let o = run(sealtls().args(&args));
        assert!(o.status.success(), "{}", text(&o));
    }
    d
}

fn put(socket: &str, pki: &Path) {
    let o = key(socket, &["put", "a.test", &p(pki, "a.test.key"), "--cert", &p(pki, "a.test.pem")]);
    assert!(o.status.success(), "{}", text(&o));
}

fn has(socket: &str) {
    let o = key(socket, &["has", "a.test"]);
    assert!(o.status.success() && text(&o).contains("Key found"), "{}", text(&o));
}

fn serves(socket: &str, ca: &Path) {
    let server = Server::start(&["--keyd", &format!("unix:{socket}")]);
    let out = text(&run(Command::new("openssl").args([
        "s_client",
        "-connect",
        &format!("127.0.0.1:{}", server.port()),
        "-CAfile",
        ca.to_str().unwrap(),
        "-verify_return_error",
        "-servername",
        "a.test",
        "-tls1_3",
    ])));
    assert!(out.contains("Verify return code: 0 (ok)") && out.contains("a.test"), "{out}");
}

#[test]
fn tpm_sealed_keys_survive_a_restart_and_another_tpm_or_a_damaged_blob_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let data = dir.path().join("keyd");
    let tpm = Swtpm::start();
    {
        let kd = keyd(&data, &tpm, &[]);
        put(&kd.addr, &pki);
        assert!(kd.log().contains("sealed a new store key to the TPM"), "{}", kd.log());
    }
    // Only the TPM's sealed blob is on disk, 0600; no device secret was made.
    let blob = data.join("tpm-sealed-store-key");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&blob).unwrap().permissions().mode() & 0o777, 0o600);
    {
        let kd = keyd(&data, &tpm, &[]);
        has(&kd.addr);
        serves(&kd.addr, &pki.join("ca.pem"));
    }

    // The same directory under another TPM: refused, naming the TCTI and the reason.
    let other = Swtpm::start();
    let out = refused(&data, &other, &[]);
    assert!(out.contains(&other.tcti()) && out.contains("sealed by another TPM") && out.contains("serves nothing"), "{out}");

    // A flipped byte of the blob: refused.
    let good = std::fs::read(&blob).unwrap();
    for at in [good.len() / 2, good.len() - 5] {
        let mut bad = good.clone();
        bad[at] ^= 1;
        std::fs::write(&blob, &bad).unwrap();
        let out = refused(&data, &tpm, &[]);
        assert!(out.contains("tpm-sealed-store-key"), "{out}");
    }
    std::fs::write(&blob, &good).unwrap();
    let kd = keyd(&data, &tpm, &[]);
    has(&kd.addr);
    drop(kd);

    // Opened with --seal file instead: refused, with the flag to use.
    let o = run(sealtls().args(["keyd", "--data-dir", data.to_str().unwrap(), "--device-key", &p(dir.path(), "device.key")]));
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(text(&o).contains("--seal tpm"), "{}", text(&o));
}

#[test]
fn a_changed_pcr_makes_the_store_refuse_to_open() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let data = dir.path().join("keyd");
    let tpm = Swtpm::start();
    {
        let kd = keyd(&data, &tpm, &["--tpm-pcrs", "16"]);
        put(&kd.addr, &pki);
    }
    {
        let kd = keyd(&data, &tpm, &["--tpm-pcrs", "16"]);
        has(&kd.addr);
    }
    let out = refused(&data, &tpm, &[]);
    assert!(out.contains("--tpm-pcrs 16"), "{out}");

    let o = run(Command::new("tpm2_pcrextend").args(["-T", &tpm.tcti(), &format!("16:sha256={}", "ab".repeat(32))]));
    assert!(o.status.success(), "{}", text(&o));
    let out = refused(&data, &tpm, &["--tpm-pcrs", "16"]);
    assert!(out.contains("PCR policy") && out.contains("PCRs 16 differ") && out.contains("re-provision the keys"), "{out}");
}
