//! Hot reload: on SIGHUP, or when a file in use changes (`--reload-interval`),
//! each part of a service loads its files again. A part that loads swaps
//! the new material in for new connections; one that does not keeps what
//! it had. Each part logs one line: what changed, that nothing did, or why
//! the new files were refused.
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use clap::Args;
use rustls_pki_types::CertificateDer;
use sealtls_failure::Failure;
use tokio::signal::unix::Signal;
use tracing::{info, warn};

use crate::notify;
use crate::signals::hangup_signal;

/// Something a service reads from files and can read again.
pub trait Reload: Send + Sync {
    /// The service, for log lines (e.g. `serve 127.0.0.1:4433`).
    fn name(&self) -> String;
    /// The files whose change triggers a reload with `--reload-interval`.
    fn files(&self) -> Vec<PathBuf>;
    /// Loads the files again and swaps them in: `Some(what changed)`,
    /// `None` when nothing did, or why the new files were refused (the
    /// old material then stays in use).
    fn reload(&self) -> Result<Option<String>, Failure>;
}

/// `--reload-interval`.
#[derive(Args, Clone, Copy, Debug, Default)]
pub struct ReloadFlags {
    /// Seconds between checks of the files in use (modification time, status, size); a change reloads them as SIGHUP does (0: only on SIGHUP).
    #[arg(long, value_name = "SECS", default_value_t = 0, value_parser = crate::limits::secs)]
    pub reload_interval: u64,
}

/// The SIGHUP handler and the file watch, installed before the service
/// announces its listeners so that no signal is lost (without a handler
/// SIGHUP would end the process).
pub struct Reloader {
    hangup: Signal,
    interval: Option<Duration>,
}

impl Reloader {
    /// Installs the SIGHUP handler now.
    pub fn install(flags: ReloadFlags) -> Self {
        Self { hangup: hangup_signal(), interval: (flags.reload_interval > 0).then(|| Duration::from_secs(flags.reload_interval)) }
    }

    /// Reloads `parts` on every SIGHUP or file change, forever; the caller
    /// drops this future when the service stops.
    pub async fn run(mut self, parts: Vec<Arc<dyn Reload>>) {
        let files = || parts.iter().flat_map(|p| p.files()).collect::<Vec<_>>();
        let mut seen = stamps(&files());
        let mut tick = self.interval.map(tokio::time::interval);
        loop {
            tokio::select! {
                _ = self.hangup.recv() => {}
                _ = async { tick.as_mut().expect("guarded").tick().await }, if tick.is_some() => {
                    if stamps(&files()) == seen {
                        continue;
                    }
                }
            }
            notify::reloading();
            if parts.is_empty() {
                info!("reload: nothing changed (this service reads nothing from files that could change)");
            }
            for part in &parts {
                match part.reload() {
                    Ok(Some(change)) => info!("{change}"),
                    Ok(None) => info!("reload: nothing changed for {}", part.name()),
                    Err(f) => warn!("reload refused for {}: {}; fix: {}; still serving what was loaded before", part.name(), f.what, f.fix),
                }
            }
            seen = stamps(&files());
            notify::ready();
        }
    }
}

/// What the watch compares: modification time, status-change time (seconds, nanoseconds), size.
type Stamp = (SystemTime, (i64, i64), u64);

/// Modification time, status-change time and size of each file (`None` for
/// one that cannot be read): the status change catches a `chmod 600` that
/// makes a refused key file acceptable.
fn stamps(files: &[PathBuf]) -> Vec<Option<Stamp>> {
    use std::os::unix::fs::MetadataExt;
    files.iter().map(|f| std::fs::metadata(f).ok().and_then(|m| Some((m.modified().ok()?, (m.ctime(), m.ctime_nsec()), m.len())))).collect()
}

/// A config file and the files it names (`[tls] *_file`, `[offload]
/// trust`, `[console] token_file`, `[keyd] authorize`), for the file watch. Unreadable or
/// unparsable: the config file alone (the reload reports why).
pub fn config_files(config: &Path) -> Vec<PathBuf> {
    let mut files = vec![config.to_owned()];
    let dir = config.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let Some(table) = std::fs::read_to_string(config).ok().and_then(|t| t.parse::<toml::Table>().ok()) else { return files };
    for (_, section) in table.iter().filter_map(|(name, v)| Some((name, v.as_table()?))) {
        for (key, value) in section {
            let named: Vec<&str> = match value {
                toml::Value::String(s) if key.ends_with("_file") || key == "authorize" => vec![s],
                toml::Value::Array(a) if key == "trust" => a.iter().filter_map(|v| v.as_str()).filter(|s| *s != "system").collect(),
                _ => continue,
            };
            files.extend(named.into_iter().map(|f| dir.join(f)));
        }
    }
    files
}

