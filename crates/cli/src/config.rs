//! `sealtls.toml`: one file for the long-running subcommands. The `[tls]`
//! table mirrors BitVisor's defconfig `.tls` section (`srv_cert`, `srv_key`,
//! `ca_cert` as inline PEM, or `*_file` paths relative to the config file).
//! Everything is checked at load; nothing starts on a bad config.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::sign::CertifiedKey;
use rustls_pki_types::CertificateDer;
use sealtls_console::TlsMaterial;
use sealtls_endpoint::settings::{certified_key, Anchors, SetupError};
use sealtls_endpoint::{ClientAuthMode, TlsVersions};
use sealtls_failure::{Failure, Problem, Remedy};
use sealtls_keyless::KeylessLimits;
use sealtls_offload_daemon::{Allow, OffloadSettings, DEFAULT_BUFFER_SIZE, DEFAULT_MAX_CLIENTS};
use sealtls_pki::files::check_secret_mode;
use sealtls_pki::load::read_limited;
use sealtls_pki::{load_certs_pem, load_key_pem, LoadError};
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::keyd::{BackendKind, KeydArgs, SealKind};
use crate::limits;
use crate::services::Address;
use crate::tables::{
    self, distinct_addresses, flag_defaults, serve_tables, tunnel_tables, Ctx, RawServe, RawStatus, RawTunnel, ServeTable, StatusSection,
    TunnelTable, Used,
};

