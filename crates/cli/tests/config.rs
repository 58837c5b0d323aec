//! The whole configuration: `[[serve]]` tables run by `serve --config` and
//! by `up`, `config check` showing every service and refusing conflicts,
//! and `up` refusing a second run in one data directory or on a port
//! another `up` holds.
mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{dev_pki, free_port, p, run, sealtls, start_up, stop_up_cleanly, tcp_echo, text, write_mode, Server};

/// The development PKI plus a second client, `bob`.
fn pki(dir: &Path) {
    dev_pki(dir);
    let o = run(sealtls().args(["pki", "issue", "client", "--dir", dir.to_str().unwrap(), "--name", "bob"]));
    assert!(o.status.success(), "{}", text(&o));
}

/// Free ports for the built-in services, so that nothing here needs a fixed port.
fn builtins(d: &Path) -> String {
    format!(
        "[echo]\nlisten = \"127.0.0.1:{}\"\n[console]\nlisten = \"127.0.0.1:{}\"\n[keyless]\nlisten = \"127.0.0.1:{}\"\n\
         [offload]\nsocket = \"{}\"\ntrust = [\"ca.pem\"]\n[keyd]\nsocket = \"{}\"\n",
        free_port(),
        free_port(),
        free_port(),
        d.join("offload.sock").display(),
        d.join("keyd.sock").display()
    )
}

/// A config with two [[serve]] tables: an echo server letting in only CN
/// alice, and a proxy to `backend`; their ports.
fn two_serves(d: &Path, backend: &str) -> (std::path::PathBuf, u16, u16) {
    let (echo, proxy) = (free_port(), free_port());
    let config = format!(
        "[tls]\nsrv_cert_file = \"localhost.pem\"\nsrv_key_file = \"localhost.key\"\n{}\
         [[serve]]\nlisten = \"127.0.0.1:{echo}\"\ncert_file = \"localhost.pem\"\nkey_file = \"localhost.key\"\nca_file = \"ca.pem\"\nallow_cn = [\"alice\"]\n\
         [[serve]]\nlisten = \"127.0.0.1:{proxy}\"\ntarget = \"{backend}\"\nidle_timeout_secs = 30\n",
        builtins(d)
    );
    let path = d.join("sealtls.toml");
    write_mode(&path, &config, 0o600);
    (path, echo, proxy)
}

/// `sealtls connect --send hello`, as `who` when given.
fn hello(d: &Path, port: u16, who: Option<&str>) -> std::process::Output {
    let mut c = sealtls();
    c.args(["connect", &format!("127.0.0.1:{port}"), "--ca", &p(d, "ca.pem"), "--server-name", "localhost", "--send", "hello"]);
    if let Some(who) = who {
        c.args(["--cert", &p(d, &format!("{who}.pem")), "--key", &p(d, &format!("{who}.key"))]);
    }
    run(&mut c)
}

/// openssl s_client as bob, input open for a second so a TLS 1.3 refusal is read.
fn s_client_as_bob(d: &Path, port: u16) -> String {
    let script = format!(
        "sleep 1 | openssl s_client -connect 127.0.0.1:{port} -CAfile {} -servername localhost -cert {} -key {}",
        p(d, "ca.pem"),
        p(d, "bob.pem"),
        p(d, "bob.key")
    );
    text(&run(Command::new("sh").arg("-c").arg(script)))
}

/// Both tables serve: alice reaches the echo server, bob is refused with
/// access_denied, and the proxy carries bytes to the backend and back.
fn both_tables_serve(d: &Path, echo: u16, proxy: u16) {
    let o = hello(d, echo, Some("alice"));
    assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).contains("hello"), "{}", text(&o));
    let o = hello(d, echo, Some("bob"));
    assert_eq!(o.status.code(), Some(6), "{}", text(&o));
    assert!(text(&o).contains("access_denied"), "{}", text(&o));
    let out = s_client_as_bob(d, echo);
    assert!(out.contains("alert access denied"), "{out}");
    let o = hello(d, proxy, None);
    assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).contains("hello"), "{}", text(&o));
}

