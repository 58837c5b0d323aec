//! The echoctl_tls console, sealtls.toml and `sealtls up`, driven the way
//! people drive them: telnet-style sessions, openssl as the peer, signals.
mod common;

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use common::memory::{p256_key_needles, process_tree, scan_memory};
use common::*;

const PROMPT: &str = "echoctl_tls> ";

/// `sealtls console` on a free loopback port with `config`.
fn console(dir: &Path, config: &Path, extra: &[&str]) -> Server {
    let config = config.to_str().unwrap();
    let mut args = vec!["console", "--config", config, "--console-listen", "127.0.0.1:0", "--data-dir"];
    args.push(dir.to_str().unwrap());
    args.extend_from_slice(extra);
    Server::spawn(&args)
}

/// A config holding the development PKI's files inline, as in BitVisor's defconfig.
fn inline_config(d: &Path) -> std::path::PathBuf {
    let cfg = d.join("inline.toml");
    let text = format!(
        "[tls]\nsrv_cert = {}\nsrv_key = {}\nca_cert = {}\n",
        inline(&d.join("localhost.pem")),
        inline(&d.join("localhost.key")),
        inline(&d.join("ca.pem"))
    );
    write_mode(&cfg, &text, 0o600);
    cfg
}

fn enter_echoctl(addr: &str) -> Telnet {
    let mut t = Telnet::connect(addr);
    t.expect("> ");
    t.run("echoctl_tls", PROMPT);
    t
}

fn listening_port(output: &str) -> u16 {
    let addr = output.split("Listening on ").nth(1).unwrap_or_else(|| panic!("no address in {output}"));
    addr.split_whitespace().next().unwrap().rsplit(':').next().unwrap().parse().unwrap()
}

#[test]
fn console_drives_an_echo_server_like_a_person_with_telnet() {
    let tmp = tempfile::tempdir().unwrap();
    let d = dev_pki(tmp.path());
    let c = console(&d, &inline_config(&d), &[]);
    let mut t = Telnet::connect(&c.addr);
    // A telnet client's option negotiation is refused and does not reach the shell.
    t.stream.write_all(&[255, 253, 1, 255, 251, 31]).unwrap();
    t.expect("> ");
    let entered = t.run("echoctl_tls", PROMPT);
    assert!(!entered.contains("error") && !entered.contains("unknown"), "telnet bytes reached the shell: {entered}");
    let refusals = [255, 252, 1, 255, 254, 31]; // WONT ECHO, DONT NAWS
    assert!(t.raw.windows(6).any(|w| w == refusals), "telnet options must be refused: {:?}", t.raw);
    let help = t.run("help", PROMPT);
    assert!(help.contains("usage:\n  client connect <ipaddr> <port> [netif]  Connect to echo server.\n  client send                             Send a message to client.\n  server start <port> [netif]             Start echo server.\n"), "{help}");

    let started = t.run("server start 0", PROMPT);
    assert!(started.starts_with("Starting TLS server (Port: 0)...\n") && started.contains("Done.\n"), "{started}");
    let port = listening_port(&started);

    let connected = t.run(&format!("client connect 127.0.0.1 {port}"), PROMPT);
    assert!(connected.contains(&format!("Connecting to TLS server at 127.0.0.1:{port} (7f000001)\n")), "{connected}");
    assert!(connected.contains("Connected: TLSv1.3") && connected.contains("Done.\n"), "{connected}");
    t.line("client send");
    t.expect("Received.\nHello, BitVisor with TLS!\n");
    t.expect(PROMPT);

    // The same server, reached by openssl over TLS 1.2 with full verification, echoes.
    let out = interactive_echo(
        std::process::Command::new("openssl").args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-tls1_2",
            "-CAfile",
            &p(&d, "ca.pem"),
            "-verify_return_error",
            "-verify_hostname",
            "localhost",
        ]),
        "from openssl",
    );
    assert_eq!(echo_line_count(&out, "from openssl"), 1, "{out}");
    assert!(out.contains("Protocol  : TLSv1.2"), "{out}");

    // A big transfer through it keeps its SHA-256.
    let file = d.join("payload.bin");
    let data: Vec<u8> = (0..64 * 1024 * 1024u32).map(|i| (i.wrapping_mul(2654435761) >> 11) as u8).collect();
    std::fs::write(&file, &data).unwrap();
    let o = run(sealtls().args([
        "send",
        &format!("127.0.0.1:{port}"),
        "--server-name",
        "localhost",
        "--ca",
        &p(&d, "ca.pem"),
        "--file",
        file.to_str().unwrap(),
        "--json",
    ]));
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["transfer"]["bytes_confirmed"], data.len() as u64);

    let status = t.run("status", PROMPT);
    assert!(status.contains("sent 26 bytes, received 26 bytes"), "{status}");
    assert!(status.contains(&format!("bytes in {}", 26 + 13 + data.len())), "{status}");

    // Stopping the server closes our client cleanly (close_notify), and says so.
    let stopped = t.run(&format!("server stop {port}"), PROMPT);
    assert!(stopped.contains("Stopped the TLS server") && stopped.contains("Done."), "{stopped}");
    t.expect(&format!("the server 127.0.0.1:{port} closed the connection."));
    t.expect(PROMPT);
    let refused = t.run(&format!("client connect 127.0.0.1 {port}"), PROMPT);
    assert!(refused.contains("error: ") && refused.contains("fix: ") && !refused.contains("Done."), "{refused}");
    t.line("quit");
    assert!(t.closed());
}

