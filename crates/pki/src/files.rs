//! Crash-safe, permission-aware file writes and checks for secret files.
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sealtls_failure::Remedy;

/// Why a file could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The target exists and the caller did not ask to replace it.
    #[error("{path}: already exists")]
    Exists {
        /// The file that exists.
        path: PathBuf,
    },
    /// An I/O error while writing, syncing or renaming.
    #[error("{path}: {source}")]
    Io {
        /// The file being written.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

impl Remedy for WriteError {
    fn fix(&self) -> Option<String> {
        match self {
            Self::Exists { .. } => Some("pass --force to replace it".into()),
            Self::Io { .. } => None,
        }
    }
}

/// Writes `bytes` to `path` so that a crash at any point leaves either the old
/// file or the complete new one: a temporary file in the same directory
/// (named for this process and this write, so concurrent writes never share
/// one) is written with `mode`, fsynced, moved to the target, and the
/// directory is fsynced. Without `replace`, an existing target is an error,
/// decided atomically: of two writers racing for a new name, one gets it.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32, replace: bool) -> Result<(), WriteError> {
    let io_err = |source| WriteError::Io { path: path.to_owned(), source };
    if !replace && path.exists() {
        return Err(WriteError::Exists { path: path.to_owned() });
    }
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let file_name = path.file_name().ok_or_else(|| io_err(io::Error::other("no file name")))?;
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nth = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{}.tmp{}.{nth}", file_name.to_string_lossy(), std::process::id()));
    let result = (|| {
        let mut f = OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
        // The mode given to open() is masked by the umask; set it exactly.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        if replace {
            fs::rename(&tmp, path)?;
        } else {
            // A link fails if the name exists; rename would replace it.
            match fs::hard_link(&tmp, path) {
                Ok(()) => fs::remove_file(&tmp)?,
                // A file system without links (vfat, some network mounts): check, then rename.
                Err(e) if matches!(e.kind(), io::ErrorKind::Unsupported | io::ErrorKind::PermissionDenied) => {
                    if path.exists() {
                        return Err(io::Error::from(io::ErrorKind::AlreadyExists));
                    }
                    fs::rename(&tmp, path)?;
                }
                Err(e) => return Err(e),
            }
        }
        File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(|e| match e.kind() {
        io::ErrorKind::AlreadyExists => WriteError::Exists { path: path.to_owned() },
        _ => io_err(e),
    })
}

/// A secret file that group or others can reach.
#[derive(Debug, thiserror::Error)]
#[error("{path}: secret (private key or token) is accessible by group or others (mode {mode:04o})")]
pub struct ExposedSecret {
    /// The offending file.
    pub path: PathBuf,
    /// Its permission bits.
    pub mode: u32,
}

impl Remedy for ExposedSecret {
    fn fix(&self) -> Option<String> {
        Some(format!("fix it with `chmod 600 {}`", self.path.display()))
    }
}

/// Refuses a secret file whose permissions let group or others read or write it.
pub fn check_secret_mode(path: &Path, meta: &fs::Metadata) -> Result<(), ExposedSecret> {
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(ExposedSecret { path: path.to_owned(), mode });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_sets_mode_and_refuses_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.key");
        write_atomic(&p, b"one", 0o600, false).unwrap();
        let meta = fs::metadata(&p).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert!(matches!(write_atomic(&p, b"two", 0o600, false), Err(WriteError::Exists { .. })));
        assert_eq!(fs::read(&p).unwrap(), b"one");
        write_atomic(&p, b"two", 0o600, true).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        // no temporary files are left behind
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn concurrent_writes_never_trip_over_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.key");
        let path = p.as_path();
        let write_all = |replace: bool| {
            std::thread::scope(|s| {
                let writers: Vec<_> = (0..16u8).map(|i| s.spawn(move || write_atomic(path, &[i; 64], 0o600, replace))).collect();
                writers.into_iter().map(|w| w.join().unwrap()).collect::<Vec<_>>()
            })
        };
        // Replacing: every write lands whole; the last one wins.
        assert!(write_all(true).iter().all(Result::is_ok));
        let got = fs::read(&p).unwrap();
        assert!(got.len() == 64 && got.iter().all(|b| *b == got[0]), "{got:?}");
        // Creating: exactly one writer gets the name, the others are told it exists.
        fs::remove_file(&p).unwrap();
        let results = write_all(false);
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
        assert!(results.iter().filter_map(|r| r.as_ref().err()).all(|e| matches!(e, WriteError::Exists { .. })), "{results:?}");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "temporary files left behind");
    }

    #[test]
    fn exposed_secret_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.key");
        write_atomic(&p, b"x", 0o640, false).unwrap();
        let err = check_secret_mode(&p, &fs::metadata(&p).unwrap()).unwrap_err();
        assert_eq!(err.mode, 0o640);
        assert!(err.fix().is_some_and(|f| f.contains("chmod 600")), "{err}");
    }
}