#[test]
fn serve_config_runs_every_serve_table() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    pki(d);
    let (config, echo, proxy) = two_serves(d, &tcp_echo());
    let server = Server::spawn(&["serve", "--config", config.to_str().unwrap()]);
    let log = server.wait_log("forwarding");
    assert!(log.contains(&format!("listen=127.0.0.1:{echo}")) && log.contains("[[serve]] #1"), "{log}");
    assert!(log.contains(&format!("listen=127.0.0.1:{proxy}")) && log.contains("[[serve]] #2"), "{log}");
    both_tables_serve(d, echo, proxy);

    // The table's rules are read again on SIGHUP: bob in, alice out.
    let edited = std::fs::read_to_string(&config).unwrap().replace("allow_cn = [\"alice\"]", "allow_cn = [\"bob\"]");
    write_mode(&config, &edited, 0o600);
    let o = run(std::process::Command::new("kill").args(["-HUP", &server.child.id().to_string()]));
    assert!(o.status.success(), "{}", text(&o));
    let log = server.wait_log("reloaded client rules");
    assert!(log.contains("reloaded client rules for serve 127.0.0.1:") && log.contains("cn=bob"), "{log}");
    assert!(hello(d, echo, Some("bob")).status.success(), "{}", server.log());
    assert_eq!(hello(d, echo, Some("alice")).status.code(), Some(6), "{}", server.log());

    // A table added above the others: each running server finds its own table again by its
    // listen address, not by its place in the file, and keeps requiring a client certificate.
    let first = free_port();
    let added = format!("[[serve]]\nlisten = \"127.0.0.1:{first}\"\ncert_file = \"localhost.pem\"\nkey_file = \"localhost.key\"\nclient_auth = \"none\"\n[[serve]]");
    let shifted = std::fs::read_to_string(&config).unwrap().replacen("[[serve]]", &added, 1);
    write_mode(&config, &shifted, 0o600);
    let hup = || assert!(run(std::process::Command::new("kill").args(["-HUP", &server.child.id().to_string()])).status.success());
    hup();
    server.wait_log(&format!("reload: nothing changed for serve 127.0.0.1:{echo}"));
    assert!(hello(d, echo, Some("bob")).status.success(), "{}", server.log());
    assert!(!hello(d, echo, None).status.success(), "a client without a certificate got in after the reload:\n{}", server.log());
    // An edit a reload cannot apply is refused, not applied halfway.
    let edited = std::fs::read_to_string(&config).unwrap().replace("allow_cn = [\"bob\"]", "allow_cn = [\"bob\"]\ntls = \"1.2\"");
    write_mode(&config, &edited, 0o600);
    hup();
    let log = server.wait_log("edits a reload does not apply");
    assert!(
        log.contains(&format!("(listen 127.0.0.1:{echo}) has edits a reload does not apply")) && log.contains("restart to apply them"),
        "{log}"
    );
    let shifted = std::fs::read_to_string(&config).unwrap().replace(&added, "[[serve]]").replace("\ntls = \"1.2\"", "");
    write_mode(&config, &shifted, 0o600);
    std::fs::write(&config, std::fs::read_to_string(&config).unwrap().replace("allow_cn = [\"bob\"]", "allow_cn = [\"alice\"]")).unwrap();

    // [status] in the file gives the same page --status would, for both tables.
    let page = free_port();
    let mut text_of = std::fs::read_to_string(&config).unwrap();
    text_of.push_str(&format!("\n[status]\nlisten = \"127.0.0.1:{page}\"\n"));
    let with_status = d.join("with-status.toml");
    std::fs::write(&with_status, text_of).unwrap();
    drop(server);
    let server = Server::spawn(&["serve", "--config", with_status.to_str().unwrap()]);
    assert!(server.wait_log("status listen=").contains(&format!("status listen=127.0.0.1:{page}")), "{}", server.log());
    let o = run(std::process::Command::new("curl").args(["-s", &format!("http://127.0.0.1:{page}/_status")]));
    let status: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o)));
    let addresses: Vec<_> = status["listeners"].as_array().unwrap().iter().map(|l| l["address"].as_str().unwrap().to_owned()).collect();
    for port in [echo, proxy] {
        assert!(addresses.contains(&format!("127.0.0.1:{port}")), "{status}");
    }
    drop(server);

    // A flag the tables replace is refused, not ignored; one that applies to all is taken.
    let o = run(sealtls().args([
        "serve",
        "--config",
        config.to_str().unwrap(),
        "--target",
        "127.0.0.1:1",
        "-p",
        "1",
        "--status",
        "127.0.0.1:0",
    ]));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("--port, --target would have no effect") && text(&o).contains("[[serve]] tables"), "{}", text(&o));

    // Certificate flags still make it one server, with [tls] for the rest as before.
    let single = Server::start(&["--config", config.to_str().unwrap(), "--cert", &p(d, "localhost.pem"), "--key", &p(d, "localhost.key")]);
    assert!(!single.log().contains("[[serve]]"), "{}", single.log());
    let o = hello(d, single.port().parse().unwrap(), None);
    assert!(o.status.success(), "{}", text(&o));
}