#[test]
fn console_refuses_junk_and_floods_and_keeps_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let d = dev_pki(tmp.path());
    let cfg = d.join("files.toml");
    write_mode(&cfg, "[tls]\nsrv_cert_file = \"localhost.pem\"\nsrv_key_file = \"localhost.key\"\nca_cert_file = \"ca.pem\"\n", 0o644);
    let mut c = console(&d, &cfg, &[]);
    let mut t = enter_echoctl(&c.addr);
    assert!(t.run(&"a".repeat(3000), PROMPT).contains("line longer than 1024 bytes; ignored"));
    t.stream.write_all(b"\x01\x02\x03 \xc3\x28 junk\r\n").unwrap();
    assert!(t.expect(PROMPT).contains("control bytes or is not UTF-8"));
    let bad_port = t.run("server start 99999", PROMPT);
    assert!(bad_port.contains("`99999` is not a port number") && bad_port.contains("usage:"), "{bad_port}");
    assert!(t.run("frobnicate now", PROMPT).contains("`frobnicate` is not a command"));
    let no_client = t.run("client send", PROMPT);
    assert!(no_client.contains("error: no client connection is open") && no_client.contains("fix: connect first"), "{no_client}");
    assert!(t.run("server start 0 nosuchif0", PROMPT).contains("no network interface named `nosuchif0`"));
    let no_server = t.run("server stop 9", PROMPT);
    assert!(no_server.contains("no echo server runs on port 9"), "{no_server}");

    // More sessions than allowed: the extra ones are told, the rest work.
    let mut flood: Vec<Telnet> = (0..140).map(|_| Telnet::connect(&c.addr)).collect();
    let mut refused = 0;
    for s in &mut flood {
        if s.expect_any(&["> ", "try again later"]).contains("too many console sessions") {
            refused += 1;
        }
    }
    assert_eq!(refused, 140 + 1 - 128, "sessions beyond 128 are refused");
    drop(flood);
    c.assert_alive();
    let started = t.run("server start 0", PROMPT);
    assert!(started.contains("Done."), "{started}");
    // The flood's slots are freed as the console notices the closed sockets.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut again = loop {
        let mut s = Telnet::connect(&c.addr);
        if !s.expect_any(&["> ", "try again later"]).contains("too many") {
            break s;
        }
        assert!(Instant::now() < deadline, "slots were not freed");
        std::thread::sleep(Duration::from_millis(100));
    };
    again.run("echoctl_tls", PROMPT);
    assert!(again.run("server list", PROMPT).contains(&format!("127.0.0.1:{}", listening_port(&started))));
}

#[test]
fn console_access_beyond_loopback_needs_a_flag_and_a_token() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let o = run(sealtls().args(["console", "--console-listen", "0.0.0.0:0"]).current_dir(d));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("not loopback") && text(&o).contains("--allow-remote"), "{}", text(&o));
    let o = run(sealtls().args(["console", "--console-listen", "0.0.0.0:0", "--allow-remote"]).current_dir(d));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("needs a token"), "{}", text(&o));

    let token = d.join("console.token");
    write_mode(&token, "short\n", 0o600);
    let o = run(sealtls().args(["console", "--console-listen", "127.0.0.1:0", "--token-file", token.to_str().unwrap()]).current_dir(d));
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(text(&o).contains("at least 16 characters"), "{}", text(&o));
    write_mode(&token, "s3cret-token-0123456789\n", 0o644);
    let o = run(sealtls().args(["console", "--console-listen", "127.0.0.1:0", "--token-file", token.to_str().unwrap()]).current_dir(d));
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(text(&o).contains("chmod 600"), "{}", text(&o));

    write_mode(&token, "s3cret-token-0123456789\n", 0o600);
    let c = Server::spawn(&[
        "console",
        "--console-listen",
        "127.0.0.1:0",
        "--data-dir",
        d.to_str().unwrap(),
        "--token-file",
        token.to_str().unwrap(),
    ]);
    let mut wrong = Telnet::connect(&c.addr);
    wrong.expect("token: ");
    wrong.line("guess");
    wrong.expect("wrong token; closing.");
    assert!(wrong.closed());
    assert!(
        c.wait_log("console session closed").lines().any(|l| l.contains("console session closed") && l.contains("reason=\"wrong token\"")),
        "{}",
        c.log()
    );
    let mut right = Telnet::connect(&c.addr);
    right.expect("token: ");
    right.line("s3cret-token-0123456789");
    right.expect("> ");
    right.run("echoctl_tls", PROMPT);
    // Without a config there is nothing to serve with; the console says what to give.
    let out = right.run("server start 0", PROMPT);
    assert!(
        out.contains("error: no server certificate configured (no config file found)") && out.contains("fix: give srv_cert and srv_key"),
        "{out}"
    );
}