/// The name looked for in the working directory.
pub const DEFAULT_NAME: &str = "sealtls.toml";

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    tls: RawTls,
    #[serde(default)]
    echo: RawEcho,
    #[serde(default)]
    console: RawConsole,
    #[serde(default)]
    offload: RawOffload,
    #[serde(default)]
    keyless: RawKeyless,
    #[serde(default)]
    keyd: RawKeyd,
    #[serde(default)]
    serve: Vec<RawServe>,
    #[serde(default)]
    tunnel: Vec<RawTunnel>,
    status: Option<RawStatus>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTls {
    srv_cert: Option<String>,
    srv_cert_file: Option<PathBuf>,
    srv_key: Option<Zeroizing<String>>,
    srv_key_file: Option<PathBuf>,
    ca_cert: Option<String>,
    ca_cert_file: Option<PathBuf>,
    cli_cert: Option<String>,
    cli_cert_file: Option<PathBuf>,
    cli_key: Option<Zeroizing<String>>,
    cli_key_file: Option<PathBuf>,
    #[serde(default)]
    legacy_v1_leaf: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawEcho {
    listen: Option<String>,
    client_auth: Option<String>,
    tls: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConsole {
    listen: Option<String>,
    #[serde(default)]
    allow_remote: bool,
    token_file: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawOffload {
    socket: Option<PathBuf>,
    trust: Option<Vec<String>>,
    max_clients: Option<usize>,
    #[serde(default)]
    allow_uid: Vec<u32>,
    #[serde(default)]
    allow_gid: Vec<u32>,
    buffer_size: Option<usize>,
    connect_timeout_secs: Option<u64>,
    handshake_timeout_secs: Option<u64>,
    client_timeout_secs: Option<u64>,
    hostname_check: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawKeyless {
    listen: Option<String>,
    cache: Option<usize>,
    miss_ttl_secs: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawKeyd {
    socket: Option<PathBuf>,
    authorize: Option<PathBuf>,
    backend: Option<String>,
    seal: Option<String>,
    tpm: Option<String>,
    tpm_pcrs: Option<Vec<u8>>,
    module: Option<PathBuf>,
    token: Option<String>,
    pin_file: Option<PathBuf>,
    max_connections: Option<u32>,
    max_in_flight: Option<u32>,
    frame_timeout_secs: Option<u64>,
    first_byte_timeout_secs: Option<u64>,
}

/// `[keyd] authorize`: the grant file `up` starts keyd with.
#[derive(Clone, Debug)]
pub struct KeydAuthorize {
    /// The file, relative paths taken from the configuration file's directory.
    pub path: PathBuf,
    /// How many [[grant]] tables it holds (0: every caller may sign for every domain).
    pub grants: usize,
}

/// The keyless TLS server of `sealtls up`.
#[derive(Clone, Debug)]
pub struct KeylessSection {
    /// Listen address.
    pub listen: SocketAddr,
    /// `cache` and `miss_ttl_secs`, as `serve --keyless-cache` and `--keyless-miss-ttl`.
    pub limits: KeylessLimits,
}

/// Where `up`'s keyless TLS server listens unless told otherwise.
pub const DEFAULT_KEYLESS_LISTEN: &str = "127.0.0.1:1443";

/// The echo server of `sealtls up`.
#[derive(Clone, Debug)]
pub struct EchoSection {
    /// Listen address.
    pub listen: SocketAddr,
    /// Client certificate policy.
    pub client_auth: ClientAuthMode,
    /// TLS versions.
    pub versions: TlsVersions,
}

/// The console. Not `Debug`: it holds the token.
#[derive(Clone)]
pub struct ConsoleSection {
    /// Listen address.
    pub listen: SocketAddr,
    /// Whether a non-loopback address is allowed.
    pub allow_remote: bool,
    /// The token a session must give, read from `token_file`.
    pub token: Option<Arc<Zeroizing<String>>>,
}

/// Loads trust anchors: `system`, or PEM files, all in one set (empty
/// for no sources: the daemon then refuses to start).
pub fn load_trust(sources: &[PathBuf]) -> Result<Anchors, Problem> {
    let mut all = Vec::new();
    let mut origins = Vec::new();
    for source in sources {
        let anchors = if source.as_os_str() == "system" {
            Anchors::system().map_err(|e| Problem::of(&e))?
        } else {
            let certs = sealtls_pki::load_certs(source).map_err(|e| Problem::of(&e))?;
            Anchors { origin: source.display().to_string(), certs }
        };
        origins.push(anchors.origin);
        all.extend(anchors.certs);
    }
    Ok(Anchors { origin: origins.join(", "), certs: all })
}

/// A loaded, checked configuration.
pub struct Config {
    /// Certificates and keys.
    pub material: Arc<TlsMaterial>,
    /// `[echo]`.
    pub echo: EchoSection,
    /// `[console]`.
    pub console: ConsoleSection,
    /// `[offload]`; trust defaults to `[tls] ca_cert`.
    pub offload: OffloadSettings,
    /// `[keyless]`.
    pub keyless: KeylessSection,
    /// `[keyd] socket`: keyd's Unix socket for `sealtls up`; `None` for DATA_DIR/keyd/keyd.sock.
    pub keyd_socket: Option<PathBuf>,
    /// `[keyd] authorize`: the grants keyd started by `sealtls up` enforces; `None` for none.
    pub keyd_authorize: Option<KeydAuthorize>,
    /// `[keyd]`'s store, seal and limits as `sealtls keyd` flags; `up` fills in the
    /// data directory, device secret, socket and grants.
    pub keyd: KeydArgs,
    /// `[[serve]]` tables, in file order.
    pub serve: Vec<ServeTable>,
    /// `[[tunnel]]` tables, in file order.
    pub tunnel: Vec<TunnelTable>,
    /// `[status]`, when given.
    pub status: Option<StatusSection>,
}

/// Why a configuration was refused. Each message names the file and the
/// key; [`Remedy::fix`] gives the remedy.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read the configuration: {detail}")]
    Read { path: String, detail: Problem },
    /// TOML syntax, an unknown key or a value of the wrong type.
    #[error("{path}: line {line}: {message}")]
    Syntax { path: String, line: usize, message: String, fix: &'static str },
    /// An inline value and a file for the same item.
    #[error("{path}: [tls] {key} and {key}_file are both given")]
    Both { path: String, key: &'static str },
    /// A certificate without its key, or the reverse.
    #[error("{path}: [tls] {given} is given without {missing}")]
    Half { path: String, given: &'static str, missing: &'static str },
    /// A certificate, key or token that could not be loaded.
    #[error("{path}: [{table}] {key}: {source}")]
    Item { path: String, table: &'static str, key: String, source: LoadError },
    /// The certificate and key do not belong together.
    #[error("{path}: {source}")]
    Setup { path: String, source: SetupError },
    /// A private key inline in a file others can read.
    #[error("{path}: holds a private key inline ([tls] {key}) and group or others can read it (mode {mode:04o})")]
    ExposedInline { path: String, key: &'static str, mode: u32 },
    /// The console token file could not be used.
    #[error("{path}: [console] token_file: {detail}")]
    Token { path: String, detail: Problem },
    /// A value that does not parse.
    #[error("{path}: [{table}] {key} = \"{value}\": {detail}")]
    Value { path: String, table: &'static str, key: &'static str, value: String, detail: Box<Problem> },
    /// A field of a table (`[[serve]] #2`, `[keyd]`) that cannot be used; `key` may carry its value.
    #[error("{path}: {table} {key}: {detail}")]
    Field { path: String, table: String, key: String, detail: Box<Problem> },
}

impl Remedy for ConfigError {
    fn fix(&self) -> Option<String> {
        const CHECK_PATH: &str = "check the config file's path (`config check FILE`, `--config FILE`)";
        match self {
            Self::Read { detail, .. } => Some(match detail.fix() {
                Some(fix) => format!("{fix}; {CHECK_PATH}"),
                None => CHECK_PATH.into(),
            }),
            Self::Syntax { fix, .. } => Some((*fix).into()),
            Self::Both { .. } => Some("keep one of them".into()),
            Self::Half { .. } => Some("give both, or neither".into()),
            Self::Item { source, .. } => source.fix(),
            Self::Setup { source, .. } => source.fix(),
            Self::ExposedInline { path, .. } => Some(format!("fix it with `chmod 600 {path}`")),
            Self::Token { detail, .. } => detail.fix(),
            Self::Value { detail, .. } => detail.fix(),
            Self::Field { detail, .. } => detail.fix(),
        }
    }
}

const KEYS_FIX: &str = "the keys are: [tls] srv_cert, srv_key, ca_cert, cli_cert, cli_key (each also as *_file), legacy_v1_leaf; [echo] listen, client_auth, tls; [console] listen, allow_remote, token_file; [offload] socket, trust, max_clients, allow_uid, allow_gid, buffer_size, connect_timeout_secs, handshake_timeout_secs, client_timeout_secs, hostname_check; [keyless] listen, cache, miss_ttl_secs; [keyd] socket, authorize, backend, seal, tpm, tpm_pcrs, module, token, pin_file, max_connections, max_in_flight, frame_timeout_secs, first_byte_timeout_secs; [[serve]] and [[tunnel]]: see examples/sealtls.toml; [status] listen, unsafe_status";

/// Finds the configuration: `explicit`, else `./sealtls.toml`, else
/// `DATA_DIR/sealtls.toml`, when they exist.
pub fn locate(explicit: Option<&Path>, data_dir: &Path) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_owned());
    }
    [PathBuf::from(DEFAULT_NAME), data_dir.join(DEFAULT_NAME)].into_iter().find(|p| p.exists())
}

/// One `[tls]` item: inline PEM or a file.
struct Item<'a, T> {
    key: &'static str,
    inline: Option<&'a T>,
    file: Option<&'a Path>,
}

/// An item's bytes and where they came from.
type Sourced = (Zeroizing<Vec<u8>>, String);

impl<T> Item<'_, T> {
    /// The key as written in the file: `srv_cert` or `srv_cert_file`.
    fn name(&self) -> String {
        if self.file.is_some() {
            format!("{}_file", self.key)
        } else {
            self.key.to_owned()
        }
    }
}

struct Loader<'a> {
    path: &'a Path,
    dir: PathBuf,
    mode: u32,
}

impl Loader<'_> {
    fn name(&self) -> String {
        self.path.display().to_string()
    }

    /// The bytes of an item and where they came from; `None` when absent.
    fn bytes<T: AsRef<str>>(&self, item: &Item<'_, T>, secret: bool) -> Result<Option<Sourced>, ConfigError> {
        let item_err = |source| ConfigError::Item { path: self.name(), table: "tls", key: item.name(), source };
        match (item.inline, item.file) {
            (Some(_), Some(_)) => Err(ConfigError::Both { path: self.name(), key: item.key }),
            (Some(text), None) => {
                if secret && self.mode & 0o077 != 0 {
                    return Err(ConfigError::ExposedInline { path: self.name(), key: item.key, mode: self.mode });
                }
                Ok(Some((Zeroizing::new(text.as_ref().as_bytes().to_vec()), format!("inline {}", item.key))))
            }
            (None, Some(file)) => {
                let file = self.dir.join(file);
                let (bytes, meta) = read_limited(&file).map_err(item_err)?;
                if secret {
                    check_secret_mode(&file, &meta).map_err(|e| item_err(e.into()))?;
                }
                Ok(Some((bytes, file.display().to_string())))
            }
            (None, None) => Ok(None),
        }
    }

    fn certs(&self, item: Item<'_, String>) -> Result<Option<(Vec<CertificateDer<'static>>, String)>, ConfigError> {
        let key = item.name();
        let Some((bytes, origin)) = self.bytes(&item, false)? else { return Ok(None) };
        let certs = load_certs_pem(&bytes, &origin).map_err(|source| ConfigError::Item { path: self.name(), table: "tls", key, source })?;
        Ok(Some((certs, origin)))
    }

    /// A certificate chain with its key, checked to belong together.
    fn identity(&self, cert: Item<'_, String>, key: Item<'_, Zeroizing<String>>) -> Result<Option<Arc<CertifiedKey>>, ConfigError> {
        let (cert_key, key_key) = (cert.key, key.key);
        let key_name = key.name();
        let chain = self.certs(cert)?;
        let key_bytes = self.bytes(&key, true)?;
        let (chain, cert_origin, key_bytes, key_origin) = match (chain, key_bytes) {
            (None, None) => return Ok(None),
            (Some(_), None) => return Err(ConfigError::Half { path: self.name(), given: cert_key, missing: key_key }),
            (None, Some(_)) => return Err(ConfigError::Half { path: self.name(), given: key_key, missing: cert_key }),
            (Some((chain, co)), Some((kb, ko))) => (chain, co, kb, ko),
        };
        let key_der = load_key_pem(&key_bytes, &key_origin).map_err(|source| ConfigError::Item {
            path: self.name(),
            table: "tls",
            key: key_name,
            source,
        })?;
        let certified =
            certified_key(chain, &key_der, &format!("[tls] {cert_key} ({cert_origin})"), &format!("[tls] {key_key} ({key_origin})"))
                .map_err(|source| ConfigError::Setup { path: self.name(), source })?;
        Ok(Some(certified))
    }

    fn parsed<T>(
        &self,
        table: &'static str,
        key: &'static str,
        value: Option<&str>,
        default: &str,
        parse: impl FnOnce(&str) -> Result<T, Problem>,
    ) -> Result<T, ConfigError> {
        let value = value.unwrap_or(default);
        parse(value).map_err(|detail| ConfigError::Value {
            path: self.name(),
            table,
            key,
            value: value.chars().take(80).collect(),
            detail: Box::new(detail),
        })
    }

    fn token(&self, file: &Path) -> Result<Arc<Zeroizing<String>>, ConfigError> {
        read_token(&self.dir.join(file)).map_err(|detail| ConfigError::Token { path: self.name(), detail })
    }
}

/// The shortest console token accepted.
const MIN_TOKEN: usize = 16;

/// Reads a console token: one line of text, in a file only its owner can read.
pub fn read_token(file: &Path) -> Result<Arc<Zeroizing<String>>, Problem> {
    let (bytes, meta) = read_limited(file).map_err(|e| Problem::of(&e))?;
    check_secret_mode(file, &meta).map_err(|e| Problem::of(&e))?;
    let token = std::str::from_utf8(&bytes).map(str::trim).unwrap_or("");
    if token.chars().count() < MIN_TOKEN {
        return Err(Problem::new(
            format!("{}: the token must be one line of at least {MIN_TOKEN} characters", file.display()),
            format!("make one with `head -c 24 /dev/urandom | base64 > {0}; chmod 600 {0}`", file.display()),
        ));
    }
    Ok(Arc::new(Zeroizing::new(token.to_owned())))
}

/// A parsed `listen` value, with a message that shows the expected form.
struct Listen(SocketAddr);

impl Listen {
    fn parse(s: &str) -> Result<Self, Problem> {
        s.parse().map(Listen).map_err(|_| {
            // The example keeps the port given, when it is one.
            let port = s.rsplit(':').next().filter(|p| p.parse::<u16>().is_ok_and(|p| p != 0)).unwrap_or("10007");
            Problem::new("not an address", format!("write it as IP:PORT, e.g. 127.0.0.1:{port}"))
        })
    }
}

impl Config {
    /// Built-in defaults: no certificates, echo on 127.0.0.1:10007, console on 127.0.0.1:11123.
    pub fn defaults() -> Self {
        Self::from_raw(None, RawConfig::default(), 0o600, Path::new(".")).expect("defaults are valid")
    }

    /// Loads and checks a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let name = path.display().to_string();
        let (bytes, meta) = read_limited(path).map_err(|e| ConfigError::Read { path: name.clone(), detail: Problem::of(&e) })?;
        let text =
            std::str::from_utf8(&bytes).map_err(|_| ConfigError::Read { path: name.clone(), detail: Problem::bare("not UTF-8 text") })?;
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let line = e.span().map_or(0, |s| bytes[..s.start.min(bytes.len())].iter().filter(|&&b| b == b'\n').count() + 1);
            let message = e.message().trim().to_owned();
            let fix = if message.starts_with("unknown field") { KEYS_FIX } else { "correct the TOML at that line" };
            let message = match table_at(text, line) {
                Some(table) => format!("{table}: {message}"),
                None => message,
            };
            ConfigError::Syntax { path: name.clone(), line, message, fix }
        })?;
        use std::os::unix::fs::PermissionsExt;
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        Self::from_raw(Some(path), raw, meta.permissions().mode(), dir)
    }

    fn from_raw(path: Option<&Path>, raw: RawConfig, mode: u32, dir: &Path) -> Result<Self, ConfigError> {
        let shown = path.unwrap_or(Path::new("no config file found"));
        let l = Loader { path: shown, dir: dir.to_owned(), mode };
        let t = &raw.tls;
        let server = l.identity(
            Item { key: "srv_cert", inline: t.srv_cert.as_ref(), file: t.srv_cert_file.as_deref() },
            Item { key: "srv_key", inline: t.srv_key.as_ref(), file: t.srv_key_file.as_deref() },
        )?;
        let client = l.identity(
            Item { key: "cli_cert", inline: t.cli_cert.as_ref(), file: t.cli_cert_file.as_deref() },
            Item { key: "cli_key", inline: t.cli_key.as_ref(), file: t.cli_key_file.as_deref() },
        )?;
        let ca = l
            .certs(Item { key: "ca_cert", inline: t.ca_cert.as_ref(), file: t.ca_cert_file.as_deref() })?
            .map(|(certs, origin)| Anchors { origin: format!("ca_cert: {origin}"), certs });
        let material = TlsMaterial { origin: shown.display().to_string(), server, ca, client, legacy_v1_leaf: t.legacy_v1_leaf };
        let echo = EchoSection {
            listen: l.parsed("echo", "listen", raw.echo.listen.as_deref(), "127.0.0.1:10007", Listen::parse)?.0,
            client_auth: l.parsed("echo", "client_auth", raw.echo.client_auth.as_deref(), "optional", ClientAuthMode::parse)?,
            versions: l.parsed("echo", "tls", raw.echo.tls.as_deref(), "any", TlsVersions::parse)?,
        };
        let console = ConsoleSection {
            listen: l.parsed("console", "listen", raw.console.listen.as_deref(), "127.0.0.1:11123", Listen::parse)?.0,
            allow_remote: raw.console.allow_remote,
            token: raw.console.token_file.as_deref().map(|f| l.token(f)).transpose()?,
        };
        let o = &raw.offload;
        let trust_files: Option<Vec<PathBuf>> =
            o.trust.as_ref().map(|t| t.iter().map(|s| if s == "system" { PathBuf::from(s) } else { dir.join(s) }).collect());
        let trust = match trust_files {
            Some(files) => load_trust(&files).map_err(|detail| ConfigError::Value {
                path: l.name(),
                table: "offload",
                key: "trust",
                value: files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", "),
                detail: Box::new(detail),
            })?,
            None => material.ca.clone().unwrap_or(Anchors { origin: "none".into(), certs: Vec::new() }),
        };
        let offload_secs = |key: &str, v: Option<u64>| -> Result<Duration, ConfigError> {
            let v = v.unwrap_or(10);
            match limits::secs_refusal(v, false) {
                Some((what, fix)) => Err(field(&l, "[offload]", &format!("{key} = {v}"), Problem::new(what, fix))),
                None => Ok(Duration::from_secs(v)),
            }
        };
        let offload = OffloadSettings {
            socket: dir.join(o.socket.as_deref().unwrap_or(Path::new("offload.sock"))),
            trust,
            max_clients: o.max_clients.unwrap_or(DEFAULT_MAX_CLIENTS),
            allow: Allow { uids: o.allow_uid.clone(), gids: o.allow_gid.clone() },
            buffer_size: o.buffer_size.unwrap_or(DEFAULT_BUFFER_SIZE),
            connect_timeout: offload_secs("connect_timeout_secs", o.connect_timeout_secs)?,
            handshake_timeout: offload_secs("handshake_timeout_secs", o.handshake_timeout_secs)?,
            name_check: o.hostname_check.unwrap_or(true),
            answer_timeout: offload_secs("client_timeout_secs", o.client_timeout_secs)?,
        };
        let defaults = KeylessLimits::default();
        let keyless = KeylessSection {
            listen: l.parsed("keyless", "listen", raw.keyless.listen.as_deref(), DEFAULT_KEYLESS_LISTEN, Listen::parse)?.0,
            limits: KeylessLimits {
                cache: match raw.keyless.cache {
                    Some(0) => return Err(field(&l, "[keyless]", "cache = 0", Problem::new("keeps no chain", "give at least 1"))),
                    Some(n) => n,
                    None => defaults.cache,
                },
                miss_ttl: match raw.keyless.miss_ttl_secs.map(|v| (v, limits::secs_refusal(v, true))) {
                    Some((v, Some((what, fix)))) => {
                        return Err(field(&l, "[keyless]", &format!("miss_ttl_secs = {v}"), Problem::new(what, fix)))
                    }
                    Some((v, None)) => Duration::from_secs(v),
                    None => defaults.miss_ttl,
                },
                ..defaults
            },
        };
        let keyd_socket = raw.keyd.socket.as_deref().map(|s| dir.join(s));
        let keyd_authorize = match raw.keyd.authorize.as_deref().map(|f| dir.join(f)) {
            Some(path) => {
                let grants = sealtls_keyd::Grants::load(&path).map_err(|detail| ConfigError::Value {
                    path: l.name(),
                    table: "keyd",
                    key: "authorize",
                    value: path.display().to_string(),
                    detail: Box::new(detail),
                })?;
                Some(KeydAuthorize { path, grants: grants.grants.len() })
            }
            None => None,
        };
        let keyd = keyd_store(&raw.keyd, &l)?;
        let name = l.name();
        let ctx = Ctx { path: &name, dir, material: &material };
        let serve = serve_tables(&raw.serve, &ctx)?;
        let tunnel = tunnel_tables(&raw.tunnel, &ctx)?;
        let status = raw.status.as_ref().map(|s| tables::status(s, &ctx)).transpose()?;
        let mut used: Vec<Used> = vec![
            ("[echo]".into(), "listen", Address::Tcp(echo.listen)),
            ("[console]".into(), "listen", Address::Tcp(console.listen)),
            ("[keyless]".into(), "listen", Address::Tcp(keyless.listen)),
            ("[offload]".into(), "socket", Address::Unix(offload.socket.clone())),
        ];
        used.extend(keyd_socket.iter().map(|s| ("[keyd]".into(), "socket", Address::Unix(s.clone()))));
        used.extend(serve.iter().map(|t| (t.label.clone(), "listen", Address::from(&t.args.listen))));
        used.extend(tunnel.iter().map(|t| (t.label.clone(), "listen", Address::from(&t.args.listen))));
        used.extend(status.iter().map(|s| ("[status]".into(), "listen", Address::from(&s.listen))));
        distinct_addresses(&name, &used)?;
        Ok(Self { material: Arc::new(material), echo, console, offload, keyless, keyd_socket, keyd_authorize, keyd, serve, tunnel, status })
    }
}

