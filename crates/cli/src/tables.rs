//! The `[[serve]]`, `[[tunnel]]` and `[status]` tables of `sealtls.toml`,
//! checked into the same argument structs the `serve` and `tunnel` flags
//! fill, so that a table and its flags run the same code; and the check
//! that no two services of a file share an address.
use std::fmt::Display;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use clap::{Args, FromArgMatches};
use sealtls_console::TlsMaterial;
use sealtls_endpoint::forward::{is_loopback, Target};
use sealtls_endpoint::proxy_protocol::ProxyProtocol;
use sealtls_endpoint::server::Mode;
use sealtls_endpoint::{ClientAuthMode, TlsVersions};
use sealtls_failure::{Failure, Problem};
use serde::Deserialize;

use crate::acl::{AllowFlags, BadRule, RuleLists, VerifyFlags};
use crate::config::{describe_chain, ConfigError};
use crate::endpoints::ServeArgs;
use crate::identity::{anchors, identity_from_files};
use crate::services::Address;
use crate::tunnel::{Listen, TunnelArgs};

/// `keyd = "unix:PATH"`, or a list of keyds holding the same keys.
#[derive(Deserialize)]
#[serde(untagged)]
enum Keyds {
    One(String),
    Many(Vec<String>),
}

impl Keyds {
    fn specs(&self) -> &[String] {
        match self {
            Self::One(spec) => std::slice::from_ref(spec),
            Self::Many(specs) => specs,
        }
    }
}

/// One `[[serve]]` table as written.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawServe {
    listen: Option<String>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    keyd: Option<Keyds>,
    keyd_ca: Option<PathBuf>,
    keyd_cert: Option<PathBuf>,
    keyd_key: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    client_auth: Option<String>,
    tls: Option<String>,
    mode: Option<String>,
    target: Option<String>,
    #[serde(default)]
    unsafe_target: bool,
    proxy_protocol: Option<String>,
    #[serde(default)]
    alpn: Vec<String>,
    #[serde(default)]
    allow_cn: Vec<String>,
    #[serde(default)]
    allow_dns: Vec<String>,
    #[serde(default)]
    allow_uri: Vec<String>,
    #[serde(default)]
    allow_spki_sha256: Vec<String>,
    #[serde(default)]
    allow_all: bool,
    handshake_timeout_secs: Option<u64>,
    idle_timeout_secs: Option<u64>,
    connect_timeout_secs: Option<u64>,
    max_conn_lifetime_secs: Option<u64>,
    max_connections: Option<usize>,
}

/// One `[[tunnel]]` table as written.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawTunnel {
    listen: Option<String>,
    target: Option<String>,
    ca_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    keyd: Option<Keyds>,
    keyd_ca: Option<PathBuf>,
    keyd_cert: Option<PathBuf>,
    keyd_key: Option<PathBuf>,
    keyd_name: Option<String>,
    server_name: Option<String>,
    #[serde(default)]
    alpn: Vec<String>,
    tls: Option<String>,
    #[serde(default)]
    verify_cn: Vec<String>,
    #[serde(default)]
    verify_dns: Vec<String>,
    #[serde(default)]
    verify_uri: Vec<String>,
    #[serde(default)]
    verify_spki_sha256: Vec<String>,
    #[serde(default)]
    unsafe_listen: bool,
    connect_timeout_secs: Option<u64>,
    idle_timeout_secs: Option<u64>,
    max_connections: Option<usize>,
}

/// `[status]` as written.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawStatus {
    listen: Option<String>,
    #[serde(default)]
    unsafe_status: bool,
}