/// Seed 000's client scenario: the console's client against `openssl s_server
/// -tls1_2` serving the guide's version 1 certificate.
#[test]
fn seed000_console_client_against_openssl_s_server() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    seed000_pki(d);
    // A second CA with the same name, and the same server key signed by it.
    sh(d, "openssl genpkey -algorithm RSA -out Other.key 2>/dev/null
openssl req -new -x509 -days 3650 -key Other.key -out Other.pem -config RootCA.cnf
openssl x509 -req -days 365 -in server.csr -CA Other.pem -CAkey Other.key -CAcreateserial -out server_other.pem -extensions v3_server 2>/dev/null");
    let mut s_server = OpensslServer::start(d, &["-key", "server.key", "-cert", "server.pem", "-tls1_2"]);
    let other = OpensslServer::start(d, &["-key", "server.key", "-cert", "server_other.pem", "-tls1_2"]);
    let ca = format!("[tls]\nca_cert = {}\n", inline(&d.join("RootCA.pem")));
    write_mode(&d.join("strict.toml"), &ca, 0o644);
    write_mode(&d.join("legacy.toml"), &format!("{ca}legacy_v1_leaf = true\n"), 0o644);

    // By default the guide's certificate is refused, with the reason and the fix.
    let strict = console(d, &d.join("strict.toml"), &[]);
    let mut t = enter_echoctl(&strict.addr);
    let out = t.run(&format!("client connect 127.0.0.1 {}", s_server.port), PROMPT);
    assert!(out.contains("Connecting to TLS server at 127.0.0.1:") && out.contains("X.509 version 1") && out.contains("fix: "), "{out}");
    assert!(!out.contains("Done."), "{out}");

    // With legacy_v1_leaf it is accepted as BitVisor does, with warnings, and the guide's exchange works.
    let legacy = console(d, &d.join("legacy.toml"), &[]);
    let mut t = enter_echoctl(&legacy.addr);
    let out = t.run(&format!("client connect 127.0.0.1 {}", s_server.port), PROMPT);
    assert!(out.contains("Connected: TLSv1.2") && out.contains("Done."), "{out}");
    assert!(out.contains("warning: legacy_v1_leaf = true") && out.contains("X.509 version 1"), "{out}");
    t.run("client send", PROMPT);
    assert!(s_server.wait_output("Hello, BitVisor with TLS!").contains("Hello, BitVisor with TLS!"));
    s_server.type_line("Test 123 Message from server.");
    t.expect("Received.\nTest 123 Message from server.\n");
    t.expect(PROMPT);
    assert!(legacy.wait_log("Test 123 Message from server.").contains("Received."));

    // A leaf signed by another CA (even one named RootCA) is still refused.
    let out = t.run(&format!("client connect 127.0.0.1 {}", other.port), PROMPT);
    assert!(out.contains("not the trusted CA of the same name") && out.contains("fix: "), "{out}");
    assert!(!out.contains("Connected:"), "{out}");
    // The console's client has no flags: its fixes do not name any.
    assert!(!out.contains(" --"), "{out}");
}

/// PATH for the processes `up` tests start: system tools only, no sealtls.
const SYSTEM_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// `sealtls up ARGS` in `dir` with sealtls not on PATH, once its banner is out.
fn up(dir: &Path, args: &[&str]) -> (std::process::Child, String) {
    let (child, banner, _) = up_logged(dir, args);
    (child, banner)
}

/// [`up`], and its standard error as it grows.
fn up_logged(dir: &Path, args: &[&str]) -> (std::process::Child, String, std::sync::Arc<std::sync::Mutex<String>>) {
    start_up(sealtls().arg("up").args(args).current_dir(dir).env("PATH", SYSTEM_PATH))
}

/// SIGTERM, then a clean exit 0.
fn stop_up(mut child: std::process::Child) {
    stop_up_cleanly(&mut child, &std::sync::Mutex::new(String::new()));
}

