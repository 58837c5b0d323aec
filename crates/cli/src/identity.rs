//! Certificates, keys and trust anchors loaded from files, for every command.
use std::path::Path;
use std::sync::Arc;

use rustls::sign::CertifiedKey;
use sealtls_endpoint::settings::{certified_key, Anchors};
use sealtls_failure::Failure;
use sealtls_pki::{load_certs, load_key};

/// Loads a certificate chain and its key, checked to belong together.
pub fn identity_from_files(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, Failure> {
    let chain = load_certs(cert).map_err(Failure::config)?;
    let key_der = load_key(key).map_err(Failure::config)?;
    certified_key(chain, &key_der, &cert.display().to_string(), &key.display().to_string()).map_err(Failure::config)
}

pub fn anchors(path: &Path) -> Result<Anchors, Failure> {
    Ok(Anchors { origin: path.display().to_string(), certs: load_certs(path).map_err(Failure::config)? })
}