/// A checked `[[serve]]` table.
#[derive(Clone)]
pub struct ServeTable {
    /// `[[serve]] #N`, counted from 1 in file order.
    pub label: String,
    /// What `sealtls serve` would be given as flags.
    pub args: ServeArgs,
    /// Whether the certificate (and client CA) come from `[tls]`.
    pub inherits_tls: bool,
    /// For `config check`: the certificate source, trust, ACL and limits, one line each.
    pub summary: Vec<(&'static str, String)>,
}

impl ServeTable {
    /// The `[tls]` material this table takes its certificate and client CA
    /// from: all of `material` when it names no certificate of its own.
    pub fn material<'a>(&self, material: &'a TlsMaterial) -> Option<&'a TlsMaterial> {
        self.inherits_tls.then_some(material)
    }
}

/// A checked `[[tunnel]]` table.
#[derive(Clone)]
pub struct TunnelTable {
    /// `[[tunnel]] #N`.
    pub label: String,
    /// What `sealtls tunnel` would be given as flags.
    pub args: TunnelArgs,
    /// For `config check`.
    pub summary: Vec<(&'static str, String)>,
}

/// `[status]`: where the status page listens when `--status` is not given.
#[derive(Clone, Debug)]
pub struct StatusSection {
    /// Loopback `IP:PORT` or `unix:PATH` (relative paths from the config file's directory).
    pub listen: Listen,
    /// Whether a non-loopback address was allowed.
    pub unsafe_status: bool,
}

/// What the checks need to know about the file.
pub struct Ctx<'a> {
    /// The file, for messages.
    pub path: &'a str,
    /// Its directory, which relative paths start from.
    pub dir: &'a Path,
    /// Its `[tls]` table.
    pub material: &'a TlsMaterial,
}

impl Ctx<'_> {
    fn err(&self, table: &str, key: impl Display, detail: Problem) -> ConfigError {
        ConfigError::Field { path: self.path.to_owned(), table: table.to_owned(), key: key.to_string(), detail: Box::new(detail) }
    }

    fn file(&self, p: &Path) -> PathBuf {
        self.dir.join(p)
    }

    fn required<'v, T>(&self, table: &str, key: &str, value: Option<&'v T>, example: &str) -> Result<&'v T, ConfigError> {
        value.ok_or_else(|| self.err(table, key, Problem::new("is missing", format!("add {key} = {example} to {table}"))))
    }

    fn parsed<T>(
        &self,
        table: &str,
        key: &str,
        value: Option<&str>,
        parse: impl FnOnce(&str) -> Result<T, Problem>,
    ) -> Result<Option<T>, ConfigError> {
        value.map(|v| parse(v).map_err(|p| self.err(table, format!("{key} = {v:?}"), p))).transpose()
    }

    fn rule(&self, table: &str, prefix: &str, bad: BadRule) -> ConfigError {
        self.err(table, format!("{prefix}{} = [{:?}]", bad.list, bad.value), bad.problem)
    }

    fn alpn(&self, table: &str, alpn: &[String]) -> Result<(), ConfigError> {
        match alpn.iter().find(|p| p.is_empty() || p.len() > 255) {
            Some(bad) => Err(self.err(
                table,
                format!("alpn = [{bad:?}]"),
                Problem::new("is not a protocol name (1 to 255 bytes)", "list names, e.g. alpn = [\"h2\", \"http/1.1\"]"),
            )),
            None => Ok(()),
        }
    }

    /// A `keyd` value with its TLS files, as `serve --keyd` and `tunnel --keyd` take them.
    fn keyd(&self, table: &str, spec: &str, ca: Option<&Path>, cert: Option<&Path>, key: Option<&Path>) -> Result<String, ConfigError> {
        if let Some(path) = spec.strip_prefix("unix:").filter(|p| !p.is_empty()) {
            return Ok(format!("unix:{}", self.file(Path::new(path)).display()));
        }
        let bad = |what: &str, fix: &str| self.err(table, format!("keyd = {spec:?}"), Problem::new(what, fix));
        if spec.strip_prefix("tls://").is_none_or(|a| a.rsplit_once(':').is_none()) {
            return Err(bad(
                "is neither unix:PATH nor tls://HOST:PORT",
                "write keyd = \"unix:keyd/keyd.sock\" or keyd = \"tls://HOST:PORT\"",
            ));
        }
        if ca.is_none() || cert.is_none() || key.is_none() {
            return Err(bad(
                "over TLS needs keyd_ca, keyd_cert and keyd_key",
                "add the CA that issued keyd's certificate and this client's certificate and key",
            ));
        }
        Ok(spec.to_owned())
    }
}