#[test]
fn up_runs_the_stack_and_stops_cleanly_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let (echo, console, keyless) = (free_port(), free_port(), free_port());
    let config = format!(
        "[tls]\nsrv_cert_file = \"sealtls-data/echo-localhost.pem\"\nsrv_key_file = \"sealtls-data/echo-localhost.key\"\nca_cert_file = \"sealtls-data/ca.pem\"\n\
         [echo]\nlisten = \"127.0.0.1:{echo}\"\n[console]\nlisten = \"127.0.0.1:{console}\"\n[offload]\nsocket = \"offload.sock\"\n[keyless]\nlisten = \"127.0.0.1:{keyless}\"\n[keyd]\nsocket = \"keyd.sock\"\n"
    );
    write_mode(&d.join("sealtls.toml"), &config, 0o644);
    let device = d.join("secret/device.key");
    let (child, banner) = up(d, &["--device-key", device.to_str().unwrap()]);
    assert!(
        banner.contains(&format!("TLS echo server      127.0.0.1:{echo}"))
            && banner.contains(&format!("echoctl_tls console  127.0.0.1:{console}")),
        "{banner}"
    );
    assert!(banner.contains(&format!("keyless TLS server   127.0.0.1:{keyless}")), "{banner}");
    assert!(banner.contains("keyd (key custody)   ./keyd.sock") && banner.contains("key ls --keyd unix:./keyd.sock"), "{banner}");
    assert!(banner.contains(&format!("openssl s_client -connect 127.0.0.1:{echo} -CAfile ./sealtls-data/ca.pem")), "{banner}");
    // sealtls is not on PATH: the banner names the binary and uses its path in every command.
    let exe = std::fs::canonicalize(env!("CARGO_BIN_EXE_sealtls")).unwrap();
    assert!(banner.contains(&format!("sealtls is {}", exe.display())), "{banner}");
    // keyd's device secret is where it was told, outside the data directory, and the banner says so.
    assert!(banner.contains(&format!("keyd device secret   {}", device.display())) && banner.contains("kept apart"), "{banner}");
    assert!(device.exists());
    let data = d.join("sealtls-data");
    {
        use std::os::unix::fs::PermissionsExt;
        for key in ["ca.key", "localhost.key", "echo-localhost.key", "client.key"] {
            assert_eq!(std::fs::metadata(data.join(key)).unwrap().permissions().mode() & 0o777, 0o600, "{key}");
        }
    }
    assert!(std::fs::read_dir(data.join("keyd")).unwrap().all(|e| e.unwrap().file_name() != "device.key"));

    // Every command the banner suggests works as printed, from the same directory, without sealtls on PATH.
    let commands: Vec<&str> = banner
        .split("try:\n")
        .nth(1)
        .unwrap()
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with("stop with") && !l.starts_with("telnet "))
        .collect();
    assert_eq!(commands.len(), 5, "{banner}");
    for command in commands {
        let o = run(std::process::Command::new("sh").args(["-c", command]).current_dir(d).env("PATH", SYSTEM_PATH));
        assert!(o.status.success(), "{command}: {}", text(&o));
        let t = text(&o);
        if command.starts_with("openssl") {
            assert!(t.contains("Verify return code: 0 (ok)"), "{command}: {t}");
        } else if command.contains(" key ls ") {
            assert!(t.lines().any(|l| l.starts_with("localhost") && l.ends_with(" ok")), "{command}: {t}");
        } else {
            assert!(String::from_utf8_lossy(&o.stdout).contains("hello"), "{command}: {t}");
        }
    }

    let out = interactive_echo(
        std::process::Command::new("openssl")
            .args(["s_client", "-connect", &format!("127.0.0.1:{echo}"), "-CAfile", "sealtls-data/ca.pem", "-verify_return_error"])
            .current_dir(d),
        "through up",
    );
    assert_eq!(echo_line_count(&out, "through up"), 1, "{out}");
    let o = run(sealtls().current_dir(d).args([
        "connect",
        &format!("127.0.0.1:{echo}"),
        "--server-name",
        "localhost",
        "--ca",
        "sealtls-data/ca.pem",
        "--cert",
        "sealtls-data/client.pem",
        "--key",
        "sealtls-data/client.key",
        "--send",
        "hello",
    ]));
    assert!(o.status.success() && text(&o).contains("client certificate  sent"), "{}", text(&o));

    let mut t = enter_echoctl(&format!("127.0.0.1:{console}"));
    let list = t.run("server list", PROMPT);
    assert!(list.contains(&format!("127.0.0.1:{echo}")) && list.contains("started by sealtls up"), "{list}");

    // The keyless server signs through keyd with the development key.
    let keyless_out = run(std::process::Command::new("openssl").current_dir(d).args([
        "s_client",
        "-connect",
        &format!("127.0.0.1:{keyless}"),
        "-servername",
        "localhost",
        "-CAfile",
        "sealtls-data/ca.pem",
        "-verify_return_error",
    ]));
    assert!(
        text(&keyless_out).contains("Verify return code: 0 (ok)") && text(&keyless_out).contains("localhost"),
        "{}",
        text(&keyless_out)
    );

    // --keyless-listen overrides the config.
    let o = run(sealtls().args(["up", "--help"]));
    assert!(text(&o).contains("--keyless-listen") && text(&o).contains("[keyless]"), "{}", text(&o));

    let id = child.id();
    stop_up(child);
    t.expect("sealtls is stopping; session closed.");
    for port in [echo, console, keyless] {
        assert!(std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(), "port {port} still held after {id} stopped");
    }
}

/// `up` with no configuration makes the development data and a config
/// whose addresses are the README's, and serves. It runs on free ports given
/// as flags (so nothing on the machine can be in its way); `config check` of
/// the config it wrote shows the documented defaults without binding them.
#[test]
fn up_with_no_config_makes_the_documented_defaults_and_serves() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let device = d.join("device.key");
    let (echo, console, keyless) = (free_port(), free_port(), free_port());
    let listen = |port: u16| format!("127.0.0.1:{port}");
    let args = ["--device-key", device.to_str().unwrap(), "--echo-listen", &listen(echo), "--console-listen", &listen(console)];
    let (child, banner) = up(d, &[&args[..], &["--keyless-listen", &listen(keyless)]].concat());
    for (name, port) in [("TLS echo server", echo), ("echoctl_tls console", console), ("keyless TLS server", keyless)] {
        assert!(banner.contains(&format!("{name:<20} 127.0.0.1:{port}")), "{name} {port}: {banner}");
    }
    assert!(banner.contains(&format!("openssl s_client -connect 127.0.0.1:{echo} -CAfile sealtls-data/ca.pem")), "{banner}");
    assert!(device.exists());
    let o = run(std::process::Command::new("openssl").current_dir(d).args([
        "s_client",
        "-connect",
        &listen(keyless),
        "-servername",
        "localhost",
        "-CAfile",
        "sealtls-data/ca.pem",
        "-verify_return_error",
    ]));
    assert!(text(&o).contains("Verify return code: 0 (ok)"), "{}", text(&o));
    stop_up(child);

    let documented = documented_defaults();
    let o = run(sealtls().args(["config", "check", d.join("sealtls-data/sealtls.toml").to_str().unwrap()]));
    assert!(o.status.success(), "{}", text(&o));
    let t = text(&o);
    for (service, addr) in
        [("TLS echo server", &documented.echo), ("echoctl_tls console", &documented.console), ("keyless TLS server", &documented.keyless)]
    {
        assert!(t.lines().any(|l| l.contains(service) && l.contains(addr.as_str())), "{service} on {addr}: {t}");
    }
}