/// `sealtls up ...` in `dir`, its standard output read up to the banner's end.
struct Up {
    child: Child,
    banner: String,
    stderr: Arc<Mutex<String>>,
}

impl Up {
    fn start(dir: &Path, args: &[&str]) -> Up {
        let (child, banner, stderr) = start_up(sealtls().arg("up").args(args).current_dir(dir));
        Up { child, banner, stderr }
    }

    /// SIGTERM, then a clean exit 0.
    fn stop(mut self) {
        stop_up_cleanly(&mut self.child, &self.stderr);
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn up_args<'a>(data: &'a str, config: &'a str, device: &'a str) -> Vec<&'a str> {
    vec!["--data-dir", data, "--config", config, "--device-key", device]
}

/// `up` runs the two [[serve]] tables, a keyless [[serve]] signing through
/// up's own keyd, and a [[tunnel]] carrying plain connections as alice to
/// the first table.
#[test]
fn up_runs_every_serve_and_tunnel_table_beside_its_own_services() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    pki(d);
    let (config, echo, proxy) = two_serves(d, &tcp_echo());
    let (keyless, tunnel) = (free_port(), free_port());
    let mut body = std::fs::read_to_string(&config).unwrap();
    body.push_str(&format!(
        "[[serve]]\nlisten = \"127.0.0.1:{keyless}\"\nkeyd = \"unix:keyd.sock\"\n\
         [[tunnel]]\nlisten = \"127.0.0.1:{tunnel}\"\ntarget = \"localhost:{echo}\"\nca_file = \"ca.pem\"\ncert_file = \"alice.pem\"\nkey_file = \"alice.key\"\n"
    ));
    write_mode(&config, &body, 0o600);
    let (data, device) = (p(d, "data"), p(d, "secret/device.key"));
    let up = Up::start(d, &up_args(&data, config.to_str().unwrap(), &device));
    for (name, port) in [("TLS server", echo), ("TLS proxy", proxy), ("TLS server", keyless), ("TLS tunnel", tunnel)] {
        assert!(up.banner.contains(&format!("{name:<20} 127.0.0.1:{port}")), "{}", up.banner);
    }
    both_tables_serve(d, echo, proxy);

    // The keyless table: up's development certificate, signed for by up's keyd.
    let out = text(&run(Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{keyless}"), "-servername", "localhost"])
        .args(["-CAfile", &p(d, "data/ca.pem"), "-verify_return_error"])));
    assert!(out.contains("Verify return code: 0 (ok)"), "{out}");

    // The tunnel: plain bytes in, through TLS as alice (whom [[serve]] #1 lets in), echoed back.
    let mut plain = std::net::TcpStream::connect(("127.0.0.1", tunnel)).unwrap();
    plain.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    plain.write_all(b"through the tunnel\n").unwrap();
    let mut back = [0u8; 19];
    plain.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"through the tunnel\n");

    // An edited [[tunnel]] table is found again by its listen address and its edit is
    // refused with a restart to do, rather than ignored as if nothing changed.
    let edited =
        std::fs::read_to_string(&config).unwrap().replace("target = \"localhost:", "server_name = \"localhost\"\ntarget = \"localhost:");
    write_mode(&config, &edited, 0o600);
    assert!(run(Command::new("kill").args(["-HUP", &up.child.id().to_string()])).status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    while !up.stderr.lock().unwrap().contains("was edited") {
        assert!(Instant::now() < deadline, "no refusal for the edited tunnel:\n{}", up.stderr.lock().unwrap());
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = up.stderr.lock().unwrap().clone();
    assert!(log.contains(&format!("[[tunnel]] #1 (listen 127.0.0.1:{tunnel}) was edited")) && log.contains("restart to apply it"), "{log}");
    up.stop();
}

#[test]
fn a_second_up_names_the_first_by_pid() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    pki(d);
    let (config, ..) = two_serves(d, &tcp_echo());
    let (data, device) = (p(d, "data"), p(d, "secret/device.key"));
    let first = Up::start(d, &up_args(&data, config.to_str().unwrap(), &device));
    let pid = first.child.id();
    let lock = std::fs::read_to_string(d.join("data/up.pid")).unwrap();
    assert!(lock.starts_with(&format!("{pid}\n")) && lock.contains(" up "), "{lock}");

    // The same data directory: refused at once, naming the first.
    let o = run(sealtls().arg("up").args(up_args(&data, config.to_str().unwrap(), &device)).current_dir(d));
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(text(&o).contains(&format!("another sealtls up runs in {data} (pid {pid}:")), "{}", text(&o));
    assert!(text(&o).contains(&format!("kill {pid}")), "{}", text(&o));

    // Another data directory, the same ports: the first up holds them.
    let other = p(d, "other");
    let o = run(sealtls().arg("up").args(up_args(&other, config.to_str().unwrap(), &device)).current_dir(d));
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    assert!(text(&o).contains("[echo] listen") && text(&o).contains(&format!("another sealtls up (pid {pid}:")), "{}", text(&o));
    // An address from a flag: the fix names the flag, not the file.
    let held = std::fs::read_to_string(&config).unwrap();
    let echo = held.split("[echo]\nlisten = \"").nth(1).and_then(|r| r.split('"').next()).unwrap().to_owned();
    let o = run(sealtls().arg("up").args(up_args(&other, config.to_str().unwrap(), &device)).args(["--echo-listen", &echo]).current_dir(d));
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    assert!(
        text(&o).contains("or give --echo-listen another address\n")
            || text(&o).trim_end().ends_with("or give --echo-listen another address"),
        "{}",
        text(&o)
    );
    first.stop();

    // Stopped, or killed (the kernel drops the lock with the process), the directory can be used again.
    let again = Up::start(d, &up_args(&data, config.to_str().unwrap(), &device));
    drop(again);
    // The killed up's keyd stops by itself within seconds and removes its socket.
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::os::unix::net::UnixStream::connect(d.join("keyd.sock")).is_ok() {
        assert!(Instant::now() < deadline, "keyd outlived a killed up");
        std::thread::sleep(Duration::from_millis(50));
    }
    let third = Up::start(d, &up_args(&data, config.to_str().unwrap(), &device));
    third.stop();
}

