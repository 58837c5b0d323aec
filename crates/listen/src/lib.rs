//! Listening sockets shared by servers and daemons: a TCP listener whose
//! bind failures are explained, and a daemon's Unix socket (mode 0660,
//! stale sockets cleared, removed on exit), both also as passed by systemd
//! (`ListenSpec`). Nothing here speaks TLS, so a
//! daemon that holds keys can listen without the crates that talk to peers.
use std::net::SocketAddr;

mod spec;
pub mod systemd;

pub use spec::{ListenSpec, Listener};

use sealtls_failure::{Failure, FailureClass};
use tokio::net::{TcpListener, TcpSocket};

/// Connections the kernel completes and holds for a server that is not
/// accepting yet (at its connection limit, or during a burst); beyond it a
/// client's SYN is dropped and retried a second later. The system's
/// net.core.somaxconn caps it. (tokio's `TcpListener::bind` uses 128.)
pub const BACKLOG: u32 = 1024;

/// Binds a listener with [`BACKLOG`], explaining the usual failures.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, Failure> {
    let listen = || {
        let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(BACKLOG)
    };
    listen().map_err(|e: std::io::Error| {
        let fix = match e.kind() {
            std::io::ErrorKind::AddrInUse => format!("another program listens on {addr}: stop it or choose another port"),
            std::io::ErrorKind::PermissionDenied => "ports below 1024 need privileges: choose a port above 1023".to_owned(),
            std::io::ErrorKind::AddrNotAvailable => format!("{} is not an address of this machine", addr.ip()),
            _ => "check the listen address".to_owned(),
        };
        Failure::new(FailureClass::Network, format!("cannot listen on {addr}: {e}"), fix)
    })
}

/// A Unix socket a daemon listens on, removed when the daemon stops
/// unless another daemon has replaced it meanwhile.
pub struct UnixSocket {
    /// The listener.
    pub listener: tokio::net::UnixListener,
    path: std::path::PathBuf,
    /// The socket file's inode; `None` for a socket systemd passed, which is systemd's to remove.
    inode: Option<u64>,
}

fn socket_failure(service: &str, socket: &std::path::Path, what: impl std::fmt::Display, fix: impl Into<String>) -> Failure {
    Failure::new(FailureClass::Config, format!("{service} socket {}: {what}", socket.display()), fix)
}

impl UnixSocket {
    /// Binds `path` with mode 0660. A socket left by a daemon that is gone is
    /// cleared; a live one, or anything that is not a socket, is refused.
    /// Must be called inside a tokio runtime.
    pub fn bind(path: &std::path::Path, service: &str) -> Result<Self, Failure> {
        use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                return Err(socket_failure(service, path, "exists and is not a socket", "remove it or choose another path"));
            }
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(socket_failure(service, path, "another daemon is listening on it", "stop that daemon or choose another path"));
            }
            std::fs::remove_file(path)
                .map_err(|e| socket_failure(service, path, format!("cannot remove the stale socket: {e}"), "remove it by hand"))?;
        }
        let listener = tokio::net::UnixListener::bind(path).map_err(|e| {
            let fix = match path.parent() {
                Some(dir) if !dir.as_os_str().is_empty() && !dir.is_dir() => format!("create the directory {} first", dir.display()),
                _ => "check the path and the directory's permissions".to_owned(),
            };
            socket_failure(service, path, format!("cannot listen: {e}"), fix)
        })?;
        let meta = std::fs::metadata(path).and_then(|m| {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
            Ok(m)
        });
        let inode = meta
            .map_err(|e| socket_failure(service, path, format!("cannot set mode 0660: {e}"), "check the directory's permissions"))?
            .ino();
        Ok(Self { listener, path: path.to_owned(), inode: Some(inode) })
    }

    /// A socket systemd passed: served as it is, never removed by us.
    pub fn passed(listener: tokio::net::UnixListener, path: std::path::PathBuf) -> Self {
        Self { listener, path, inode: None }
    }

    /// The socket's path.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Removes the socket file if it is still this daemon's.
    pub fn remove(&self) {
        use std::os::unix::fs::MetadataExt;
        if std::fs::metadata(&self.path).is_ok_and(|m| Some(m.ino()) == self.inode) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}