fn field(l: &Loader<'_>, table: &str, key: &str, detail: Problem) -> ConfigError {
    ConfigError::Field { path: l.name(), table: table.into(), key: key.into(), detail: Box::new(detail) }
}

/// `[keyd]`'s store, seal and limits, on top of the defaults `sealtls keyd --help` states.
fn keyd_store(raw: &RawKeyd, l: &Loader<'_>) -> Result<KeydArgs, ConfigError> {
    let t = "[keyd]";
    let mut k: KeydArgs = flag_defaults(&[]);
    if let Some(b) = &raw.backend {
        k.backend = match b.as_str() {
            "sealed" | "sealed-file" => BackendKind::SealedFile,
            "pkcs11" => BackendKind::Pkcs11,
            _ => {
                return Err(field(
                    l,
                    t,
                    &format!("backend = {b:?}"),
                    Problem::new("is not a backend", "write backend = \"sealed\" or \"pkcs11\""),
                ))
            }
        };
    }
    if let Some(s) = &raw.seal {
        k.seal = match s.as_str() {
            "file" => SealKind::File,
            "tpm" => SealKind::Tpm,
            _ => return Err(field(l, t, &format!("seal = {s:?}"), Problem::new("is not a seal", "write seal = \"file\" or \"tpm\""))),
        };
    }
    if k.backend == BackendKind::Pkcs11 && raw.seal.is_some() {
        return Err(field(l, t, "seal", Problem::new("applies to backend = \"sealed\" only", "remove seal, or the pkcs11 backend")));
    }
    if k.seal != SealKind::Tpm && (raw.tpm.is_some() || raw.tpm_pcrs.is_some()) {
        return Err(field(l, t, "tpm", Problem::new("is given without seal = \"tpm\"", "add seal = \"tpm\", or remove tpm and tpm_pcrs")));
    }
    if let Some(tcti) = &raw.tpm {
        k.tpm = tcti.clone();
    }
    if let Some(pcrs) = &raw.tpm_pcrs {
        if let Some(bad) = pcrs.iter().find(|p| **p >= 24) {
            return Err(field(
                l,
                t,
                &format!("tpm_pcrs = [{bad}]"),
                Problem::new("is not a PCR", "give PCR numbers from 0 to 23, e.g. tpm_pcrs = [0, 7]"),
            ));
        }
        k.tpm_pcrs = pcrs.clone();
    }
    if k.backend == BackendKind::Pkcs11 {
        if raw.token.is_none() || raw.pin_file.is_none() {
            return Err(field(
                l,
                t,
                "token",
                Problem::new(
                    "and pin_file are needed with backend = \"pkcs11\"",
                    "add token = \"LABEL\" and pin_file = \"FILE\" (mode 0600)",
                ),
            ));
        }
    } else if raw.module.is_some() || raw.token.is_some() || raw.pin_file.is_some() {
        return Err(field(
            l,
            t,
            "token",
            Problem::new("module, token and pin_file are given without backend = \"pkcs11\"", "add backend = \"pkcs11\", or remove them"),
        ));
    }
    if let Some(m) = &raw.module {
        k.module = l.dir.join(m);
    }
    k.token = raw.token.clone();
    k.pin_file = raw.pin_file.as_deref().map(|p| l.dir.join(p));
    for (key, value, slot) in
        [("max_connections", raw.max_connections, &mut k.max_connections), ("max_in_flight", raw.max_in_flight, &mut k.max_in_flight)]
    {
        match value {
            Some(0) => return Err(field(l, t, &format!("{key} = 0"), Problem::new("lets nothing through", "give at least 1"))),
            Some(n) => *slot = n,
            None => {}
        }
    }
    for (key, value, slot) in [
        ("frame_timeout_secs", raw.frame_timeout_secs, &mut k.frame_timeout),
        ("first_byte_timeout_secs", raw.first_byte_timeout_secs, &mut k.first_byte_timeout),
    ] {
        match value.map(|v| (v, limits::secs_refusal(v, false))) {
            Some((v, Some((what, fix)))) => return Err(field(l, t, &format!("{key} = {v}"), Problem::new(what, fix))),
            Some((v, None)) => *slot = v,
            None => {}
        }
    }
    Ok(k)
}