/// `up` on free ports with a fresh data directory, the echo server serving with `leaf`
/// (from the data directory) and the device secret in `d`: (child, banner, stderr, keyless port).
fn up_on_free_ports(d: &Path, leaf: &str) -> (std::process::Child, String, std::sync::Arc<std::sync::Mutex<String>>, u16) {
    up_on_free_ports_with(d, leaf, "")
}

/// [`up_on_free_ports`] with `extra` appended to the configuration.
fn up_on_free_ports_with(
    d: &Path,
    leaf: &str,
    extra: &str,
) -> (std::process::Child, String, std::sync::Arc<std::sync::Mutex<String>>, u16) {
    let (echo, console, keyless) = (free_port(), free_port(), free_port());
    let config = format!(
        "[tls]\nsrv_cert_file = \"sealtls-data/{leaf}.pem\"\nsrv_key_file = \"sealtls-data/{leaf}.key\"\nca_cert_file = \"sealtls-data/ca.pem\"\n\
         [echo]\nlisten = \"127.0.0.1:{echo}\"\n[console]\nlisten = \"127.0.0.1:{console}\"\n[offload]\nsocket = \"offload.sock\"\n[keyless]\nlisten = \"127.0.0.1:{keyless}\"\n{extra}"
    );
    write_mode(&d.join("sealtls.toml"), &config, 0o644);
    let device = d.join("secret/device.key");
    let (child, banner, stderr) = up_logged(d, &["--device-key", device.to_str().unwrap()]);
    (child, banner, stderr, keyless)
}

/// `openssl s_client` to the keyless server: whether it verified `localhost`'s chain.
fn keyless_handshake(d: &Path, port: u16) -> (bool, String) {
    let o = run(std::process::Command::new("openssl").current_dir(d).args([
        "s_client",
        "-connect",
        &format!("127.0.0.1:{port}"),
        "-servername",
        "localhost",
        "-CAfile",
        "sealtls-data/ca.pem",
        "-verify_return_error",
    ]));
    let t = text(&o);
    (o.status.success() && t.contains("Verify return code: 0 (ok)"), t)
}

fn is_keyd(pid: u32) -> bool {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    cmdline.split(|b| *b == 0).nth(1) == Some(b"keyd")
}

/// The TLS processes of `up` never hold the key keyd signs with: no process of
/// up's tree but keyd has `localhost`'s private scalar (either byte order) or its
/// PKCS#8 DER anywhere in readable memory; keyd does (the positive control).
#[test]
fn up_keeps_keyds_key_out_of_every_other_process() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let (child, banner, stderr, keyless) = up_on_free_ports(d, "echo-localhost");
    let (ok, t) = keyless_handshake(d, keyless);
    assert!(ok, "{t}");
    let echo = banner.lines().find(|l| l.trim_start().starts_with("TLS echo server")).unwrap().split_whitespace().last().unwrap();
    let o = run(sealtls().current_dir(d).args(["connect", echo, "--ca", "sealtls-data/ca.pem", "--server-name", "localhost"]));
    assert!(o.status.success(), "{}", text(&o));

    let needles = p256_key_needles(&d.join("sealtls-data/localhost.key"));
    let needles: Vec<&[u8]> = needles.iter().map(Vec::as_slice).collect();

    let tree = process_tree(child.id());
    let keyd: Vec<u32> = tree.iter().copied().filter(|p| is_keyd(*p)).collect();
    assert_eq!(keyd.len(), 1, "one keyd below up {}: {tree:?}\n{}", child.id(), stderr.lock().unwrap());
    for pid in &tree {
        let (found, read) = scan_memory(*pid, &needles);
        assert!(read > 0, "nothing of process {pid} could be read");
        if *pid == keyd[0] {
            assert!(found.iter().any(|f| *f), "keyd ({pid}) should hold the key it signs with ({read} bytes read)");
        } else {
            assert_eq!(found, [false; 3], "process {pid} of up's tree holds localhost's key (scalar, reversed, DER)");
        }
    }
    assert!(tree.len() >= 2 && !stderr.lock().unwrap().contains("share the localhost key"));
    stop_up(child);
}