/// The values a subcommand's flags take when none is given: clap's defaults,
/// so that a table's defaults are the ones `--help` states.
pub fn flag_defaults<T: Args + FromArgMatches>(required: &[&str]) -> T {
    let cmd = T::augment_args(clap::Command::new("defaults").no_binary_name(true));
    T::from_arg_matches(&cmd.get_matches_from(required)).expect("the flags' defaults parse")
}

/// A limit in seconds, checked as its flag is (`zero_ok`: 0 means none).
fn secs(ctx: &Ctx<'_>, t: &str, key: &str, v: Option<u64>, default: u64, zero_ok: bool) -> Result<u64, ConfigError> {
    match v.map(|v| (v, crate::limits::secs_refusal(v, zero_ok))) {
        Some((v, Some((what, fix)))) => Err(ctx.err(t, format!("{key} = {v}"), Problem::new(what, fix))),
        Some((v, None)) => Ok(v),
        None => Ok(default),
    }
}

fn failure_problem(f: Failure) -> Problem {
    Problem::new(f.what, f.fix)
}

/// Checks `[[serve]]` tables into the `serve` flags they stand for.
pub fn serve_tables(raw: &[RawServe], ctx: &Ctx<'_>) -> Result<Vec<ServeTable>, ConfigError> {
    raw.iter().enumerate().map(|(i, r)| serve_table(&format!("[[serve]] #{}", i + 1), r, ctx)).collect()
}