/// The table a line of a TOML file is in: `[keyd]`, or `[[serve]] #2` for the second `[[serve]]`.
fn table_at(text: &str, line: usize) -> Option<String> {
    let mut counts = std::collections::HashMap::new();
    let mut table = None;
    for l in text.lines().take(line) {
        let l = l.trim();
        if let Some(name) = l.strip_prefix("[[").and_then(|r| r.split("]]").next()) {
            let n = counts.entry(name.trim().to_owned()).or_insert(0);
            *n += 1;
            table = Some(format!("[[{}]] #{n}", name.trim()));
        } else if let Some(name) = l.strip_prefix('[').and_then(|r| r.split(']').next()) {
            table = Some(format!("[{}]", name.trim()));
        }
    }
    table
}

/// The configuration `sealtls up` writes next to its development PKI.
pub const DEV_CONFIG: &str = r#"# sealtls configuration. Paths are relative to this file.
# Certificates and keys may also be written inline as PEM, as in BitVisor's
# defconfig:  srv_cert = """-----BEGIN CERTIFICATE-----
#             ...
#             -----END CERTIFICATE-----"""
# (a file holding srv_key inline must be mode 0600).

[tls]
# The echo server's own certificate: keyd holds localhost.key (for the
# keyless server), and no TLS process holds a key keyd holds.
srv_cert_file = "echo-localhost.pem"
srv_key_file = "echo-localhost.key"
ca_cert_file = "ca.pem"
# Accept server certificates the way BitVisor does in `client connect`
# (signature chain and validity only): needed for the guide's openssl certificates.
legacy_v1_leaf = false

