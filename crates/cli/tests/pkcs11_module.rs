//! libsealtls_pkcs11.so with the programs people already run: OpenSC's
//! pkcs11-tool and GnuTLS's p11tool list keyd's keys and sign with them,
//! `openssl s_server` (pkcs11 engine), nginx and gnutls-serv terminate TLS
//! with keys they never hold, and keyd's grants and absence reach them.
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::custody::{keyd, put, softhsm};
use common::memory::{p256_key_needles, process_tree, scan_memory};
use common::{free_port, logged_port, p, run, sealtls, text, write_mode, Peer, Server};

/// Keys of every kind the module offers, by domain and `sealtls pki` key type.
const KEYS: [(&str, &str); 4] =
    [("www.test.com", "ecdsa-p256"), ("p384.test.com", "ecdsa-p384"), ("rsa.test.com", "rsa2048"), ("ed.test.com", "ed25519")];

/// The module next to the sealtls binary; scripts/test builds it before the tests.
fn module() -> PathBuf {
    common::pkcs11_module()
}

fn ok(args: &[&str]) {
    let o = run(sealtls().args(args));
    assert!(o.status.success(), "{args:?}: {}", text(&o));
}

/// A PKI with a server certificate for each of [`KEYS`].
fn pki(d: &Path) -> PathBuf {
    let pki = d.join("pki");
    ok(&["pki", "init", "--dir", pki.to_str().unwrap()]);
    for (name, key_type) in KEYS {
        ok(&["pki", "issue", "server", "--dir", pki.to_str().unwrap(), "--name", name, "--key-type", key_type]);
    }
    pki
}

/// keyd on a sealed-file store in `d`, holding every key of [`KEYS`].
fn keyd_with_keys(d: &Path, pki: &Path, extra: &[&str]) -> Server {
    let kd = keyd(&d.join("keyd"), &d.join("device.key"), extra);
    for (name, _) in KEYS {
        put(&kd.addr, pki, name);
    }
    kd
}

/// The environment that points the module at keyd's socket.
fn unix_env(kd: &Server) -> Vec<(String, String)> {
    vec![("SEALTLS_PKCS11_KEYD".into(), format!("unix:{}", kd.addr))]
}

fn with_env<'a>(cmd: &'a mut Command, env: &[(String, String)]) -> &'a mut Command {
    cmd.env_remove("SEALTLS_PKCS11_CONF").env_remove("SEALTLS_PKCS11_KEYD");
    cmd.envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
}

fn pkcs11_tool(env: &[(String, String)], args: &[&str]) -> Output {
    run(with_env(Command::new("pkcs11-tool").arg("--module").arg(module()).args(args), env))
}

/// The hex key id keyd gives `domain`'s key (the objects' CKA_ID).
fn key_id(listing: &str, domain: &str) -> String {
    let block: Vec<&str> = listing.split("Private Key Object").filter(|b| b.contains(&format!("label:      {domain}\n"))).collect();
    let line = block
        .first()
        .and_then(|b| b.lines().find(|l| l.trim_start().starts_with("ID:")))
        .unwrap_or_else(|| panic!("{domain} in {listing}"));
    line.split_whitespace().last().unwrap().to_string()
}

/// An openssl.cnf that loads the pkcs11 engine (libp11) with our module, as `sealtls pkcs11 openssl-conf` writes it.
fn openssl_conf(d: &Path) -> PathBuf {
    let o = run(sealtls().args(["pkcs11", "openssl-conf", "--module"]).arg(module()));
    assert!(o.status.success() && text(&o).contains("MODULE_PATH = "), "{}", text(&o));
    let conf = d.join("openssl.cnf");
    std::fs::write(&conf, &o.stdout).unwrap();
    conf
}

fn key_uri(domain: &str) -> String {
    format!("pkcs11:token=sealtls;object={domain};type=private")
}