/// `[keyd] authorize` reaches the keyd `up` starts: with a grant giving up's
/// user only `other.example`, `up` still installs the development key (provisioning
/// is not limited by grants), but the keyless server cannot sign for `localhost`:
/// the client gets alert 40 and keyd's log names the refusal.
#[test]
fn up_passes_keyd_grants_from_the_config() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let uid = rustix::process::geteuid().as_raw();
    write_mode(&d.join("grants.toml"), &format!("[[grant]]\nuid = {uid}\ndomains = [\"other.example\"]\n"), 0o644);
    let (child, _banner, stderr, keyless) = up_on_free_ports_with(d, "echo-localhost", "[keyd]\nauthorize = \"grants.toml\"\n");
    let o = run(sealtls().current_dir(d).args(["config", "check", "sealtls.toml"]));
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("keyd grants           ./grants.toml: 1 grant(s)"), "{}", text(&o));
    let (ok, t) = keyless_handshake(d, keyless);
    assert!(!ok && t.contains("alert number 40"), "localhost should be refused with alert 40: {t}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = stderr.lock().unwrap().clone();
        let refusal = log.lines().any(|l| l.starts_with("keyd: ") && l.contains("refused (FORBIDDEN)") && l.contains("localhost"));
        if refusal {
            assert!(log.contains("development key installed in keyd"), "{log}");
            assert!(log.lines().any(|l| l.starts_with("keyd: ") && l.contains("grants.toml") && l.contains("grants=1")), "{log}");
            break;
        }
        assert!(Instant::now() < deadline, "no keyd: line names the refusal:\n{log}");
        std::thread::sleep(Duration::from_millis(100));
    }
    stop_up(child);
}

/// keyd killed under `up` is restarted, with a log line, and the keyless server serves again.
#[test]
fn up_restarts_keyd_when_it_dies() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let (child, _banner, stderr, keyless) = up_on_free_ports(d, "echo-localhost");
    let keyd = process_tree(child.id()).into_iter().find(|p| is_keyd(*p)).expect("keyd runs below up");
    assert!(std::process::Command::new("kill").args(["-KILL", &keyd.to_string()]).status().unwrap().success());

    let deadline = Instant::now() + Duration::from_secs(30);
    while !stderr.lock().unwrap().contains("keyd restarted") {
        assert!(Instant::now() < deadline, "keyd was not restarted:\n{}", stderr.lock().unwrap());
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = stderr.lock().unwrap().clone();
    assert!(log.contains("keyd exited; restarting it") && log.contains("SIGKILL"), "{log}");
    let again = process_tree(child.id()).into_iter().find(|p| is_keyd(*p)).expect("keyd runs again");
    assert_ne!(again, keyd);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (ok, t) = keyless_handshake(d, keyless);
        if ok {
            break;
        }
        assert!(Instant::now() < deadline, "the keyless server does not serve after keyd's restart: {t}\n{}", stderr.lock().unwrap());
        std::thread::sleep(Duration::from_millis(200));
    }
    stop_up(child);
    assert!(!Path::new(&format!("/proc/{again}")).exists(), "keyd {again} outlived up");
}

/// keyd that keeps dying is restarted 5 times within a minute, then `up` gives up and exits non-zero;
/// keyd that outlives a killed `up` stops by itself.
#[test]
fn up_gives_up_on_keyd_that_keeps_dying() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let (mut child, _banner, stderr, _keyless) = up_on_free_ports(d, "echo-localhost");
    for round in 1..=6 {
        let keyd = process_tree(child.id()).into_iter().find(|p| is_keyd(*p)).expect("keyd runs below up");
        assert!(std::process::Command::new("kill").args(["-KILL", &keyd.to_string()]).status().unwrap().success());
        let deadline = Instant::now() + Duration::from_secs(30);
        while round < 6 && stderr.lock().unwrap().matches("keyd restarted").count() < round {
            assert!(Instant::now() < deadline, "keyd was not restarted ({round}):\n{}", stderr.lock().unwrap());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "up did not give up:\n{}", stderr.lock().unwrap());
        std::thread::sleep(Duration::from_millis(50));
    };
    std::thread::sleep(Duration::from_millis(200));
    let log = stderr.lock().unwrap().clone();
    assert_eq!(status.code(), Some(3), "{log}");
    assert!(log.contains("keyd exited (signal: 9 (SIGKILL)) after 5 restarts within 60 s"), "{log}");

    // SIGKILL leaves up no chance to stop keyd: keyd notices and stops within seconds.
    let d2 = tempfile::tempdir().unwrap();
    let (mut child, _banner, stderr, _keyless) = up_on_free_ports(d2.path(), "echo-localhost");
    let keyd = process_tree(child.id()).into_iter().find(|p| is_keyd(*p)).expect("keyd runs below up");
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(format!("/proc/{keyd}/stat")).is_ok_and(|s| !s.contains(") Z ")) {
        assert!(Instant::now() < deadline, "keyd {keyd} outlived a killed up:\n{}", stderr.lock().unwrap());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// When keyd cannot start, `up` says so with keyd's own words and starts nothing.
#[test]
fn up_fails_with_keyds_words_when_keyd_cannot_start() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let device = d.join("device.key");
    write_mode(&device, &"7".repeat(64), 0o644);
    let (echo, keyless) = (free_port(), free_port());
    let config = format!(
        "[echo]\nlisten = \"127.0.0.1:{echo}\"\n[console]\nlisten = \"127.0.0.1:0\"\n[offload]\nsocket = \"offload.sock\"\n[keyless]\nlisten = \"127.0.0.1:{keyless}\"\n"
    );
    write_mode(&d.join("sealtls.toml"), &config, 0o644);
    let o = run(sealtls().current_dir(d).env("PATH", SYSTEM_PATH).args(["up", "--device-key", device.to_str().unwrap()]));
    let t = text(&o);
    assert_eq!(o.status.code(), Some(3), "{t}");
    assert!(t.contains("keyd exited") && t.contains("keyd's standard error ended with:") && t.contains("device.key"), "{t}");
    assert!(std::net::TcpListener::bind(("127.0.0.1", echo)).is_ok(), "nothing else started: {t}");
}