[echo]
listen = "127.0.0.1:10007"
client_auth = "optional"   # none, optional or required
tls = "any"                # 1.2, 1.3 or any

[console]
listen = "127.0.0.1:11123"
allow_remote = false       # true needs token_file
# token_file = "console.token"

[offload]
socket = "offload.sock"    # mode 0660; clients: sealtls offload-client, libsealtls_offload
# trust = ["ca.pem"]       # CA files or "system"; default: [tls] ca_cert
max_clients = 8
# allow_uid = [1000]       # default: whoever can open the socket
# allow_gid = [1000]
buffer_size = 16384
connect_timeout_secs = 10
handshake_timeout_secs = 10
client_timeout_secs = 10   # a client leaving answers unread this long is dropped
hostname_check = true

[keyless]                  # a TLS server whose keys and certificates are in keyd
listen = "127.0.0.1:1443"

[keyd]
# socket = "keyd/keyd.sock" # mode 0660; default: DATA_DIR/keyd/keyd.sock
# authorize = "grants.toml" # [[grant]] tables: who may sign for which domains; default: anyone who can open the socket
# seal = "tpm"              # file (default: the device secret) or tpm; backend = "pkcs11" for a token

# More TLS servers and proxies ([[serve]]), tunnels ([[tunnel]]) and every
# other field, with its default: examples/sealtls.toml in the sealtls sources.
"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn defaults_listen_on_loopback() {
        let c = Config::defaults();
        assert_eq!(c.echo.listen.to_string(), "127.0.0.1:10007");
        assert_eq!(c.console.listen.to_string(), "127.0.0.1:11123");
        assert_eq!(c.keyless.listen.to_string(), "127.0.0.1:1443");
        assert!(c.material.server.is_none());
    }

    #[test]
    fn keyless_listen_is_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "k.toml", "[keyless]\nlisten = \"127.0.0.1:2443\"\n", 0o600);
        assert_eq!(Config::load(&p).unwrap_or_else(|e| panic!("{e}")).keyless.listen.to_string(), "127.0.0.1:2443");
        let p = write(dir.path(), "s.toml", "[keyd]\nsocket = \"k/keyd.sock\"\n", 0o600);
        assert_eq!(Config::load(&p).unwrap_or_else(|e| panic!("{e}")).keyd_socket, Some(dir.path().join("k/keyd.sock")));
        write(dir.path(), "grants.toml", "[[grant]]\nuid = 0\ndomains = [\"other.example\"]\n", 0o600);
        let p = write(dir.path(), "g.toml", "[keyd]\nauthorize = \"grants.toml\"\n", 0o600);
        let a = Config::load(&p).unwrap_or_else(|e| panic!("{e}")).keyd_authorize.unwrap();
        assert_eq!((a.path, a.grants), (dir.path().join("grants.toml"), 1));
        let p = write(dir.path(), "g2.toml", "[keyd]\nauthorize = \"missing.toml\"\n", 0o600);
        let e = Config::load(&p).err().unwrap();
        assert!(e.to_string().contains("[keyd] authorize") && e.to_string().contains("missing.toml"), "{e}");
        assert!(e.fix().unwrap().contains("[[grant]]"), "{:?}", e.fix());
        write(dir.path(), "bad-grants.toml", "[[grant]]\nuid = 0\n", 0o600);
        let p = write(dir.path(), "g3.toml", "[keyd]\nauthorize = \"bad-grants.toml\"\n", 0o600);
        let e = Config::load(&p).err().unwrap();
        assert!(e.to_string().contains("[keyd] authorize") && e.to_string().contains("bad-grants.toml"), "{e}");
        let p = write(dir.path(), "bad.toml", "[keyless]\nlisten = \"somewhere\"\n", 0o600);
        let e = Config::load(&p).err().expect("refused").to_string();
        assert!(e.contains("bad.toml: [keyless] listen = \"somewhere\": not an address"), "{e}");
        let p = write(dir.path(), "unknown.toml", "[keyless]\nlisten = \"127.0.0.1:2443\"\nport = 1\n", 0o600);
        let e = Config::load(&p).err().expect("refused").with_fix();
        assert!(e.contains("line 3") && e.contains("[keyless] listen"), "{e}");
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "a.toml", "[tls]\nlegacy_v1_leaf = true\n\n[echo]\nlisten = \n", 0o600);
        let e = Config::load(&p).err().expect("refused").to_string();
        assert!(e.contains("a.toml: line 5:"), "{e}");
        let p = write(dir.path(), "b.toml", "[echo]\nlisten = \"localhost\"\n", 0o600);
        let e = Config::load(&p).err().expect("refused").to_string();
        assert!(e.contains("[echo] listen = \"localhost\": not an address"), "{e}");
        let p = write(dir.path(), "c.toml", "[echo]\ntls = \"1.1\"\n", 0o600);
        let e = Config::load(&p).err().expect("refused").to_string();
        assert!(e.contains("[echo] tls = \"1.1\": unknown TLS version"), "{e}");
    }

    #[test]
    fn dev_config_is_valid_toml_with_known_keys() {
        let raw: RawConfig = toml::from_str(DEV_CONFIG).unwrap();
        assert_eq!(raw.tls.srv_cert_file.as_deref(), Some(Path::new("echo-localhost.pem")));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_are_refused_not_panicked_on(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("x.toml");
            std::fs::write(&p, &bytes).unwrap();
            let _ = Config::load(&p);
        }
    }
}

