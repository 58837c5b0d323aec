//! The device secret: 32 random bytes outside the data directory from
//! which the store key is derived, so that a copied data directory is
//! useless on another machine.
use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use aws_lc_rs::aead::{LessSafeKey, UnboundKey, AES_256_GCM};
use aws_lc_rs::hkdf::{Salt, HKDF_SHA256};
use sealtls_pki::files::{check_secret_mode, write_atomic};
use zeroize::Zeroizing;

use crate::error::StoreError;

/// Size of a device secret.
pub const SECRET_LEN: usize = 32;

/// Where the device secret lives by default: `/etc/sealtls/device.key` for
/// root, else `$XDG_CONFIG_HOME/sealtls/device.key` (`~/.config/...`).
pub fn default_path() -> PathBuf {
    if rustix::process::geteuid().as_raw() == 0 {
        return PathBuf::from("/etc/sealtls/device.key");
    }
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from(".config"));
    config.join("sealtls/device.key")
}

/// Reads the device secret at `path`, creating it (0600, in a 0700
/// directory) on first use. Refuses one that group or others can read.
pub fn load_or_create(path: &Path) -> Result<Zeroizing<Vec<u8>>, StoreError> {
    if !path.exists() {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| StoreError::io(dir, "create the device secret's directory", e))?;
        }
        let mut secret = Zeroizing::new(vec![0u8; SECRET_LEN]);
        aws_lc_rs::rand::fill(&mut secret).map_err(|_| StoreError::Random)?;
        match write_atomic(path, &secret, 0o600, false) {
            Ok(()) => tracing::info!(file = %path.display(), "created a new device secret"),
            // Another process made it first: use theirs.
            Err(sealtls_pki::files::WriteError::Exists { .. }) => {}
            Err(e) => {
                return Err(StoreError::DeviceSecret {
                    path: path.to_owned(),
                    problem: e.to_string(),
                    fix: "check the directory's permissions, or give another file with --device-key".into(),
                })
            }
        }
    }
    let meta = fs::metadata(path).map_err(|e| StoreError::io(path, "read the device secret", e))?;
    check_secret_mode(path, &meta).map_err(|e| StoreError::DeviceSecret {
        path: path.to_owned(),
        problem: format!("readable or writable by group or others (mode {:04o})", e.mode),
        fix: format!("chmod 600 {}", path.display()),
    })?;
    let secret = Zeroizing::new(fs::read(path).map_err(|e| StoreError::io(path, "read the device secret", e))?);
    if secret.len() != SECRET_LEN {
        return Err(StoreError::DeviceSecret {
            path: path.to_owned(),
            problem: format!("holds {} bytes, a device secret has {SECRET_LEN}", secret.len()),
            fix: "restore the original file from backup; a new secret cannot open keys sealed under the old one".into(),
        });
    }
    Ok(secret)
}

/// Refuses a data directory that group or others can enter or read.
pub fn check_data_dir(dir: &Path) -> Result<(), StoreError> {
    let meta = fs::metadata(dir).map_err(|e| StoreError::io(dir, "read the data directory", e))?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(StoreError::ExposedDir { path: dir.to_owned(), mode });
    }
    Ok(())
}

/// Creates the data directory 0700 when missing.
pub fn ensure_data_dir(dir: &Path) -> Result<(), StoreError> {
    if !dir.exists() {
        fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|e| StoreError::io(dir, "create the data directory", e))?;
    }
    Ok(())
}

/// The AES-256-GCM store key: HKDF-SHA256 over the device secret.
pub fn store_key(secret: &[u8]) -> LessSafeKey {
    let prk = Salt::new(HKDF_SHA256, b"sealtls sealed-file store v1").extract(secret);
    let okm = prk.expand(&[b"store key"], &AES_256_GCM).expect("32 bytes is a valid HKDF-SHA256 output length");
    LessSafeKey::new(UnboundKey::from(okm))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sealtls_failure::Remedy;

    #[test]
    fn created_once_with_mode_0600_and_refused_when_exposed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/device.key");
        let first = load_or_create(&path).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(fs::metadata(path.parent().unwrap()).unwrap().permissions().mode() & 0o777, 0o700);
        assert_eq!(load_or_create(&path).unwrap(), first);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        let err = load_or_create(&path).unwrap_err().with_fix();
        assert!(err.contains("chmod 600") && err.contains("device.key"), "{err}");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(&path, b"short").unwrap();
        assert!(load_or_create(&path).unwrap_err().to_string().contains("holds 5 bytes"));
    }

    #[test]
    fn exposed_data_dir_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o750)).unwrap();
        let err = check_data_dir(dir.path()).unwrap_err().with_fix();
        assert!(err.contains("chmod 700"), "{err}");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).unwrap();
        check_data_dir(dir.path()).unwrap();
    }
}