fn check(config: &Path) -> std::process::Output {
    run(sealtls().args(["config", "check", config.to_str().unwrap()]))
}

/// A config that `config check` must refuse with exit 3, naming `needles`.
fn refused(d: &Path, body: &str, needles: &[&str]) {
    let path = d.join("bad.toml");
    write_mode(&path, body, 0o600);
    let o = check(&path);
    assert_eq!(o.status.code(), Some(3), "{body}\n{}", text(&o));
    for n in needles {
        assert!(text(&o).contains(n), "{n} missing: {}", text(&o));
    }
    assert!(text(&o).contains("fix: "), "{}", text(&o));
}

#[test]
fn config_check_shows_every_service_and_refuses_conflicts() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    pki(d);
    let (config, echo, proxy) = two_serves(d, "127.0.0.1:9");
    let tunnel = free_port();
    let mut full = std::fs::read_to_string(&config).unwrap();
    full.push_str(&format!(
        "[[tunnel]]\nlisten = \"127.0.0.1:{tunnel}\"\ntarget = \"localhost:{echo}\"\nca_file = \"ca.pem\"\ncert_file = \"alice.pem\"\nkey_file = \"alice.key\"\nverify_cn = [\"localhost\"]\n\
         [status]\nlisten = \"unix:status.sock\"\n"
    ));
    write_mode(&config, &full, 0o600);
    let o = check(&config);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let row = |what: &str, rest: &str| format!("{what:<19} {rest}");
    for needle in [
        format!("{:<21} 127.0.0.1:{echo}  TLS server", "[[serve]] #1"),
        format!("{:<21} 127.0.0.1:{proxy}  TLS proxy", "[[serve]] #2"),
        format!("{:<21} 127.0.0.1:{tunnel}  TLS tunnel", "[[tunnel]] #1"),
        row("allow", "cn=alice"),
        row("does", "proxy to 127.0.0.1:9"),
        row("verify", "chain, name localhost and cn=localhost"),
        row("certificate", "CN=alice"),
        format!("{:<21} unix:{}", "[status]", d.join("status.sock").display()),
        "TLS echo server".into(),
        "keyless TLS server".into(),
    ] {
        assert!(out.contains(&needle), "{needle} missing:\n{out}");
    }
    assert!(out.contains("(365 days)") || out.contains("(364 days)"), "{out}");
    assert!(out.contains(&row("limits", "handshake 10 s, idle 300 s, lifetime unlimited, connect 10 s, 10000 connections")), "{out}");

    let builtins = builtins(d);
    let echo_port = builtins.split("listen = \"").nth(1).unwrap().split('"').next().unwrap().to_owned();
    let base = format!(
        "{builtins}[[serve]]\nlisten = \"127.0.0.1:{}\"\ncert_file = \"localhost.pem\"\nkey_file = \"localhost.key\"\n",
        free_port()
    );
    // A second service on the echo server's address.
    refused(
        d,
        &format!("{base}[[serve]]\nlisten = \"{echo_port}\"\ncert_file = \"localhost.pem\"\nkey_file = \"localhost.key\"\n"),
        &[&format!("[[serve]] #2 listen = \"{echo_port}\": [echo] listen already uses {echo_port}")],
    );
    // A wildcard address takes the port on every address.
    let port = echo_port.rsplit(':').next().unwrap();
    refused(
        d,
        &format!("{base}[[serve]]\nlisten = \"0.0.0.0:{port}\"\ncert_file = \"localhost.pem\"\nkey_file = \"localhost.key\"\n"),
        &["[[serve]] #2 listen", "[echo] listen already uses"],
    );
    // A tunnel on the offload daemon's socket.
    refused(
        d,
        &format!(
            "{base}[[tunnel]]\nlisten = \"unix:{}\"\ntarget = \"localhost:1\"\nca_file = \"ca.pem\"\n",
            d.join("offload.sock").display()
        ),
        &["[[tunnel]] #1 listen", "[offload] socket already uses"],
    );
    // A target off this machine.
    refused(d, &format!("{base}target = \"192.0.2.1:80\"\n"), &["[[serve]] #1 target = \"192.0.2.1:80\"", "unsafe_target = true"]);
    let allowed = format!("{base}target = \"192.0.2.1:80\"\nunsafe_target = true\n");
    write_mode(&d.join("ok.toml"), &allowed, 0o600);
    assert!(check(&d.join("ok.toml")).status.success());
    // ACL entries parsed as the flags parse them.
    refused(
        d,
        &format!("{base}ca_file = \"ca.pem\"\nallow_uri = [\"spiffe://e/a*\"]\n"),
        &["[[serve]] #1 allow_uri = [\"spiffe://e/a*\"]", "whole path segments"],
    );
    refused(d, &format!("{base}ca_file = \"ca.pem\"\nallow_spki_sha256 = [\"abc\"]\n"), &["[[serve]] #1 allow_spki_sha256 = [\"abc\"]"]);
    refused(d, &format!("{base}allow_cn = [\"alice\"]\n"), &["[[serve]] #1 allow_*", "ca_file"]);
    // Unknown keys name the table they are in.
    refused(d, &format!("{base}[[serve]]\nlisen = \"127.0.0.1:1\"\n"), &["[[serve]] #2: unknown field `lisen`"]);
    refused(d, &format!("{base}[status]\nlisten = \"0.0.0.0:9100\"\n"), &["[status] listen = \"0.0.0.0:9100\"", "unsafe_status = true"]);
    refused(d, &base.replace("[keyd]\n", "[keyd]\nbackend = \"pkcs11\"\n"), &["[keyd] token", "pin_file"]);
    // Limits that would let nothing through.
    refused(d, &format!("{base}handshake_timeout_secs = 0\n"), &["[[serve]] #1 handshake_timeout_secs = 0", "give at least 1"]);
    let tunnel = "[[tunnel]]\nlisten = \"127.0.0.1:1\"\ntarget = \"localhost:1\"\nca_file = \"ca.pem\"\n";
    refused(d, &format!("{base}{tunnel}connect_timeout_secs = 0\n"), &["[[tunnel]] #1 connect_timeout_secs = 0", "give at least 1"]);
    refused(
        d,
        &format!("{base}idle_timeout_secs = 18446744073709551615\n"),
        &["[[serve]] #1 idle_timeout_secs = 18446744073709551615", "give at most 31536000"],
    );
}