fn serve_table(t: &str, r: &RawServe, ctx: &Ctx<'_>) -> Result<ServeTable, ConfigError> {
    let mut a: ServeArgs = flag_defaults(&[]);
    let listen = ctx.required(t, "listen", r.listen.as_ref(), "\"127.0.0.1:PORT\"")?;
    a.listen = Listen::Tcp(ctx.parsed(t, "listen", Some(listen), parse_addr)?.expect("given"));
    let mut summary = Vec::new();
    // Where the certificate comes from: files, keyd, or [tls].
    let inherits_tls = match own_identity(ctx, t, &r.cert_file, &r.key_file, r.keyd.as_ref(), [&r.keyd_ca, &r.keyd_cert, &r.keyd_key])? {
        Identity::Files { cert, key, described } => {
            summary.push(("certificate", described));
            (a.files.cert, a.files.key) = (Some(cert), Some(key));
            false
        }
        Identity::Keyd { specs, files } => {
            summary.push(("certificate", format!("from keyd {}, by SNI (keys stay in keyd)", specs.join(", "))));
            a.keyless.link.keyd = specs;
            [a.keyless.link.keyd_ca, a.keyless.link.keyd_cert, a.keyless.link.keyd_key] = files;
            false
        }
        Identity::None => {
            let Some(server) = &ctx.material.server else {
                return Err(ctx.err(
                    t,
                    "cert_file",
                    Problem::new(
                        "is missing, and [tls] has no srv_cert to take instead",
                        "give cert_file and key_file, or keyd = \"unix:PATH\", or srv_cert_file and srv_key_file in [tls]",
                    ),
                ));
            };
            summary.push(("certificate", format!("[tls] srv_cert: {}", describe_chain(&server.cert))));
            true
        }
    };
    let trust = match &r.ca_file {
        Some(ca) => {
            let ca = ctx.file(ca);
            let anchors = anchors(&ca).map_err(|f| ctx.err(t, format!("ca_file = {:?}", ca.display().to_string()), failure_problem(f)))?;
            summary.push(("trust", format!("client certificates from {} ({} CA certificate(s))", ca.display(), anchors.certs.len())));
            a.files.ca = Some(ca);
            true
        }
        None if inherits_tls && ctx.material.ca.is_some() => {
            summary.push(("trust", "client certificates from [tls] ca_cert".into()));
            true
        }
        None => {
            summary.push(("trust", "no client certificates asked".into()));
            false
        }
    };
    a.client_auth = ctx.parsed(t, "client_auth", r.client_auth.as_deref(), ClientAuthMode::parse)?;
    if a.client_auth.is_some_and(|m| m != ClientAuthMode::None) && !trust {
        return Err(ctx.err(t, "client_auth", Problem::new("asks for client certificates but no CA is given", "add ca_file = \"ca.pem\"")));
    }
    if let Some(v) = ctx.parsed(t, "tls", r.tls.as_deref(), TlsVersions::parse)? {
        a.tls = v;
    }
    let mode = ctx.parsed(t, "mode", r.mode.as_deref(), |m| {
        Mode::from_str(m).map_err(|e| Problem::new(e, "write mode = \"echo\", \"sink\" or \"handshake\""))
    })?;
    a.target = ctx.parsed(t, "target", r.target.as_deref(), |s| {
        let target = Target::from_str(s).map_err(|e| Problem::new(e, "write target = \"127.0.0.1:PORT\" or \"unix:PATH\""))?;
        Ok(match target {
            Target::Unix(p) => Target::Unix(ctx.file(&p)),
            tcp => tcp,
        })
    })?;
    match (&a.target, mode) {
        (Some(_), Some(_)) => {
            return Err(ctx.err(t, "mode", Problem::new("is given with target", "keep one: a server with mode, or a proxy to target")))
        }
        (None, Some(m)) => a.mode = m,
        _ => {}
    }
    a.unsafe_target = r.unsafe_target;
    if let Some(Target::Tcp(addr)) = &a.target {
        check_local_target(addr, r.unsafe_target).map_err(|p| ctx.err(t, format!("target = {addr:?}"), p))?;
    }
    a.proxy_protocol = ctx.parsed(t, "proxy_protocol", r.proxy_protocol.as_deref(), |s| {
        ProxyProtocol::from_str(s).map_err(|e| Problem::new(e, "write proxy_protocol = \"v2\""))
    })?;
    if a.target.is_none() {
        for (key, given) in [("unsafe_target", r.unsafe_target), ("proxy_protocol", r.proxy_protocol.is_some())] {
            if given {
                return Err(ctx.err(t, key, Problem::new("needs target", format!("add target = \"127.0.0.1:PORT\", or remove {key}"))));
            }
        }
    }
    ctx.alpn(t, &r.alpn)?;
    a.alpn = r.alpn.clone();
    let lists = RuleLists { cn: &r.allow_cn, dns: &r.allow_dns, uri: &r.allow_uri, spki_sha256: &r.allow_spki_sha256 };
    a.allow = AllowFlags::from_lists(lists, r.allow_all).map_err(|b| ctx.rule(t, "allow_", b))?;
    let rules = a.allow.rules();
    if !rules.is_empty() {
        if !trust {
            return Err(ctx.err(
                t,
                "allow_*",
                Problem::new("rules need client certificates, and no CA is given", "add ca_file = \"ca.pem\""),
            ));
        }
        if a.client_auth.is_some_and(|m| m != ClientAuthMode::Required) {
            return Err(ctx.err(
                t,
                "client_auth",
                Problem::new("must be \"required\" with allow_* rules", "set client_auth = \"required\", or remove it"),
            ));
        }
    }
    summary.push((
        "allow",
        if !trust {
            "-".into()
        } else if rules.is_empty() {
            "any certificate the CA issued".into()
        } else {
            rules.to_string()
        },
    ));
    a.handshake_timeout = secs(ctx, t, "handshake_timeout_secs", r.handshake_timeout_secs, a.handshake_timeout, false)?;
    a.idle_timeout = secs(ctx, t, "idle_timeout_secs", r.idle_timeout_secs, a.idle_timeout, true)?;
    a.connect_timeout = secs(ctx, t, "connect_timeout_secs", r.connect_timeout_secs, a.connect_timeout, false)?;
    a.max_conn_lifetime = secs(ctx, t, "max_conn_lifetime_secs", r.max_conn_lifetime_secs, a.max_conn_lifetime, true)?;
    a.max_connections = positive(ctx, t, r.max_connections, a.max_connections)?;
    summary.push((
        "limits",
        format!(
            "handshake {} s, idle {} s, lifetime {}, connect {} s, {} connections",
            a.handshake_timeout,
            a.idle_timeout,
            if a.max_conn_lifetime == 0 { "unlimited".into() } else { format!("{} s", a.max_conn_lifetime) },
            a.connect_timeout,
            a.max_connections
        ),
    ));
    let what = match &a.target {
        Some(target) => format!("proxy to {target}{}", a.proxy_protocol.map(|p| format!(", PROXY protocol {p}")).unwrap_or_default()),
        None => format!("{:?}", a.mode).to_lowercase(),
    };
    summary.insert(
        0,
        (
            "does",
            format!("{what}, TLS {}{}", a.tls, if a.alpn.is_empty() { String::new() } else { format!(", ALPN {}", a.alpn.join(",")) }),
        ),
    );
    Ok(ServeTable { label: t.to_owned(), args: a, inherits_tls, summary })
}