/// `openssl s_server` with `domain`'s key through the engine and its certificate from the PKI.
fn s_server(d: &Path, pki: &Path, env: &[(String, String)], domain: &str) -> Peer {
    let port = free_port();
    let mut cmd = Command::new("openssl");
    cmd.args(["s_server", "-accept", &format!("127.0.0.1:{port}"), "-engine", "pkcs11", "-keyform", "engine", "-key", &key_uri(domain)])
        .args(["-cert", &p(pki, &format!("{domain}.pem")), "-www"])
        .env("OPENSSL_CONF", openssl_conf(d));
    Peer::start(with_env(&mut cmd, env), port)
}

/// `openssl s_client -verify_return_error` to `port` for `domain`; its output.
fn s_client(port: u16, pki: &Path, domain: &str, extra: &[&str]) -> String {
    text(&run(Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}"), "-servername", domain, "-verify_return_error"])
        .args(["-CAfile", &p(pki, "ca.pem")])
        .args(extra)
        .env("OPENSSL_CONF", "/dev/null")))
}

/// s_client prints the session even when the server aborts the handshake
/// afterwards (TLS 1.3), so a refusal shows only as an alert or an error.
fn handshake_ok(out: &str) -> bool {
    out.contains("Verify return code: 0 (ok)") && !out.contains("Cipher is (NONE)") && !out.contains("alert") && !out.contains(":error:")
}

/// pkcs11-tool's arguments for RSA-PSS over a SHA-256 digest, and openssl's to verify it.
const PSS_SHA256: &[&str] = &["--hash-algorithm", "SHA256", "--mgf", "MGF1-SHA256", "--salt-len", "32"];
const VERIFY_PSS_SHA256: &[&str] = &["dgst", "-sha256", "-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:32"];

/// A file holding the SHA-256 digest of `message`.
fn sha256_of(message: &Path) -> PathBuf {
    let out = message.with_extension("sha256");
    let o = run(Command::new("openssl").args(["dgst", "-sha256", "-binary", "-out"]).arg(&out).arg(message));
    assert!(o.status.success(), "{}", text(&o));
    out
}

/// Signs with pkcs11-tool through the module and verifies with openssl against the certificate's public key.
fn signs_and_verifies(d: &Path, pki: &Path, env: &[(String, String)], listing: &str, message: &Path, case: Case) {
    let (domain, mechanism, input, sign_args, verify) = case;
    let sig = d.join(format!("{domain}.{mechanism}.sig"));
    let o = pkcs11_tool(
        env,
        &[
            &["--sign", "-m", mechanism, "--id", &key_id(listing, domain), "-i", input.to_str().unwrap(), "-o", sig.to_str().unwrap()],
            sign_args,
        ]
        .concat(),
    );
    assert!(o.status.success(), "{domain} {mechanism}: {}", text(&o));
    let public = d.join(format!("{domain}.pub"));
    let o = run(Command::new("openssl").args(["x509", "-pubkey", "-noout", "-in", &p(pki, &format!("{domain}.pem")), "-out"]).arg(&public));
    assert!(o.status.success(), "{}", text(&o));
    let mut check = Command::new("openssl");
    check.args(verify);
    if verify[0] == "pkeyutl" {
        check.args(["-verify", "-pubin", "-inkey"]).arg(&public).arg("-in").arg(message).arg("-sigfile").arg(&sig);
    } else {
        check.arg("-verify").arg(&public).arg("-signature").arg(&sig).arg(message);
    }
    let o = run(&mut check);
    assert!(o.status.success() && text(&o).contains("Verified"), "{domain} {mechanism}: {}", text(&o));
}

/// One signature by pkcs11-tool: key, mechanism, input, pkcs11-tool's
/// extra arguments, and the openssl command that verifies it.
type Case<'a> = (&'a str, &'a str, &'a Path, &'a [&'a str], &'a [&'a str]);