#[test]
fn the_example_configuration_is_valid() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    pki(d);
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/sealtls.toml");
    std::fs::copy(&example, d.join("sealtls.toml")).unwrap();
    let o = check(&d.join("sealtls.toml"));
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    for needle in ["[[serve]] #1", "[[serve]] #2", "[[tunnel]] #1", "[status]", "keyd store"] {
        assert!(out.contains(needle), "{needle} missing:\n{out}");
    }
}

/// `[keyd] seal = "tpm"` reaches the keyd `up` starts: the store key is sealed
/// by a software TPM, no device secret is made, and the keyless server serves.
#[cfg(feature = "tpm")]
#[test]
fn up_starts_keyd_with_tpm_sealing_from_the_config() {
    if Command::new("swtpm").arg("--version").output().is_err() {
        eprintln!("skipped: swtpm is not installed");
        return;
    }
    let tpm = common::Swtpm::start();
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    pki(d);
    let builtins = builtins(d);
    let keyless = builtins.split("[keyless]\nlisten = \"").nth(1).unwrap().split('"').next().unwrap().to_owned();
    let config = format!(
        "[tls]\nsrv_cert_file = \"localhost.pem\"\nsrv_key_file = \"localhost.key\"\n{}seal = \"tpm\"\ntpm = \"{}\"\n",
        builtins,
        tpm.tcti()
    );
    write_mode(&d.join("sealtls.toml"), &config, 0o600);
    let (data, device) = (p(d, "data"), p(d, "secret/device.key"));
    let up = Up::start(d, &up_args(&data, &p(d, "sealtls.toml"), &device));
    assert!(d.join("data/keyd/tpm-sealed-store-key").exists(), "{}", up.stderr.lock().unwrap());
    assert!(!d.join("secret/device.key").exists() && !up.banner.contains("keyd device secret"), "{}", up.banner);
    assert!(up.stderr.lock().unwrap().contains("sealed a new store key to the TPM"), "{}", up.stderr.lock().unwrap());
    let out = text(&run(Command::new("openssl").args([
        "s_client",
        "-connect",
        &keyless,
        "-servername",
        "localhost",
        "-CAfile",
        &p(d, "data/ca.pem"),
        "-verify_return_error",
    ])));
    assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
    up.stop();
}