fn positive(ctx: &Ctx<'_>, t: &str, v: Option<usize>, default: usize) -> Result<usize, ConfigError> {
    match v {
        Some(0) => Err(ctx.err(t, "max_connections = 0", Problem::new("lets no connection in", "give at least 1"))),
        Some(n) => Ok(n),
        None => Ok(default),
    }
}

fn parse_addr(s: &str) -> Result<SocketAddr, Problem> {
    s.parse().map_err(|_| Problem::new("not an address", "write it as IP:PORT, e.g. 127.0.0.1:8443"))
}

/// A target must resolve to this machine only, unless `unsafe_target`: the
/// forwarded bytes are plain text.
fn check_local_target(addr: &str, unsafe_target: bool) -> Result<(), Problem> {
    if unsafe_target {
        return Ok(());
    }
    let resolved: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|e| Problem::new(format!("cannot be resolved: {e}"), "check the name, or give an address"))?
        .collect();
    match resolved.iter().find(|a| !is_loopback(a.ip())) {
        None if !resolved.is_empty() => Ok(()),
        found => Err(Problem::new(
            format!(
                "is not on this machine{}: the forwarded bytes would cross the network in the clear",
                found.map(|a| format!(" ({})", a.ip())).unwrap_or_default()
            ),
            "forward to a loopback address or unix:PATH, or set unsafe_target = true if the network between is trusted",
        )),
    }
}

/// A table's own certificate, as its fields give it.
enum Identity {
    /// `cert_file` and `key_file`, checked to load and match; `described` for `config check`.
    Files { cert: PathBuf, key: PathBuf, described: String },
    /// `keyd` (one or several) with `keyd_ca`, `keyd_cert` and `keyd_key`.
    Keyd { specs: Vec<String>, files: [Option<PathBuf>; 3] },
    /// None given.
    None,
}