#[test]
fn pkcs11_tool_and_p11tool_list_keyds_keys_and_every_mechanism_signs() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let pki = pki(d);
    let kd = keyd_with_keys(d, &pki, &[]);
    // Ed25519 objects only when asked for (libp11 0.4.12 gives up on a token that has one).
    let o = pkcs11_tool(&unix_env(&kd), &["--list-objects"]);
    assert!(o.status.success() && text(&o).contains("www.test.com") && !text(&o).contains("ed.test.com"), "{}", text(&o));
    let mut env = unix_env(&kd);
    env.push(("SEALTLS_PKCS11_ED25519".into(), "1".into()));

    let o = pkcs11_tool(&env, &["--list-objects"]);
    let listing = text(&o);
    assert!(o.status.success(), "{listing}");
    for (name, _) in KEYS {
        for kind in ["Private Key Object", "Public Key Object", "Certificate Object"] {
            assert!(
                listing.split(kind).skip(1).any(|b| b.contains(&format!("label:      {name}\n"))),
                "{kind} for {name} missing: {listing}"
            );
        }
    }
    assert!(listing.contains("Access:     sensitive, always sensitive, never extractable"), "{listing}");
    let o = run(with_env(Command::new("p11tool").arg(format!("--provider={}", module().display())).arg("--list-all"), &env));
    let all = text(&o);
    assert!(o.status.success(), "{all}");
    assert!(
        all.contains("token=sealtls") && all.contains("object=www.test.com;type=private") && all.contains("object=rsa.test.com;type=cert"),
        "{all}"
    );

    let message = d.join("message");
    std::fs::write(&message, b"signed through keyd").unwrap();
    let sha256 = sha256_of(&message);
    let cases: [Case; 8] = [
        ("www.test.com", "ECDSA", &sha256, &["--signature-format", "openssl"], &["dgst", "-sha256"]),
        ("www.test.com", "ECDSA-SHA256", &message, &["--signature-format", "openssl"], &["dgst", "-sha256"]),
        ("p384.test.com", "ECDSA-SHA384", &message, &["--signature-format", "openssl"], &["dgst", "-sha384"]),
        ("rsa.test.com", "SHA256-RSA-PKCS", &message, &[], &["dgst", "-sha256"]),
        ("rsa.test.com", "RSA-PKCS-PSS", &sha256, PSS_SHA256, VERIFY_PSS_SHA256),
        (
            "rsa.test.com",
            "SHA384-RSA-PKCS-PSS",
            &message,
            &[],
            &["dgst", "-sha384", "-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:48"],
        ),
        ("rsa.test.com", "SHA512-RSA-PKCS", &message, &[], &["dgst", "-sha512"]),
        ("ed.test.com", "EDDSA", &message, &[], &["pkeyutl", "-rawin"]),
    ];
    for case in cases {
        signs_and_verifies(d, &pki, &env, &listing, &message, case);
    }

    // RSA PKCS#1 v1.5 over anything but a DigestInfo is refused (keyd never does raw RSA).
    let o = pkcs11_tool(&env, &["--sign", "-m", "RSA-PKCS", "--id", &key_id(&listing, "rsa.test.com"), "-i", message.to_str().unwrap()]);
    assert!(!o.status.success() && text(&o).contains("CKR_DATA_INVALID") && text(&o).contains("not a DigestInfo"), "{}", text(&o));

    // A module that is not there is named, with how to build it.
    let o = run(sealtls().args(["pkcs11", "openssl-conf", "--module", "/nonexistent/libsealtls_pkcs11.so"]));
    assert!(
        !o.status.success() && text(&o).contains("/nonexistent/libsealtls_pkcs11.so is missing") && text(&o).contains("cargo build"),
        "{}",
        text(&o)
    );

    // A relative module path is written absolute: OpenSSL loads it from wherever it runs.
    let here = module();
    let o = run(sealtls().current_dir(here.parent().unwrap()).args(["pkcs11", "openssl-conf", "--module", "libsealtls_pkcs11.so"]));
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains(&format!("MODULE_PATH = {}\n", here.display())), "{}", text(&o));

    // Without settings the module says what to set.
    let o = pkcs11_tool(&[], &["--list-objects"]);
    assert!(!o.status.success() && text(&o).contains("set SEALTLS_PKCS11_KEYD=unix:PATH"), "{}", text(&o));

    // A keyd that takes the connection but never answers: the limit, not "unreachable".
    let silent_path = d.join("silent.sock");
    // Never accepted: the kernel completes the connection from the backlog, and nothing is ever read or written.
    let silent = std::os::unix::net::UnixListener::bind(&silent_path).unwrap();
    let env = [
        ("SEALTLS_PKCS11_KEYD".to_string(), format!("unix:{}", silent_path.display())),
        ("SEALTLS_PKCS11_TIMEOUT_MS".to_string(), "1000".to_string()),
    ];
    let o = pkcs11_tool(&env, &["--list-objects"]);
    assert!(text(&o).contains("did not answer within 1000 ms"), "{}", text(&o));
    drop(silent);
}