/// A certificate as reload lines show it: its SHA-256 fingerprint (as
/// `openssl x509 -fingerprint -sha256` prints it) and its expiry.
pub fn describe_cert(cert: &CertificateDer<'_>) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, cert.as_ref());
    let hex: Vec<String> = digest.as_ref().iter().map(|b| format!("{b:02X}")).collect();
    let expires = sealtls_pki::inspect::CertFacts::from_der(cert).map_or_else(|_| "unknown".to_owned(), |f| f.not_after);
    format!("{} (expires {expires})", hex.join(":"))
}

/// Trust anchors as reload lines show them: each one's fingerprint, or
/// for a large set (the system's) its size and one digest over them all.
pub fn describe_anchors(certs: &[CertificateDer<'_>]) -> String {
    if certs.len() > 4 {
        let mut all = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        certs.iter().for_each(|c| all.update(c.as_ref()));
        let hex: String = all.finish().as_ref().iter().take(8).map(|b| format!("{b:02x}")).collect();
        return format!("{} certificates (set digest {hex})", certs.len());
    }
    let each: Vec<String> = certs.iter().map(describe_cert).collect();
    format!("[{}]", each.join(", "))
}

/// What changed between two descriptions of the same material, or nothing.
pub fn change(what: &str, old: &Option<String>, new: &Option<String>) -> Option<String> {
    (old != new).then(|| format!("{what} {} -> {}", old.as_deref().unwrap_or("none"), new.as_deref().unwrap_or("none")))
}

/// Old and new descriptions of one kind of material: its name (e.g.
/// `certificate`), how a description is labelled (e.g. `fingerprint`), old, new.
pub type Compared<'a> = (&'a str, &'a str, Option<String>, Option<String>);

/// The reload line for `name`: `reloaded certificate for NAME: fingerprint
/// OLD -> NEW`, each changed kind named; `None` when nothing changed.
pub fn reload_line(name: &str, compared: &[Compared<'_>]) -> Option<String> {
    let changed: Vec<(&str, String)> =
        compared.iter().filter_map(|(what, label, old, new)| Some((*what, change(label, old, new)?))).collect();
    if changed.is_empty() {
        return None;
    }
    let what: Vec<&str> = changed.iter().map(|(w, _)| *w).collect();
    let details: Vec<String> = match changed.len() {
        1 => vec![changed[0].1.clone()],
        _ => changed.iter().map(|(w, c)| format!("{w}: {c}")).collect(),
    };
    Some(format!("reloaded {} for {name}: {}", what.join(" and "), details.join("; ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_files_are_the_config_and_the_files_it_names_relative_to_it() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("sealtls.toml");
        std::fs::write(
            &config,
            "[tls]\nsrv_cert_file = \"a.pem\"\nsrv_key = \"inline\"\n[offload]\ntrust = [\"system\", \"ca.pem\"]\n[keyd]\nauthorize = \"g.toml\"\n",
        )
        .unwrap();
        let files: std::collections::BTreeSet<PathBuf> = config_files(&config).into_iter().collect();
        let d = dir.path();
        assert_eq!(files, [config.clone(), d.join("a.pem"), d.join("ca.pem"), d.join("g.toml")].into());
        std::fs::write(&config, "not toml [").unwrap();
        assert_eq!(config_files(&config), vec![config.clone()]);
    }

    #[test]
    fn reload_lines_name_what_changed() {
        let (a, b) = (Some("A".to_owned()), Some("B".to_owned()));
        assert_eq!(reload_line("serve x", &[("certificate", "fingerprint", a.clone(), a.clone())]), None);
        assert_eq!(
            reload_line("serve x", &[("certificate", "fingerprint", a.clone(), b.clone()), ("CAs", "fingerprints", None, None)]).as_deref(),
            Some("reloaded certificate for serve x: fingerprint A -> B")
        );
        assert_eq!(
            reload_line("serve x", &[("certificate", "fingerprint", a.clone(), b.clone()), ("CAs", "fingerprints", None, b.clone())])
                .as_deref(),
            Some("reloaded certificate and CAs for serve x: certificate: fingerprint A -> B; CAs: fingerprints none -> B")
        );
    }
}
