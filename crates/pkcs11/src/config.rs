//! Where keyd is and how to reach it: from `SEALTLS_PKCS11_CONF` (a TOML
//! file), else from `SEALTLS_PKCS11_KEYD` and its companions, else from
//! /etc/sealtls/pkcs11.toml (for hosts that clear the environment).
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use zeroize::Zeroizing;

/// The file read when neither environment variable is set.
pub(crate) const DEFAULT_CONF: &str = "/etc/sealtls/pkcs11.toml";
/// The token label when none is configured.
pub(crate) const DEFAULT_LABEL: &str = "sealtls";
/// How long one call to keyd may take, connecting included, when not configured.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// The module's settings.
#[derive(Clone)]
pub(crate) struct Config {
    /// `unix:PATH` or `tls://HOST:PORT`.
    pub(crate) keyd: String,
    /// With tls://: the CA that issued keyd's certificate, and this client's certificate and key.
    pub(crate) tls: Option<TlsFiles>,
    /// The token's label (at most 32 bytes).
    pub(crate) token_label: String,
    /// When set, C_Login must give it and private keys are hidden until then.
    pub(crate) pin: Option<Zeroizing<String>>,
    /// Per call to keyd.
    pub(crate) timeout: Duration,
    /// Whether Ed25519 keys appear as objects. Off by default: libp11 0.4.12
    /// (OpenSSL's pkcs11 engine, so nginx) stops enumerating a token's keys
    /// at the first key type it does not know, and then finds none.
    pub(crate) ed25519: bool,
    /// Where the settings came from, for messages.
    pub(crate) origin: String,
}

/// The files for mutual TLS to keyd.
#[derive(Clone, Debug)]
pub(crate) struct TlsFiles {
    pub(crate) ca: PathBuf,
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
}

/// The TOML form, also what the environment variables fill in.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Raw {
    keyd: Option<String>,
    keyd_ca: Option<PathBuf>,
    keyd_cert: Option<PathBuf>,
    keyd_key: Option<PathBuf>,
    token_label: Option<String>,
    pin: Option<Zeroizing<String>>,
    timeout_ms: Option<u64>,
    ed25519: Option<bool>,
}

/// Why the module cannot be configured; the text says what to set.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct ConfigError(String);

impl Config {
    /// Reads the settings through `env` (the process environment in the module).
    pub(crate) fn load(env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        if let Some(path) = env("SEALTLS_PKCS11_CONF") {
            return Self::from_file(Path::new(&path));
        }
        if let Some(keyd) = env("SEALTLS_PKCS11_KEYD") {
            let raw = Raw {
                keyd: Some(keyd),
                keyd_ca: env("SEALTLS_PKCS11_KEYD_CA").map(PathBuf::from),
                keyd_cert: env("SEALTLS_PKCS11_KEYD_CERT").map(PathBuf::from),
                keyd_key: env("SEALTLS_PKCS11_KEYD_KEY").map(PathBuf::from),
                token_label: env("SEALTLS_PKCS11_TOKEN_LABEL"),
                pin: env("SEALTLS_PKCS11_PIN").map(Zeroizing::new),
                timeout_ms: match env("SEALTLS_PKCS11_TIMEOUT_MS") {
                    Some(ms) => Some(
                        ms.parse().map_err(|_| ConfigError(format!("SEALTLS_PKCS11_TIMEOUT_MS={ms:?} is not a number of milliseconds")))?,
                    ),
                    None => None,
                },
                ed25519: match env("SEALTLS_PKCS11_ED25519").as_deref() {
                    None | Some("0") => None,
                    Some("1") => Some(true),
                    Some(other) => return Err(ConfigError(format!("SEALTLS_PKCS11_ED25519={other:?} is neither 0 nor 1"))),
                },
            };
            return Self::from_raw(raw, "the environment (SEALTLS_PKCS11_*)".into());
        }
        let default = Path::new(DEFAULT_CONF);
        if default.exists() {
            return Self::from_file(default);
        }
        Err(ConfigError(format!(
            "no keyd is configured: set SEALTLS_PKCS11_KEYD=unix:PATH (or tls://HOST:PORT with SEALTLS_PKCS11_KEYD_CA, \
             SEALTLS_PKCS11_KEYD_CERT and SEALTLS_PKCS11_KEYD_KEY), or SEALTLS_PKCS11_CONF=FILE, or write {DEFAULT_CONF}"
        )))
    }

    fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError(format!("cannot read {origin}: {e}")))?;
        let raw: Raw = toml::from_str(&text).map_err(|e| ConfigError(format!("{origin}: {}", e.message())))?;
        Self::from_raw(raw, origin)
    }

    fn from_raw(raw: Raw, origin: String) -> Result<Self, ConfigError> {
        let keyd = raw.keyd.ok_or_else(|| ConfigError(format!("{origin}: `keyd` is missing: give unix:PATH or tls://HOST:PORT")))?;
        let tls = if keyd.starts_with("tls://") {
            match (raw.keyd_ca, raw.keyd_cert, raw.keyd_key) {
                (Some(ca), Some(cert), Some(key)) => Some(TlsFiles { ca, cert, key }),
                _ => {
                    return Err(ConfigError(format!(
                        "{origin}: keyd {keyd} over TLS needs the CA, a client certificate and its key \
                         (keyd_ca, keyd_cert, keyd_key; in the environment SEALTLS_PKCS11_KEYD_CA, _CERT and _KEY)"
                    )))
                }
            }
        } else if keyd.starts_with("unix:") {
            None
        } else {
            return Err(ConfigError(format!("{origin}: keyd {keyd:?} is neither unix:PATH nor tls://HOST:PORT")));
        };
        let token_label = raw.token_label.unwrap_or_else(|| DEFAULT_LABEL.into());
        if token_label.is_empty() || token_label.len() > 32 {
            return Err(ConfigError(format!("{origin}: the token label {token_label:?} must have 1 to 32 bytes")));
        }
        let timeout = raw.timeout_ms.map_or(DEFAULT_TIMEOUT, Duration::from_millis);
        if timeout.is_zero() {
            return Err(ConfigError(format!("{origin}: timeout_ms must be above 0")));
        }
        Ok(Self { keyd, tls, token_label, pin: raw.pin, timeout, ed25519: raw.ed25519.unwrap_or(false), origin })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn from(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let vars: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::load(|k| vars.get(k).cloned())
    }

    #[test]
    fn the_environment_names_keyd_and_its_tls_files() {
        let c = from(&[("SEALTLS_PKCS11_KEYD", "unix:/run/keyd.sock")]).unwrap();
        assert_eq!((c.keyd.as_str(), c.token_label.as_str(), c.timeout), ("unix:/run/keyd.sock", "sealtls", DEFAULT_TIMEOUT));
        assert!(c.tls.is_none() && c.pin.is_none() && !c.ed25519);
        let e = from(&[("SEALTLS_PKCS11_KEYD", "tls://127.0.0.1:1")]).err().unwrap().to_string();
        assert!(e.contains("SEALTLS_PKCS11_KEYD_CA"), "{e}");
        let e = from(&[("SEALTLS_PKCS11_KEYD", "127.0.0.1:1")]).err().unwrap().to_string();
        assert!(e.contains("neither unix:PATH nor tls://"), "{e}");
        let c = from(&[
            ("SEALTLS_PKCS11_KEYD", "tls://127.0.0.1:1"),
            ("SEALTLS_PKCS11_KEYD_CA", "ca.pem"),
            ("SEALTLS_PKCS11_KEYD_CERT", "c.pem"),
            ("SEALTLS_PKCS11_KEYD_KEY", "k.pem"),
            ("SEALTLS_PKCS11_TOKEN_LABEL", "edge"),
            ("SEALTLS_PKCS11_TIMEOUT_MS", "250"),
            ("SEALTLS_PKCS11_ED25519", "1"),
        ])
        .unwrap();
        assert!(c.ed25519);
        assert_eq!(c.tls.unwrap().key, PathBuf::from("k.pem"));
        assert_eq!((c.token_label.as_str(), c.timeout), ("edge", Duration::from_millis(250)));
    }

    #[test]
    fn a_file_names_keyd_and_unknown_keys_are_refused() {
        let dir = std::env::temp_dir().join(format!("sealtls-pkcs11-conf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pkcs11.toml");
        std::fs::write(&file, "keyd = \"unix:/k.sock\"\npin = \"1234\"\n").unwrap();
        let c = from(&[("SEALTLS_PKCS11_CONF", file.to_str().unwrap()), ("SEALTLS_PKCS11_KEYD", "unix:/ignored")]).unwrap();
        assert_eq!((c.keyd.as_str(), c.pin.as_deref().map(String::as_str)), ("unix:/k.sock", Some("1234")));
        std::fs::write(&file, "keyd = \"unix:/k.sock\"\nkeyd_cafile = \"x\"\n").unwrap();
        let e = from(&[("SEALTLS_PKCS11_CONF", file.to_str().unwrap())]).err().unwrap().to_string();
        assert!(e.contains("keyd_cafile") && e.contains("pkcs11.toml"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_example_file_is_valid() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/pkcs11.toml");
        let c = Config::from_file(&example).unwrap();
        assert_eq!((c.keyd.as_str(), c.token_label.as_str(), c.ed25519), ("unix:/var/lib/sealtls/keyd/keyd.sock", DEFAULT_LABEL, false));
    }
}