/// Checks `cert_file`/`key_file` against `keyd`: one source at most, files in pairs.
fn own_identity(
    ctx: &Ctx<'_>,
    t: &str,
    cert: &Option<PathBuf>,
    key: &Option<PathBuf>,
    keyd: Option<&Keyds>,
    keyd_files: [&Option<PathBuf>; 3],
) -> Result<Identity, ConfigError> {
    match (cert, key, keyd) {
        (Some(_), _, Some(_)) | (_, Some(_), Some(_)) => {
            Err(ctx.err(t, "keyd", Problem::new("is given with cert_file/key_file", "keep keyd, or cert_file and key_file")))
        }
        (Some(cert), Some(key), None) => {
            let (cert, key) = (ctx.file(cert), ctx.file(key));
            let id = identity_from_files(&cert, &key).map_err(|f| ctx.err(t, "cert_file/key_file", failure_problem(f)))?;
            let described = format!("{} ({})", describe_chain(&id.cert), cert.display());
            Ok(Identity::Files { cert, key, described })
        }
        (Some(_), None, None) => Err(ctx.err(t, "cert_file", Problem::new("is given without key_file", "give both, or neither"))),
        (None, Some(_), None) => Err(ctx.err(t, "key_file", Problem::new("is given without cert_file", "give both, or neither"))),
        (None, None, Some(keyds)) => {
            let files = keyd_files.map(|f| f.as_deref().map(|p| ctx.file(p)));
            let specs = keyds.specs().iter().map(|one| ctx.keyd(t, one, files[0].as_deref(), files[1].as_deref(), files[2].as_deref()));
            Ok(Identity::Keyd { specs: specs.collect::<Result<Vec<_>, _>>()?, files })
        }
        (None, None, None) => Ok(Identity::None),
    }
}

/// A `listen` that may be `unix:PATH`, relative paths from the file's directory.
fn parse_listen(ctx: &Ctx<'_>, s: &str) -> Result<Listen, Problem> {
    match Listen::from_str(s).map_err(|e| Problem::new(e, "write IP:PORT or unix:PATH"))? {
        Listen::Unix(p) => Ok(Listen::Unix(ctx.file(&p))),
        Listen::Systemd(_) => Err(Problem::new(
            "a socket passed by systemd is not written in the config file",
            "write IP:PORT or unix:PATH; give systemd sockets with --listen systemd:NAME",
        )),
        tcp => Ok(tcp),
    }
}

/// Checks `[[tunnel]]` tables into the `tunnel` flags they stand for.
pub fn tunnel_tables(raw: &[RawTunnel], ctx: &Ctx<'_>) -> Result<Vec<TunnelTable>, ConfigError> {
    raw.iter().enumerate().map(|(i, r)| tunnel_table(&format!("[[tunnel]] #{}", i + 1), r, ctx)).collect()
}

