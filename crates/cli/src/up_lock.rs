//! One `sealtls up` per data directory: `DATA_DIR/up.pid`, locked with
//! flock while `up` runs and holding its pid and command line. The kernel
//! drops the lock when the process ends, however it ends, so a crashed run
//! leaves the file behind but not the lock.
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use rustix::fs::{flock, FlockOperation};
use sealtls_failure::{Failure, FailureClass};

/// The lock file's name in the data directory.
pub const LOCK_FILE: &str = "up.pid";

/// Held while `up` runs; the lock goes with the file descriptor.
pub struct UpLock {
    _file: File,
}

/// This process's command line, arguments separated by spaces.
pub fn command_line(pid: &str) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let words: Vec<String> = raw.split(|b| *b == 0).filter(|w| !w.is_empty()).map(|w| String::from_utf8_lossy(w).into_owned()).collect();
    (!words.is_empty()).then(|| words.join(" "))
}

/// Takes `DATA_DIR/up.pid` (creating the directory, mode 0700, when missing),
/// or says which `up` holds it.
pub fn acquire(data_dir: &Path) -> Result<UpLock, Failure> {
    let io = |what: String, e: std::io::Error| {
        Failure::new(
            FailureClass::Config,
            format!("{what}: {e}"),
            "check the data directory's path and permissions, or give another --data-dir",
        )
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data_dir)
        .map_err(|e| io(format!("cannot create {}", data_dir.display()), e))?;
    let path = data_dir.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(|e| io(format!("cannot open {}", path.display()), e))?;
    match flock(&file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(rustix::io::Errno::WOULDBLOCK) => {
            let held = std::fs::read_to_string(&path).unwrap_or_default();
            let mut lines = held.lines();
            let pid = lines.next().filter(|p| !p.is_empty()).unwrap_or("unknown (it is still starting)");
            let command = lines.next().unwrap_or("sealtls up");
            return Err(Failure::new(
                FailureClass::Config,
                format!("another sealtls up runs in {} (pid {pid}: {command}); it holds {}", data_dir.display(), path.display()),
                format!("stop it first (kill {pid}), or give this one another --data-dir"),
            ));
        }
        Err(e) => return Err(io(format!("cannot lock {}", path.display()), e.into())),
    }
    let me = std::process::id();
    let command = command_line(&me.to_string()).unwrap_or_else(|| "sealtls up".into());
    file.set_len(0)
        .and_then(|()| file.write_all(format!("{me}\n{command}\n").as_bytes()))
        .map_err(|e| io(format!("cannot write {}", path.display()), e))?;
    Ok(UpLock { _file: file })
}
