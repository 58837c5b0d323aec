//! What `up` and `console` reload on SIGHUP: the `[tls]` material of the
//! echo servers and the console (from the config file), and keyd, which
//! runs as a child process of `up` and reloads itself when SIGHUP is
//! forwarded to it.
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use sealtls_console::{EchoServers, TlsMaterial};
use sealtls_failure::{Failure, FailureClass};

use crate::config::Config;
use crate::keyd_child::KeydPid;
use crate::reload::{config_files, describe_anchors, describe_cert, reload_line, Reload};

/// The `[tls]` material of the echo servers and console sessions, reloaded from the config file.
pub struct MaterialReload {
    /// The service, for log lines.
    pub name: String,
    /// The config file the material comes from.
    pub config: PathBuf,
    /// The echo servers (and the console's client connections) using it.
    pub servers: Arc<EchoServers>,
}

/// What reload lines show of the material: server certificate, CAs, client
/// certificate, and whether the client checks server leaves the legacy way.
fn describe(m: &TlsMaterial) -> [Option<String>; 4] {
    let leaf = |k: &Option<Arc<rustls::sign::CertifiedKey>>| k.as_ref().and_then(|k| k.cert.first()).map(describe_cert);
    [leaf(&m.server), m.ca.as_ref().map(|a| describe_anchors(&a.certs)), leaf(&m.client), Some(m.legacy_v1_leaf.to_string())]
}

impl Reload for MaterialReload {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn files(&self) -> Vec<PathBuf> {
        config_files(&self.config)
    }

    fn reload(&self) -> Result<Option<String>, Failure> {
        let material = Config::load(&self.config).map_err(Failure::config)?.material;
        let [old_cert, old_ca, old_client, old_legacy] = describe(&self.servers.material());
        let [new_cert, new_ca, new_client, new_legacy] = describe(&material);
        let line = reload_line(
            &self.name,
            &[
                ("certificate", "fingerprint", old_cert, new_cert),
                ("CAs", "fingerprints", old_ca, new_ca),
                ("client certificate", "fingerprint", old_client, new_client),
                ("legacy_v1_leaf", "value", old_legacy, new_legacy),
            ],
        );
        if line.is_some() {
            self.servers.replace_material(material)?;
        }
        Ok(line)
    }
}

/// keyd, a child process of `up`: SIGHUP is passed on, and keyd logs its own reload line.
pub struct KeydForward {
    /// The running child's pid.
    pub pid: KeydPid,
}

impl Reload for KeydForward {
    fn name(&self) -> String {
        "keyd (child process)".to_owned()
    }

    fn files(&self) -> Vec<PathBuf> {
        // keyd watches nothing for `up`; the signal reaches it on every reload.
        Vec::new()
    }

    fn reload(&self) -> Result<Option<String>, Failure> {
        let pid = self.pid.load(Ordering::Relaxed);
        let target = rustix::process::Pid::from_raw(pid as i32)
            .ok_or_else(|| Failure::new(FailureClass::Config, "keyd is not running", "see the keyd: lines; up restarts it"))?;
        rustix::process::kill_process(target, rustix::process::Signal::HUP).map_err(|e| {
            Failure::new(
                FailureClass::Config,
                format!("cannot pass SIGHUP to keyd (pid {pid}): {e}"),
                "see the keyd: lines; up restarts it",
            )
        })?;
        Ok(Some(format!("reload: SIGHUP passed to keyd (pid {pid}), which logs its own reload line")))
    }
}