#[test]
fn openssl_s_server_signs_through_keyd_with_tls13_and_tls12() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let pki = pki(d);
    let kd = keyd_with_keys(d, &pki, &[]);
    let env = unix_env(&kd);

    let ecdsa = s_server(d, &pki, &env, "www.test.com");
    for version in ["-tls1_3", "-tls1_2"] {
        let out = s_client(ecdsa.port, &pki, "www.test.com", &[version]);
        assert!(handshake_ok(&out) && out.contains("Peer signature type: ECDSA"), "{version}: {out}\n{}", ecdsa.output());
    }
    let rsa = s_server(d, &pki, &env, "rsa.test.com");
    let out = s_client(rsa.port, &pki, "rsa.test.com", &["-tls1_3"]);
    assert!(handshake_ok(&out) && out.contains("Peer signature type: RSA-PSS"), "{out}\n{}", rsa.output());
    let out = s_client(rsa.port, &pki, "rsa.test.com", &["-tls1_2", "-sigalgs", "RSA+SHA256"]);
    assert!(handshake_ok(&out) && out.contains("Peer signature type: RSA\n"), "{out}\n{}", rsa.output());
}

#[test]
fn gnutls_serv_signs_through_keyd_with_the_provider_option() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let pki = pki(d);
    let kd = keyd_with_keys(d, &pki, &[]);
    for (domain, sig) in [("www.test.com", "ECDSA"), ("rsa.test.com", "RSA")] {
        let port = free_port();
        let mut cmd = Command::new("gnutls-serv");
        cmd.arg(format!("--provider={}", module().display())).args([
            "--x509keyfile",
            &key_uri(domain),
            "--x509certfile",
            &p(&pki, &format!("{domain}.pem")),
            "-p",
            &port.to_string(),
        ]);
        let serv = Peer::start(with_env(&mut cmd, &unix_env(&kd)), port);
        for priority in ["NORMAL:-VERS-ALL:+VERS-TLS1.3", "NORMAL:-VERS-ALL:+VERS-TLS1.2"] {
            let o = run(Command::new("gnutls-cli").args([
                "--x509cafile",
                &p(&pki, "ca.pem"),
                "-p",
                &port.to_string(),
                "127.0.0.1",
                "--sni-hostname",
                domain,
                "--verify-hostname",
                domain,
                "--priority",
                priority,
            ]));
            let out = text(&o);
            assert!(out.contains("Handshake was completed") && out.contains(sig), "{domain} {priority}: {out}\n{}", serv.output());
        }
    }
}