/// A configuration from before the echo server had its own key (it serves `localhost`'s,
/// which keyd holds) still works, with a warning that says how to fix it.
#[test]
fn up_warns_when_the_echo_server_shares_keyds_key() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let (child, banner, stderr, keyless) = up_on_free_ports(d, "localhost");
    let log = stderr.lock().unwrap().clone();
    assert!(log.contains("the echo server and keyd share the localhost key") && log.contains("echo-localhost.key"), "{log}");
    assert!(d.join("sealtls-data/echo-localhost.pem").exists(), "{banner}");
    let (ok, t) = keyless_handshake(d, keyless);
    assert!(ok, "{t}");
    stop_up(child);
}

/// `sealtls config check` on a file that should fail, returning its output.
fn check_fails(d: &Path, name: &str, body: &str, mode: u32) -> String {
    let cfg = d.join(name);
    write_mode(&cfg, body, mode);
    let o = run(sealtls().args(["config", "check", cfg.to_str().unwrap()]));
    assert_eq!(o.status.code(), Some(3), "{name}: {}", text(&o));
    let t = text(&o);
    assert!(t.contains(name) && t.contains("fix: "), "{name} must be named with a fix: {t}");
    t
}

#[test]
fn config_errors_name_the_file_the_key_and_the_fix() {
    let tmp = tempfile::tempdir().unwrap();
    let d = dev_pki(tmp.path());
    sh(&d, "cp localhost.key open.key && chmod 644 open.key");
    let files = "srv_cert_file = \"localhost.pem\"\nsrv_key_file = \"localhost.key\"\n";

    let t = check_fails(&d, "unknown.toml", "[tls]\nsrv_cert_file = \"localhost.pem\"\nsrv_crt = \"x\"\n", 0o600);
    assert!(t.contains("line 3") && t.contains("unknown field `srv_crt`"), "{t}");
    let t = check_fails(&d, "both.toml", &format!("[tls]\n{files}srv_cert = {}\n", inline(&d.join("localhost.pem"))), 0o600);
    assert!(t.contains("[tls] srv_cert and srv_cert_file are both given"), "{t}");
    let t = check_fails(&d, "missing.toml", "[tls]\nca_cert_file = \"nowhere.pem\"\n", 0o600);
    assert!(t.contains("[tls] ca_cert_file") && t.contains("nowhere.pem: cannot read"), "{t}");
    let t = check_fails(
        &d,
        "badpem.toml",
        "[tls]\nca_cert = \"\"\"\n-----BEGIN CERTIFICATE-----\nnot base64!!\n-----END CERTIFICATE-----\n\"\"\"\n",
        0o600,
    );
    assert!(t.contains("[tls] ca_cert: inline ca_cert: damaged PEM"), "{t}");
    let t = check_fails(&d, "mismatch.toml", "[tls]\nsrv_cert_file = \"localhost.pem\"\nsrv_key_file = \"alice.key\"\n", 0o600);
    assert!(t.contains("[tls] srv_key") && t.contains("does not belong to the certificate in [tls] srv_cert"), "{t}");
    let t = check_fails(&d, "open.toml", "[tls]\nsrv_cert_file = \"localhost.pem\"\nsrv_key_file = \"open.key\"\n", 0o600);
    assert!(t.contains("[tls] srv_key_file") && t.contains("chmod 600"), "{t}");
    let t = check_fails(
        &d,
        "inline-open.toml",
        &format!("[tls]\nsrv_cert_file = \"localhost.pem\"\nsrv_key = {}\n", inline(&d.join("localhost.key"))),
        0o644,
    );
    assert!(t.contains("holds a private key inline ([tls] srv_key)") && t.contains("chmod 600"), "{t}");
    let t = check_fails(&d, "half.toml", "[tls]\nsrv_cert_file = \"localhost.pem\"\n", 0o600);
    assert!(t.contains("[tls] srv_cert is given without srv_key"), "{t}");

    // Nothing starts on a bad config.
    let o = run(sealtls().args(["up", "--config", d.join("open.toml").to_str().unwrap()]).current_dir(&d));
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));

    // A good one is described, and serves.
    let good = d.join("good.toml");
    write_mode(&good, &format!("[tls]\n{files}ca_cert_file = \"ca.pem\"\n[echo]\nlisten = \"127.0.0.1:0\"\n"), 0o644);
    let o = run(sealtls().args(["config", "check", good.to_str().unwrap()]));
    assert!(o.status.success(), "{}", text(&o));
    let t = text(&o);
    let documented = documented_defaults();
    assert!(
        t.contains("good.toml: valid") && t.contains("CN=localhost") && t.contains("would run") && t.contains(&documented.console),
        "{t}"
    );
    let keyless = format!("keyless TLS server    {}", documented.keyless);
    assert!(t.contains(&keyless) && t.contains("keyd (key custody)    keyd/keyd.sock in up's data directory"), "{t}");
    let server = Server::start(&["--config", good.to_str().unwrap(), "--client-auth", "optional"]);
    let o = run(sealtls().args(["connect", &server.addr, "--server-name", "localhost", "--ca", &p(&d, "ca.pem"), "--send", "configured"]));
    assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).contains("configured"), "{}", text(&o));
}