fn tunnel_table(t: &str, r: &RawTunnel, ctx: &Ctx<'_>) -> Result<TunnelTable, ConfigError> {
    let listen = ctx.required(t, "listen", r.listen.as_ref(), "\"127.0.0.1:PORT\"")?;
    let target = ctx.required(t, "target", r.target.as_ref(), "\"HOST:PORT\"")?;
    let ca = ctx.required(t, "ca_file", r.ca_file.as_ref(), "\"ca.pem\"")?;
    let mut a: TunnelArgs = flag_defaults(&["--listen", "127.0.0.1:0", "--target", "localhost:1", "--ca", "ca.pem"]);
    a.listen = ctx.parsed(t, "listen", Some(listen), |s| parse_listen(ctx, s))?.expect("given");
    a.unsafe_listen = r.unsafe_listen;
    loopback_unless(ctx, t, listen, &a.listen, r.unsafe_listen, "unsafe_listen", "reach the target with this tunnel's client certificate")?;
    sealtls_endpoint::client::host_of(target).map_err(|f| ctx.err(t, format!("target = {target:?}"), failure_problem(f)))?;
    a.target = target.clone();
    a.ca = ctx.file(ca);
    let anchors = anchors(&a.ca).map_err(|f| ctx.err(t, format!("ca_file = {:?}", a.ca.display().to_string()), failure_problem(f)))?;
    let mut summary =
        vec![("target", format!("{target}, verified against {} ({} CA certificate(s))", a.ca.display(), anchors.certs.len()))];
    match own_identity(ctx, t, &r.cert_file, &r.key_file, r.keyd.as_ref(), [&r.keyd_ca, &r.keyd_cert, &r.keyd_key])? {
        Identity::Files { cert, key, described } => {
            summary.push(("certificate", described));
            (a.cert, a.key) = (Some(cert), Some(key));
        }
        Identity::Keyd { specs, files } => {
            let name = ctx.required(t, "keyd_name", r.keyd_name.as_ref(), "\"NAME\"")?;
            summary.push(("certificate", format!("{name} from keyd {} (the key stays in keyd)", specs.join(", "))));
            a.keyless.keyd = specs;
            [a.keyless.keyd_ca, a.keyless.keyd_cert, a.keyless.keyd_key] = files;
            a.keyd_name = Some(name.clone());
        }
        Identity::None => summary.push(("certificate", "none offered".into())),
    }
    a.server_name = r.server_name.clone();
    ctx.alpn(t, &r.alpn)?;
    a.alpn = r.alpn.clone();
    if let Some(v) = ctx.parsed(t, "tls", r.tls.as_deref(), TlsVersions::parse)? {
        a.tls = v;
    }
    let lists = RuleLists { cn: &r.verify_cn, dns: &r.verify_dns, uri: &r.verify_uri, spki_sha256: &r.verify_spki_sha256 };
    a.verify = VerifyFlags::from_lists(lists).map_err(|b| ctx.rule(t, "verify_", b))?;
    let rules = a.verify.rules();
    let name = r.server_name.as_deref().unwrap_or(target.rsplit_once(':').map_or(target.as_str(), |(h, _)| h));
    summary.push(("verify", if rules.is_empty() { format!("chain and name {name}") } else { format!("chain, name {name} and {rules}") }));
    a.connect_timeout = secs(ctx, t, "connect_timeout_secs", r.connect_timeout_secs, a.connect_timeout, false)?;
    a.idle_timeout = secs(ctx, t, "idle_timeout_secs", r.idle_timeout_secs, a.idle_timeout, true)?;
    a.max_connections = positive(ctx, t, r.max_connections, a.max_connections)?;
    summary.push(("limits", format!("connect {} s, idle {} s, {} connections", a.connect_timeout, a.idle_timeout, a.max_connections)));
    Ok(TunnelTable { label: t.to_owned(), args: a, summary })
}

/// Refuses a TCP `listen` of table `t` off loopback unless its `unsafe_flag`
/// is set: anyone who can reach it could `what`.
fn loopback_unless(
    ctx: &Ctx<'_>,
    t: &str,
    listen: &str,
    parsed: &Listen,
    unsafe_set: bool,
    unsafe_flag: &str,
    what: &str,
) -> Result<(), ConfigError> {
    match parsed {
        Listen::Tcp(addr) if !is_loopback(addr.ip()) && !unsafe_set => Err(ctx.err(
            t,
            format!("listen = {listen:?}"),
            Problem::new(
                format!("is not a loopback address: anyone who can reach it would {what}"),
                format!("listen on 127.0.0.1:PORT or unix:PATH, or set {unsafe_flag} = true"),
            ),
        )),
        _ => Ok(()),
    }
}

/// Checks `[status]`: loopback, or `unix:PATH`, unless `unsafe_status`.
pub fn status(raw: &RawStatus, ctx: &Ctx<'_>) -> Result<StatusSection, ConfigError> {
    let t = "[status]";
    let listen = ctx.required(t, "listen", raw.listen.as_ref(), "\"127.0.0.1:PORT\"")?;
    let parsed = ctx.parsed(t, "listen", Some(listen), |s| parse_listen(ctx, s))?.expect("given");
    loopback_unless(ctx, t, listen, &parsed, raw.unsafe_status, "unsafe_status", "read the status")?;
    Ok(StatusSection { listen: parsed, unsafe_status: raw.unsafe_status })
}

impl From<&Listen> for Address {
    fn from(l: &Listen) -> Self {
        match l {
            Listen::Tcp(a) => Address::Tcp(*a),
            Listen::Unix(p) => Address::Unix(p.clone()),
            // Refused in config files (see `parse_listen`); named as given.
            Listen::Systemd(_) => Address::Unix(PathBuf::from(l.to_string())),
        }
    }
}