/// nginx in the foreground with its own prefix in `d`, two workers, and
/// the key through the engine; run as root, its workers stay root so that
/// they may reach keyd's socket (mode 0660, owned by keyd's user).
fn nginx(d: &Path, pki: &Path, env: &[(String, String)]) -> Peer {
    let prefix = d.join("nginx");
    std::fs::create_dir_all(prefix.join("logs")).unwrap();
    let port = free_port();
    let is_root = text(&run(Command::new("id").arg("-u"))).trim() == "0";
    let conf = prefix.join("nginx.conf");
    let tmp = p(&prefix, "tmp");
    std::fs::write(
        &conf,
        format!(
            "{user}worker_processes 2;\ndaemon off;\nerror_log {log} info;\npid {pid};\nevents {{ worker_connections 64; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {tmp}; proxy_temp_path {tmp}; fastcgi_temp_path {tmp}; uwsgi_temp_path {tmp}; scgi_temp_path {tmp};\n\
             server {{\n    listen 127.0.0.1:{port} ssl;\n    ssl_certificate {cert};\n    ssl_certificate_key \"engine:pkcs11:{uri}\";\n\
             location / {{ return 200 \"served by nginx\\n\"; }}\n  }}\n}}\n",
            user = if is_root { "user root;\n" } else { "" },
            log = p(&prefix, "logs/error.log"),
            pid = p(&prefix, "nginx.pid"),
            cert = p(pki, "www.test.com.pem"),
            uri = key_uri("www.test.com"),
        ),
    )
    .unwrap();
    let mut cmd = Command::new("/usr/sbin/nginx");
    cmd.arg("-p").arg(&prefix).arg("-c").arg(&conf).env("OPENSSL_CONF", openssl_conf(d));
    Peer::start(with_env(&mut cmd, env), port)
}

fn curl(port: u16, pki: &Path) -> Output {
    run(Command::new("curl").args([
        "-sS",
        "--max-time",
        "10",
        "--cacert",
        &p(pki, "ca.pem"),
        "--resolve",
        &format!("www.test.com:{port}:127.0.0.1"),
        &format!("https://www.test.com:{port}/"),
    ]))
}

#[test]
fn nginx_serves_with_keyds_key_never_holds_it_and_outlives_keyd() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let pki = pki(d);
    let mut kd = keyd_with_keys(d, &pki, &[]);
    let env = unix_env(&kd);
    let mut ngx = nginx(d, &pki, &env);
    let workers = || process_tree(ngx.pid()).into_iter().filter(|p| *p != ngx.pid()).collect::<Vec<_>>();
    let deadline = Instant::now() + Duration::from_secs(10);
    while workers().len() < 2 {
        assert!(Instant::now() < deadline, "nginx did not start two workers: {}", ngx.output());
        std::thread::sleep(Duration::from_millis(20));
    }
    for _ in 0..6 {
        let o = curl(ngx.port, &pki);
        assert!(o.status.success() && text(&o) == "served by nginx\n", "{}\n{}", text(&o), ngx.output());
    }

    // No nginx process has www.test.com's private key in memory; keyd, which signs with it, does.
    let needles = p256_key_needles(&pki.join("www.test.com.key"));
    let needles: Vec<&[u8]> = needles.iter().map(Vec::as_slice).collect();
    let (found, read) = scan_memory(kd.child.id(), &needles);
    assert!(found.iter().any(|f| *f), "keyd ({}) should hold the key it signs with ({read} bytes read)", kd.child.id());
    let nginx_processes = process_tree(ngx.pid());
    assert_eq!(nginx_processes.len(), 3, "master and two workers: {nginx_processes:?}");
    for pid in nginx_processes {
        let (found, read) = scan_memory(pid, &needles);
        assert!(read > 0, "nothing of nginx process {pid} could be read");
        assert_eq!(found, [false; 3], "nginx process {pid} holds www.test.com's key (scalar, reversed, DER)");
    }

    // keyd gone: handshakes fail, nginx stays up and says why.
    drop(kd);
    let o = curl(ngx.port, &pki);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(ngx.alive(), "{}", ngx.output());
    let log = std::fs::read_to_string(d.join("nginx/logs/error.log")).unwrap() + &ngx.output();
    assert!(log.contains("keyd at unix:") && log.contains("is unreachable"), "{log}");

    // keyd back (same store, same socket): nginx signs again without a restart.
    kd = keyd(&d.join("keyd"), &d.join("device.key"), &[]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let o = curl(ngx.port, &pki);
        if o.status.success() {
            assert_eq!(text(&o), "served by nginx\n");
            break;
        }
        assert!(Instant::now() < deadline, "nginx did not recover after keyd came back: {}", text(&o));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(ngx.alive());
    drop(kd);
}