/// SHA-256 fingerprint of the first certificate in `pem` (a file, or s_client's output).
fn sha256_fingerprint(pem: &Path) -> String {
    let o = run(std::process::Command::new("openssl").args(["x509", "-noout", "-fingerprint", "-sha256", "-in"]).arg(pem));
    assert!(o.status.success(), "{}", text(&o));
    String::from_utf8_lossy(&o.stdout).trim().split_once('=').expect("Fingerprint=").1.to_owned()
}

/// SIGHUP to `up` reloads the echo server's certificate and a `[[tunnel]]`'s CAs from the
/// config's files and reaches keyd, which reloads its grants: the keyless server, refused
/// before, is served after.
#[test]
fn up_reloads_the_echo_certificate_a_tunnels_cas_and_keyds_grants_on_sighup() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let uid = rustix::process::geteuid().as_raw();
    let grants = d.join("grants.toml");
    write_mode(&grants, &format!("[[grant]]\nuid = {uid}\ndomains = [\"other.example\"]\n"), 0o644);
    // A [[tunnel]] table first trusting another CA; SIGHUP makes it read its ca_file again.
    let o = run(sealtls().args(["pki", "init", "--dir", d.join("other").to_str().unwrap()]));
    assert!(o.status.success(), "{}", text(&o));
    std::fs::copy(d.join("other/ca.pem"), d.join("tunnel-ca.pem")).unwrap();
    let tunnel = format!("[[tunnel]]\nlisten = \"127.0.0.1:{}\"\ntarget = \"127.0.0.1:1\"\nca_file = \"tunnel-ca.pem\"\n", free_port());
    let (child, banner, stderr, keyless) =
        up_on_free_ports_with(d, "echo-localhost", &format!("[keyd]\nauthorize = \"grants.toml\"\n{tunnel}"));
    let echo = banner.lines().find(|l| l.contains("TLS echo server")).and_then(|l| l.split_whitespace().last()).expect("echo address");
    let (ok, t) = keyless_handshake(d, keyless);
    assert!(!ok && t.contains("alert number 40"), "{t}");

    let data = d.join("sealtls-data");
    let o = run(sealtls().args(["pki", "issue", "server", "--dir", data.to_str().unwrap(), "--name", "renewed", "--san", "localhost"]));
    assert!(o.status.success(), "{}", text(&o));
    for ext in ["key", "pem"] {
        let tmp = data.join(format!("echo-localhost.{ext}.new"));
        std::fs::copy(data.join(format!("renewed.{ext}")), &tmp).unwrap();
        std::fs::rename(&tmp, data.join(format!("echo-localhost.{ext}"))).unwrap();
    }
    write_mode(&grants, &format!("[[grant]]\nuid = {uid}\ndomains = [\"localhost\"]\n"), 0o644);
    std::fs::copy(data.join("ca.pem"), d.join("tunnel-ca.pem.new")).unwrap();
    std::fs::rename(d.join("tunnel-ca.pem.new"), d.join("tunnel-ca.pem")).unwrap();
    // The client's legacy leaf check is part of [tls] too.
    let config = std::fs::read_to_string(d.join("sealtls.toml")).unwrap().replacen("[tls]\n", "[tls]\nlegacy_v1_leaf = true\n", 1);
    write_mode(&d.join("sealtls.toml"), &config, 0o644);
    assert!(std::process::Command::new("kill").args(["-HUP", &child.id().to_string()]).status().unwrap().success());

    let deadline = Instant::now() + Duration::from_secs(20);
    let log = loop {
        let log = stderr.lock().unwrap().clone();
        if log.contains("reloaded certificate and legacy_v1_leaf for up")
            && log.contains("reloaded CAs for tunnel")
            && log.lines().any(|l| l.starts_with("keyd: ") && l.contains("reloaded grants"))
        {
            break log;
        }
        assert!(Instant::now() < deadline, "no reload lines:\n{log}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let renewed = sha256_fingerprint(&data.join("renewed.pem"));
    assert!(
        log.lines().any(|l| l.contains("reloaded certificate and legacy_v1_leaf for up") && l.contains(&format!("-> {renewed}"))),
        "{log}"
    );
    assert!(log.contains("SIGHUP passed to keyd"), "{log}");
    assert!(
        log.lines()
            .any(|l| l.contains("reloaded certificate and legacy_v1_leaf for up") && l.contains("legacy_v1_leaf: value false -> true")),
        "{log}"
    );
    let tunnel_ca = log.lines().find(|l| l.contains("reloaded CAs for tunnel")).unwrap();
    assert!(tunnel_ca.contains(&format!("-> [{}", sha256_fingerprint(&data.join("ca.pem")))), "{tunnel_ca}");

    let o = run(std::process::Command::new("openssl").args(["s_client", "-connect", echo, "-servername", "localhost"]));
    let out = d.join("s_client.out");
    std::fs::write(&out, &o.stdout).unwrap();
    assert_eq!(sha256_fingerprint(&out), renewed);
    let (ok, t) = keyless_handshake(d, keyless);
    assert!(ok, "the keyless server is refused after the grants were reloaded: {t}\n{}", stderr.lock().unwrap());
    stop_up(child);
}