/// `sealtls config`.
#[derive(clap::Subcommand)]
pub enum ConfigCommand {
    /// Validate a configuration and print what would run.
    Check {
        /// The file.
        file: PathBuf,
    },
}

/// A certificate chain in one line: the leaf's subject, key, names, expiry and days left.
pub fn describe_chain(chain: &[CertificateDer<'_>]) -> String {
    let Some(leaf) = chain.first().and_then(|c| sealtls_pki::inspect::CertFacts::from_der(c).ok()) else {
        return "unreadable".into();
    };
    let sans = if leaf.sans.is_empty() { "no subjectAltName".to_owned() } else { format!("names {}", leaf.sans.join(", ")) };
    format!("{}, {}, {}, chain of {}, expires {} ({} days)", leaf.subject, leaf.key, sans, chain.len(), leaf.not_after, leaf.days_left)
}

/// Runs `sealtls config`.
pub fn run(cmd: ConfigCommand) -> Result<(), Failure> {
    let ConfigCommand::Check { file } = cmd;
    let c = Config::load(&file).map_err(Failure::config)?;
    sealtls_console::check_listen(c.console.listen, c.console.allow_remote, c.console.token.is_some())?;
    let m = &c.material;
    let mut warnings = Vec::new();
    println!("{}: valid", file.display());
    match &m.server {
        Some(k) => {
            println!("  [tls] srv_cert        {}", describe_chain(&k.cert));
            println!("  [tls] srv_key         matches srv_cert");
            let problems = sealtls_pki::inspect::leaf_problems(&k.cert).map(|(_, p)| p).unwrap_or_default();
            warnings.extend(problems.into_iter().map(|w| format!("srv_cert: clients will refuse it: {w}")));
        }
        None => println!("  [tls] srv_cert        none: the echo server and `server start` cannot run"),
    }
    match &m.ca {
        Some(a) => println!("  [tls] ca_cert         {} certificate(s), first {}", a.certs.len(), describe_chain(&a.certs)),
        None => println!("  [tls] ca_cert         none: `client connect` cannot verify servers, servers ask no client certificate"),
    }
    match &m.client {
        Some(k) => println!("  [tls] cli_cert        {}", describe_chain(&k.cert)),
        None => println!("  [tls] cli_cert        none: `client connect` offers no client certificate"),
    }
    println!("  [tls] legacy_v1_leaf  {}", m.legacy_v1_leaf);
    if m.legacy_v1_leaf {
        warnings.push(
            "legacy_v1_leaf = true: `client connect` checks only the signature chain and validity of servers, not their names".into(),
        );
    }
    println!("would run (sealtls up):");
    let auth = format!("{:?}", c.echo.client_auth).to_lowercase();
    println!("  TLS echo server       {}  TLS {}, client certificates {auth}", c.echo.listen, c.echo.versions);
    let access = match (c.console.listen.ip().is_loopback(), &c.console.token) {
        (true, None) => "loopback, no token",
        (true, Some(_)) => "loopback, token required",
        (false, _) => "remote access, token required",
    };
    println!("  echoctl_tls console   {}  {access}", c.console.listen);
    println!("  TLS offload daemon    {}", c.offload.socket.display());
    match &c.keyd_socket {
        Some(socket) => println!("  keyd (key custody)    {}", socket.display()),
        None => println!("  keyd (key custody)    keyd/keyd.sock in up's data directory (--data-dir, default ./sealtls-data)"),
    }
    match &c.keyd_authorize {
        Some(a) if a.grants == 0 => {
            println!("  keyd grants           {}: no [[grant]] tables", a.path.display());
            warnings.push(format!("[keyd] authorize: {} holds no grants: every caller may sign for every domain", a.path.display()));
        }
        Some(a) => println!("  keyd grants           {}: {} grant(s); other callers may not sign", a.path.display(), a.grants),
        None => println!("  keyd grants           none: any caller that can open the socket may sign for every domain"),
    }
    let store = match (c.keyd.backend, c.keyd.seal) {
        (BackendKind::Pkcs11, _) => {
            format!("PKCS#11 token {} ({})", c.keyd.token.as_deref().unwrap_or("?"), c.keyd.module.display())
        }
        (_, SealKind::File) => "sealed files, store key from the device secret".into(),
        (_, SealKind::Tpm) if c.keyd.tpm_pcrs.is_empty() => format!("sealed files, store key sealed by the TPM {}", c.keyd.tpm),
        (_, SealKind::Tpm) => format!("sealed files, store key sealed by the TPM {} to PCRs {:?}", c.keyd.tpm, c.keyd.tpm_pcrs),
    };
    println!("  keyd store            {store}");
    let k = &c.keyd;
    println!(
        "  keyd limits           {} connections, {} in flight each, frame {} s, first byte {} s",
        k.max_connections, k.max_in_flight, k.frame_timeout, k.first_byte_timeout
    );
    let l = &c.keyless.limits;
    println!(
        "  keyless TLS server    {}  keys and certificates in keyd; {} names cached, unknown names refused for {} s",
        c.keyless.listen,
        l.cache,
        l.miss_ttl.as_secs()
    );
    for table in &c.serve {
        let kind = if table.args.target.is_some() { "TLS proxy" } else { "TLS server" };
        println!("  {:<21} {}  {kind}", table.label, table.args.listen);
        for (what, line) in &table.summary {
            println!("    {what:<19} {line}");
        }
    }
    for table in &c.tunnel {
        println!("  {:<21} {}  TLS tunnel", table.label, table.args.listen);
        for (what, line) in &table.summary {
            println!("    {what:<19} {line}");
        }
    }
    match &c.status {
        Some(s) if s.unsafe_status => println!("  [status]              {}  (not loopback allowed: unsafe_status)", s.listen),
        Some(s) => println!("  [status]              {}", s.listen),
        None => {}
    }
    for w in &warnings {
        println!("warning: {w}");
    }
    Ok(())
}