/// Over mutual TLS, with grants by certificate CN: KEYS lists only the granted
/// keys; a grant withdrawn (SIGHUP) stops the running server's handshakes,
/// and keyd logs the refusal with the caller.
#[test]
fn grants_decide_what_the_module_sees_and_signs_and_withdrawing_one_stops_handshakes() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let pki = pki(d);
    let edges = d.join("edges");
    ok(&["pki", "init", "--dir", edges.to_str().unwrap()]);
    ok(&["pki", "issue", "client", "--dir", edges.to_str().unwrap(), "--name", "nginx-edge"]);
    ok(&["pki", "issue", "server", "--dir", edges.to_str().unwrap(), "--name", "localhost"]);
    let auth = d.join("authorize.toml");
    let uid = text(&run(Command::new("id").arg("-u"))).trim().to_string();
    // The admin (this uid, over the socket) provisions; the module (cn nginx-edge, over TLS) signs.
    let grants =
        |domains: &str| format!("[[grant]]\ncn = \"nginx-edge\"\ndomains = [{domains}]\n[[grant]]\nuid = {uid}\ndomains = [\"b.none\"]\n");
    write_mode(&auth, &grants("\"www.test.com\", \"rsa.test.com\""), 0o644);
    let kd = keyd_with_keys(
        d,
        &pki,
        &[
            "--authorize",
            auth.to_str().unwrap(),
            "--listen-tls",
            "127.0.0.1:0",
            "--tls-cert",
            &p(&edges, "localhost.pem"),
            "--tls-key",
            &p(&edges, "localhost.key"),
            "--client-ca",
            &p(&edges, "ca.pem"),
        ],
    );
    let tls_port = logged_port(&kd.wait_log("tls_listen="), "tls_listen");
    let env: Vec<(String, String)> = [
        ("SEALTLS_PKCS11_KEYD", format!("tls://localhost:{tls_port}")),
        // Ed25519 objects shown, so that only the grants can keep ed.test.com out.
        ("SEALTLS_PKCS11_ED25519", "1".into()),
        ("SEALTLS_PKCS11_KEYD_CA", p(&edges, "ca.pem")),
        ("SEALTLS_PKCS11_KEYD_CERT", p(&edges, "nginx-edge.pem")),
        ("SEALTLS_PKCS11_KEYD_KEY", p(&edges, "nginx-edge.key")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();

    let listing = text(&pkcs11_tool(&env, &["--list-objects"]));
    assert!(listing.contains("label:      www.test.com") && listing.contains("label:      rsa.test.com"), "{listing}");
    assert!(!listing.contains("ed.test.com") && !listing.contains("p384.test.com"), "ungranted keys are not listed: {listing}");

    let server = s_server(d, &pki, &env, "www.test.com");
    let out = s_client(server.port, &pki, "www.test.com", &["-tls1_3"]);
    assert!(handshake_ok(&out), "{out}\n{}\n{}", server.output(), kd.log());

    write_mode(&auth, &grants("\"rsa.test.com\""), 0o644);
    let o = run(Command::new("kill").args(["-HUP", &kd.child.id().to_string()]));
    assert!(o.status.success());
    kd.wait_log("reloaded grants");
    let out = s_client(server.port, &pki, "www.test.com", &["-tls1_3"]);
    assert!(!handshake_ok(&out) && out.contains("alert internal error"), "{out}\n{}\n{}", server.output(), kd.log());
    let log = kd.wait_log("refused (FORBIDDEN)");
    assert!(log.lines().any(|l| l.contains("refused (FORBIDDEN)") && l.contains("CN=nginx-edge") && l.contains("www.test.com")), "{log}");
    let said = server.wait_output("FORBIDDEN");
    assert!(said.contains("sealtls-pkcs11") && said.contains("keyd refused (FORBIDDEN)"), "{said}");
}

/// keyd's PKCS#11 backend (SoftHSM) signs the module's digests too: the
/// token takes CKM_ECDSA, CKM_RSA_PKCS over a DigestInfo and CKM_RSA_PKCS_PSS.
#[test]
fn a_keyd_on_a_token_signs_the_modules_digests() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let pki = pki(d);
    let (conf, pin) = softhsm(d);
    std::env::set_var("SOFTHSM2_CONF", &conf);
    let token =
        ["--backend", "pkcs11", "--module", "/usr/lib/softhsm/libsofthsm2.so", "--token", "sealtls", "--pin-file", pin.to_str().unwrap()];
    let kd = keyd(&d.join("keyd"), &d.join("device.key"), &token);
    for name in ["www.test.com", "p384.test.com", "rsa.test.com"] {
        put(&kd.addr, &pki, name);
    }
    let env = unix_env(&kd);
    let listing = text(&pkcs11_tool(&env, &["--list-objects"]));
    let message = d.join("message");
    std::fs::write(&message, b"signed by a token through keyd").unwrap();
    let sha256 = sha256_of(&message);
    let cases: [Case; 4] = [
        ("www.test.com", "ECDSA", &sha256, &["--signature-format", "openssl"], &["dgst", "-sha256"]),
        ("p384.test.com", "ECDSA-SHA384", &message, &["--signature-format", "openssl"], &["dgst", "-sha384"]),
        ("rsa.test.com", "SHA256-RSA-PKCS", &message, &[], &["dgst", "-sha256"]),
        ("rsa.test.com", "RSA-PKCS-PSS", &sha256, PSS_SHA256, VERIFY_PSS_SHA256),
    ];
    for case in cases {
        signs_and_verifies(d, &pki, &env, &listing, &message, case);
    }
}

