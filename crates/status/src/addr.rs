//! Where the status listener listens, and binding it: loopback TCP or a
//! Unix socket; any other TCP address only when the operator says so.
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use sealtls_failure::{Failure, FailureClass};
use sealtls_listen::UnixSocket;
use tokio::net::TcpListener;

/// `HOST:PORT` or `unix:PATH`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StatusAddr {
    /// A TCP address.
    Tcp(SocketAddr),
    /// A Unix socket's path.
    Unix(PathBuf),
}

impl FromStr for StatusAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.strip_prefix("unix:") {
            Some("") => Err("unix: needs a path, e.g. unix:/run/sealtls/status.sock".into()),
            Some(path) => Ok(Self::Unix(PathBuf::from(path))),
            None => s
                .parse()
                .map(Self::Tcp)
                .map_err(|_| format!("`{s}` is neither IP:PORT nor unix:PATH; e.g. 127.0.0.1:9100 or unix:/run/sealtls/status.sock")),
        }
    }
}

impl fmt::Display for StatusAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(a) => a.fmt(f),
            Self::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// A bound status listener.
pub enum Bound {
    /// On TCP.
    Tcp(TcpListener),
    /// On a Unix socket (removed when dropped).
    Unix(UnixSocket),
}

impl Bound {
    /// The address it listens on, with the port the system chose.
    pub fn address(&self) -> String {
        match self {
            Self::Tcp(l) => l.local_addr().map_or_else(|e| format!("(unknown: {e})"), |a| a.to_string()),
            Self::Unix(s) => format!("unix:{}", s.path().display()),
        }
    }
}

impl Drop for Bound {
    fn drop(&mut self) {
        if let Self::Unix(s) = self {
            s.remove();
        }
    }
}

/// Binds `addr`. The status page tells anyone who reaches it which
/// certificates and keys are in use, so a TCP address that is not loopback
/// is refused unless `unsafe_remote` is set.
pub async fn bind(addr: &StatusAddr, unsafe_remote: bool) -> Result<Bound, Failure> {
    match addr {
        StatusAddr::Tcp(a) if !a.ip().is_loopback() && !unsafe_remote => Err(Failure::new(
            FailureClass::Usage,
            format!("--status {a} is not a loopback address: anyone who reaches it could read the status page and metrics"),
            "use 127.0.0.1:PORT or unix:PATH (a reverse proxy or node exporter can publish it), or pass --unsafe-status to expose it as it is",
        )),
        StatusAddr::Tcp(a) => Ok(Bound::Tcp(sealtls_listen::bind(*a).await?)),
        StatusAddr::Unix(path) => Ok(Bound::Unix(UnixSocket::bind(path, "status")?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_forms() {
        assert_eq!("127.0.0.1:9100".parse::<StatusAddr>().unwrap(), StatusAddr::Tcp("127.0.0.1:9100".parse().unwrap()));
        assert_eq!("unix:/tmp/s".parse::<StatusAddr>().unwrap(), StatusAddr::Unix("/tmp/s".into()));
        assert!("unix:".parse::<StatusAddr>().is_err());
        assert!("localhost".parse::<StatusAddr>().is_err());
    }

    #[tokio::test]
    async fn refuses_remote_addresses_unless_allowed() {
        let remote = StatusAddr::Tcp("0.0.0.0:0".parse().unwrap());
        let err = bind(&remote, false).await.err().expect("refused");
        assert_eq!(err.class, FailureClass::Usage);
        assert!(err.fix.contains("--unsafe-status"), "{}", err.fix);
        assert!(bind(&remote, true).await.is_ok());
        assert!(bind(&StatusAddr::Tcp("127.0.0.1:0".parse().unwrap()), false).await.is_ok());
    }
}
