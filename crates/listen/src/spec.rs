//! Where a server listens, as written on the command line: `IP:PORT`,
//! `unix:PATH`, or `systemd[:NAME]` for a socket passed by systemd.
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use sealtls_failure::{Failure, FailureClass};
use tokio::net::TcpListener;

use crate::systemd::{take, Passed};
use crate::{bind, UnixSocket};

/// A listen address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenSpec {
    /// A TCP address.
    Tcp(SocketAddr),
    /// A Unix socket path.
    Unix(PathBuf),
    /// A socket systemd passed, by its LISTEN_FDNAMES name (`None`: the first).
    Systemd(Option<String>),
}

impl FromStr for ListenSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "systemd" {
            return Ok(Self::Systemd(None));
        }
        if let Some(name) = s.strip_prefix("systemd:") {
            return match name {
                "" => Err("`systemd:` needs a socket name, e.g. systemd:https (or `systemd` for the first socket)".into()),
                _ => Ok(Self::Systemd(Some(name.to_owned()))),
            };
        }
        match s.strip_prefix("unix:") {
            Some("") => Err("`unix:` needs a socket path, e.g. unix:/run/sealtls.sock".into()),
            Some(path) => Ok(Self::Unix(path.into())),
            None => s
                .parse()
                .map(Self::Tcp)
                .map_err(|_| format!("`{s}` is neither IP:PORT (e.g. 127.0.0.1:8080), unix:PATH nor systemd[:NAME]")),
        }
    }
}

impl fmt::Display for ListenSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(addr) => write!(f, "{addr}"),
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
            Self::Systemd(None) => f.write_str("systemd"),
            Self::Systemd(Some(name)) => write!(f, "systemd:{name}"),
        }
    }
}

/// A bound (or passed) listening socket.
pub enum Listener {
    /// TCP.
    Tcp(TcpListener),
    /// A Unix socket.
    Unix(UnixSocket),
}

impl Listener {
    /// Where it listens, for log lines: `IP:PORT` or `unix:PATH`.
    pub fn local(&self) -> String {
        match self {
            Self::Tcp(l) => l.local_addr().map_or_else(|_| "tcp".to_owned(), |a| a.to_string()),
            Self::Unix(u) => format!("unix:{}", u.path().display()),
        }
    }

    /// The TCP listener; a Unix socket is refused for `service`, which serves TCP only.
    pub fn into_tcp(self, service: &str) -> Result<TcpListener, Failure> {
        match self {
            Self::Tcp(l) => Ok(l),
            Self::Unix(u) => {
                // Bound on the way here: the refusal leaves no socket file behind.
                u.remove();
                Err(Failure::new(
                    FailureClass::Config,
                    format!("{service} listens on TCP only, but {} is a Unix socket", u.path().display()),
                    "give an IP:PORT, or pass a TCP socket (ListenStream=PORT in the .socket unit)",
                ))
            }
        }
    }

    /// The Unix socket; a TCP listener is refused for `service`, which serves a Unix socket only.
    pub fn into_unix(self, service: &str) -> Result<UnixSocket, Failure> {
        match self {
            Self::Unix(u) => Ok(u),
            Self::Tcp(l) => Err(Failure::new(
                FailureClass::Config,
                format!(
                    "{service} listens on a Unix socket only, but {} is TCP",
                    l.local_addr().map_or("the socket".into(), |a| a.to_string())
                ),
                "pass a Unix socket (ListenStream=/run/PATH in the .socket unit)",
            )),
        }
    }
}

impl ListenSpec {
    /// Binds the address, or takes the socket systemd passed. `service`
    /// names the daemon in messages about its Unix socket. Must be called
    /// inside a tokio runtime.
    pub async fn bind(&self, service: &str) -> Result<Listener, Failure> {
        let passed_failure = |e: std::io::Error| {
            Failure::new(FailureClass::Config, format!("--listen {self}: cannot use the passed socket: {e}"), "check the .socket unit")
        };
        match self {
            Self::Tcp(addr) => Ok(Listener::Tcp(bind(*addr).await?)),
            Self::Unix(path) => Ok(Listener::Unix(UnixSocket::bind(path, service)?)),
            Self::Systemd(name) => match take(name.as_deref())? {
                Passed::Tcp(tcp) => {
                    tcp.set_nonblocking(true).map_err(passed_failure)?;
                    Ok(Listener::Tcp(TcpListener::from_std(tcp).map_err(passed_failure)?))
                }
                Passed::Unix(unix) => {
                    unix.set_nonblocking(true).map_err(passed_failure)?;
                    let path = unix.local_addr().ok().and_then(|a| a.as_pathname().map(PathBuf::from));
                    let listener = tokio::net::UnixListener::from_std(unix).map_err(passed_failure)?;
                    Ok(Listener::Unix(UnixSocket::passed(listener, path.unwrap_or_else(|| PathBuf::from(self.to_string())))))
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        assert_eq!("127.0.0.1:80".parse(), Ok(ListenSpec::Tcp("127.0.0.1:80".parse().unwrap())));
        assert_eq!("unix:/run/x.sock".parse(), Ok(ListenSpec::Unix("/run/x.sock".into())));
        assert_eq!("systemd".parse(), Ok(ListenSpec::Systemd(None)));
        assert_eq!("systemd:https".parse(), Ok(ListenSpec::Systemd(Some("https".into()))));
        assert!("systemd:".parse::<ListenSpec>().is_err());
        assert!("unix:".parse::<ListenSpec>().is_err());
        assert!("localhost".parse::<ListenSpec>().is_err());
        for s in ["127.0.0.1:80", "unix:/run/x.sock", "systemd", "systemd:https"] {
            assert_eq!(s.parse::<ListenSpec>().unwrap().to_string(), s);
        }
    }

    #[tokio::test]
    async fn systemd_without_sockets_is_explained() {
        let err = ListenSpec::Systemd(Some("x".into())).bind("test").await.err().expect("no sockets passed");
        assert!(err.what.contains("passed no sockets"), "{}", err.what);
    }
}