/// A consumer that forks without initializing again (Python's ctypes, not
/// libp11): the child signs with its parent's session and key handles over
/// a connection of its own, and the parent signs on after it.
#[test]
fn a_forked_child_signs_with_its_parents_handles() {
    use aws_lc_rs::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_FIXED};
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let pki = pki(d);
    let status = free_port();
    let kd = keyd_with_keys(d, &pki, &["--status", &format!("127.0.0.1:{status}")]);
    // Connections keyd has accepted, from its metrics.
    let accepted = || -> u64 {
        let o = run(Command::new("curl").args(["-sS", &format!("http://127.0.0.1:{status}/metrics")]));
        let metrics = text(&o);
        let lines = metrics.lines().filter(|l| l.starts_with("sealtls_keyd_connections_total"));
        lines.map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap()).sum()
    };
    let before = accepted();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pkcs11/fork.py");
    let out = d.join("sig");
    let mut cmd = Command::new("python3");
    cmd.arg(&script).arg(module()).arg("www.test.com").arg(&out);
    let o = run(with_env(&mut cmd, &unix_env(&kd)));
    let said = text(&o);
    assert!(o.status.success() && said.contains("done"), "{said}");
    let pids: std::collections::HashSet<&str> = said.lines().filter(|l| l.contains("made")).map(|l| l.split(':').next().unwrap()).collect();
    assert_eq!(pids.len(), 2, "parent and child signed: {said}");
    // The parent's one connection served its listing and both its signatures; the child opened its own.
    assert_eq!(accepted() - before, 2, "{said}");

    let spki = run(Command::new("sh")
        .arg("-c")
        .arg(format!("openssl x509 -pubkey -noout -in {} | openssl pkey -pubin -outform DER", p(&pki, "www.test.com.pem"))))
    .stdout;
    let point = &spki[spki.len() - 65..];
    for n in 1..=3 {
        let sig = std::fs::read(out.with_extension(n.to_string())).unwrap();
        let message = format!("fork message {n}");
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
            .verify(message.as_bytes(), &sig)
            .unwrap_or_else(|_| panic!("signature {n} does not verify"));
    }
}