/// Whether two services would fight over one address: the same socket
/// path, or the same TCP port on the same or a wildcard IP (port 0 is
/// chosen by the system and never collides).
fn collide(a: &Address, b: &Address) -> bool {
    match (a, b) {
        (Address::Tcp(x), Address::Tcp(y)) => {
            x.port() != 0 && x.port() == y.port() && (x.ip() == y.ip() || x.ip().is_unspecified() || y.ip().is_unspecified())
        }
        (Address::Unix(x), Address::Unix(y)) => x == y,
        _ => false,
    }
}

/// One address a file gives a service: the table, the field and the address.
pub type Used = (String, &'static str, Address);

/// Refuses two services of one file on one address; `used` in file order.
pub fn distinct_addresses(path: &str, used: &[Used]) -> Result<(), ConfigError> {
    for (i, (table, field, b)) in used.iter().enumerate() {
        if let Some((first, first_field, a)) = used[..i].iter().find(|(_, _, a)| collide(a, b)) {
            return Err(ConfigError::Field {
                path: path.to_owned(),
                table: table.clone(),
                key: format!("{field} = \"{b}\""),
                detail: Box::new(Problem::new(
                    format!("{first} {first_field} already uses {a}"),
                    format!("give {table} {field} an address of its own (a free port, or another socket path)"),
                )),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_default_to_what_the_flags_default_to() {
        let serve: ServeArgs = flag_defaults(&[]);
        assert_eq!((serve.handshake_timeout, serve.idle_timeout, serve.max_connections, serve.connect_timeout), (10, 300, 10_000, 10));
        assert_eq!((serve.mode, serve.tls, serve.max_conn_lifetime), (Mode::Echo, TlsVersions::Any, 0));
        let tunnel: TunnelArgs = flag_defaults(&["--listen", "127.0.0.1:0", "--target", "localhost:1", "--ca", "ca.pem"]);
        assert_eq!((tunnel.connect_timeout, tunnel.idle_timeout, tunnel.max_connections), (10, 300, 1000));
    }

    #[test]
    fn addresses_collide_on_one_port_of_one_or_every_ip_and_on_one_path() {
        let tcp = |s: &str| Address::Tcp(s.parse().unwrap());
        assert!(collide(&tcp("127.0.0.1:80"), &tcp("127.0.0.1:80")));
        assert!(collide(&tcp("0.0.0.0:80"), &tcp("127.0.0.1:80")));
        assert!(collide(&tcp("127.0.0.1:80"), &tcp("[::]:80")));
        assert!(!collide(&tcp("127.0.0.1:80"), &tcp("127.0.0.2:80")));
        assert!(!collide(&tcp("127.0.0.1:80"), &tcp("127.0.0.1:81")));
        assert!(!collide(&tcp("127.0.0.1:0"), &tcp("127.0.0.1:0")));
        let unix = |s: &str| Address::Unix(s.into());
        assert!(collide(&unix("/run/a.sock"), &unix("/run/a.sock")));
        assert!(!collide(&unix("/run/a.sock"), &unix("/run/b.sock")));
        let used = [("[echo]".to_owned(), "listen", tcp("127.0.0.1:80")), ("[[serve]] #1".to_owned(), "listen", tcp("0.0.0.0:80"))];
        let e = distinct_addresses("f.toml", &used).unwrap_err();
        assert_eq!(e.to_string(), "f.toml: [[serve]] #1 listen = \"0.0.0.0:80\": [echo] listen already uses 127.0.0.1:80");
    }

    #[test]
    fn a_target_must_be_on_this_machine_unless_allowed() {
        check_local_target("127.0.0.1:80", false).unwrap();
        check_local_target("[::1]:80", false).unwrap();
        let p = check_local_target("192.0.2.1:80", false).unwrap_err();
        assert!(p.what.contains("not on this machine") && p.fix.unwrap().contains("unsafe_target = true"));
        check_local_target("192.0.2.1:80", true).unwrap();
    }
}
