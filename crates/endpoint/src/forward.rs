//! Forwarding: each TLS session is joined to a new plain connection to a
//! target (TCP or a Unix socket), bytes flow both ways until both sides have
//! finished, and each side's end is passed on: the client's close_notify
//! becomes a shutdown of the target's write side, the target's FIN becomes
//! close_notify. Reads wait for writes, so a side that stops reading stops
//! the other side's reads (backpressure), and memory stays bounded.
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::str::FromStr;
use std::task::{Context, Poll};
use std::time::Duration;

use sealtls_failure::{Failure, FailureClass};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use crate::net::TrafficBuffer;

/// Where forwarded sessions go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// `HOST:PORT`.
    Tcp(String),
    /// `unix:PATH`.
    Unix(PathBuf),
}

impl FromStr for Target {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("`unix:` needs a socket path, e.g. unix:/run/app.sock".into());
            }
            return Ok(Self::Unix(path.into()));
        }
        match s.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0) => Ok(Self::Tcp(s.to_owned())),
            _ => Err(format!("`{s}` is neither HOST:PORT nor unix:PATH")),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(addr) => f.write_str(addr),
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl Target {
    /// Refuses a target off this machine unless `unsafe_target` is given:
    /// forwarded bytes travel in the clear (as ghostunnel's --unsafe-target).
    pub async fn check_local(&self, unsafe_target: bool) -> Result<(), Failure> {
        let Self::Tcp(addr) = self else { return Ok(()) };
        if unsafe_target {
            return Ok(());
        }
        let resolved: Vec<SocketAddr> = tokio::net::lookup_host(addr.as_str())
            .await
            .map_err(|e| {
                Failure::new(FailureClass::Config, format!("--target {addr}: cannot resolve: {e}"), "check the name, or use an address")
            })?
            .collect();
        match resolved.iter().find(|a| !is_loopback(a.ip())) {
            None if !resolved.is_empty() => Ok(()),
            found => Err(Failure::new(
                FailureClass::Usage,
                format!(
                    "--target {addr} is not on this machine{}: the forwarded bytes would cross the network in the clear",
                    found.map(|a| format!(" ({})", a.ip())).unwrap_or_default()
                ),
                "forward to a loopback address or unix:PATH, or pass --unsafe-target if the network between is trusted",
            )),
        }
    }

    /// Opens a connection to the target within `timeout`.
    pub async fn connect(&self, timeout: Duration) -> std::io::Result<TargetStream> {
        let connect = async {
            Ok(match self {
                Self::Tcp(addr) => {
                    let tcp = TcpStream::connect(addr.as_str()).await?;
                    let _ = tcp.set_nodelay(true);
                    TargetStream::Tcp(tcp)
                }
                Self::Unix(path) => TargetStream::Unix(UnixStream::connect(path).await?),
            })
        };
        tokio::time::timeout(timeout, connect).await.map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))?
    }
}

/// Whether `ip` is this machine's: loopback, including IPv4 loopback mapped into IPv6.
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    }
}

/// A connection to a target.
#[derive(Debug)]
pub enum TargetStream {
    /// Over TCP.
    Tcp(TcpStream),
    /// Over a Unix socket.
    Unix(UnixStream),
}

impl TargetStream {
    /// Closes with a reset where there is one (TCP), so that the program on
    /// the other end sees the connection cut rather than ended: the only way
    /// plain TCP can tell it that what it got may be incomplete.
    pub fn reset(self) {
        if let Self::Tcp(tcp) = &self {
            let _ = tcp.set_zero_linger();
        }
    }
}

/// A plain connection that is reset when dropped unless [`CutOnDrop::ended`]
/// says its session ended cleanly: a session cut short (a limit, a shutdown,
/// a failure on the other side) must not look complete to the program
/// behind it, however the cut comes (a dropped future included).
pub struct CutOnDrop(Option<TargetStream>);

impl CutOnDrop {
    /// Guards `stream`.
    pub fn new(stream: TargetStream) -> Self {
        Self(Some(stream))
    }

    /// The connection, for the relay.
    pub fn stream(&mut self) -> &mut TargetStream {
        self.0.as_mut().expect("present until ended or dropped")
    }

    /// Whether dropping it can tell the program (TCP has resets; a Unix socket does not).
    pub fn can_reset(&self) -> bool {
        matches!(self.0, Some(TargetStream::Tcp(_)))
    }

    /// The session ended cleanly: close as usual.
    pub fn ended(mut self) {
        drop(self.0.take());
    }
}

impl Drop for CutOnDrop {
    fn drop(&mut self) {
        if let Some(stream) = self.0.take() {
            stream.reset();
        }
    }
}

impl AsyncRead for TargetStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Self::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for TargetStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Self::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_flush(cx),
            Self::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Self::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// What a forwarding server does with each session.
#[derive(Clone, Debug)]
pub struct Forward {
    /// Where sessions go.
    pub target: Target,
    /// How long connecting to the target may take.
    pub connect_timeout: Duration,
    /// A PROXY protocol header sent to the target before any client byte.
    pub proxy_protocol: Option<crate::proxy_protocol::ProxyProtocol>,
}

/// Bytes moved by a relay.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Relayed {
    /// From the client (TLS side) to the target.
    pub to_target: u64,
    /// From the target to the client.
    pub to_client: u64,
}

/// The most one direction reads at once, while bulk data flows.
const CHUNK: usize = 256 * 1024;

/// Which end of a relay a failure came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelayEnd {
    /// The first stream given to [`relay`].
    Client,
    /// The second.
    Target,
}

/// A relay's failure, with the end it came from.
#[derive(Debug)]
pub struct RelayError {
    /// Whose read or write failed.
    pub end: RelayEnd,
    /// What failed.
    pub error: std::io::Error,
}

/// Told of every chunk a relay has passed on: toward which end, how many bytes.
pub type Tally<'a> = &'a (dyn Fn(RelayEnd, u64) + Sync);

/// Copies `from` to `to` until `from` ends, then shuts `to`'s write side;
/// each read waits for the previous write. `moved` counts as it goes, and
/// `tally` hears of each chunk. The buffer grows to `CHUNK` while data
/// flows and shrinks while idle. A failure names its end: `from`'s for a
/// read, `to`'s for a write.
async fn pipe<R, W>(from: (&mut R, RelayEnd), to: (&mut W, RelayEnd), moved: &mut u64, tally: Tally<'_>) -> Result<(), RelayError>
where
    R: AsyncRead + Unpin + ?Sized,
    W: AsyncWrite + Unpin + ?Sized,
{
    let ((from, reader), (to, writer)) = (from, to);
    let failed = |end| move |error| RelayError { end, error };
    let mut buf = TrafficBuffer::new(CHUNK);
    loop {
        let data = buf.read(from).await.map_err(failed(reader))?;
        if data.is_empty() {
            return to.shutdown().await.map_err(failed(writer));
        }
        to.write_all(data).await.map_err(failed(writer))?;
        to.flush().await.map_err(failed(writer))?;
        *moved += data.len() as u64;
        tally(writer, data.len() as u64);
    }
}

/// Relays between a TLS session and a target until both directions have
/// ended, keeping each half-close. The first error ends both directions.
/// `moved` counts as bytes go, so a relay cut short (an idle limit) still
/// tells what it moved; `tally` hears of each chunk as it is passed on (for
/// counters that must not wait for the end of a long session).
pub async fn relay<C, T>(client: C, target: T, moved: &mut Relayed, tally: Tally<'_>) -> Result<(), RelayError>
where
    C: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    let (mut client_rd, mut client_wr) = tokio::io::split(client);
    let (mut target_rd, mut target_wr) = tokio::io::split(target);
    let up = pipe((&mut client_rd, RelayEnd::Client), (&mut target_wr, RelayEnd::Target), &mut moved.to_target, tally);
    let down = pipe((&mut target_rd, RelayEnd::Target), (&mut client_wr, RelayEnd::Client), &mut moved.to_client, tally);
    tokio::try_join!(up, down).map(|_| ())
}

/// A target that failed in the middle of a session, as the error the
/// session ends with: `explain` names the target, not the client.
#[derive(Debug)]
pub struct TargetFailed {
    /// The target, as given.
    pub target: String,
    /// What failed.
    pub error: std::io::Error,
}

impl fmt::Display for TargetFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "target {}: {}", self.target, self.error)
    }
}

impl std::error::Error for TargetFailed {}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;

    #[test]
    fn targets_parse() {
        assert_eq!("127.0.0.1:8080".parse::<Target>(), Ok(Target::Tcp("127.0.0.1:8080".into())));
        assert_eq!("[::1]:80".parse::<Target>(), Ok(Target::Tcp("[::1]:80".into())));
        assert_eq!("unix:/run/app.sock".parse::<Target>(), Ok(Target::Unix("/run/app.sock".into())));
        for bad in ["unix:", "localhost", ":80", "host:0", "host:http", ""] {
            assert!(bad.parse::<Target>().is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn only_loopback_and_unix_targets_unless_unsafe() {
        for ok in ["127.0.0.1:1", "[::1]:1", "localhost:1", "unix:/x"] {
            ok.parse::<Target>().unwrap().check_local(false).await.unwrap_or_else(|f| panic!("{ok}: {f}"));
        }
        let far: Target = "192.0.2.1:443".parse().unwrap();
        let f = far.check_local(false).await.unwrap_err();
        assert!(f.what.contains("not on this machine") && f.fix.contains("--unsafe-target"), "{f}");
        far.check_local(true).await.unwrap();
    }

    #[tokio::test]
    async fn both_half_closes_are_passed_on() {
        let (client, mut client_peer) = tokio::io::duplex(1024);
        let (target, mut target_peer) = tokio::io::duplex(1024);
        let relay = tokio::spawn(async move {
            let mut moved = Relayed::default();
            let result = relay(client, target, &mut moved, &|_, _| ()).await;
            (moved, result)
        });
        client_peer.write_all(b"request").await.unwrap();
        client_peer.shutdown().await.unwrap();
        let mut got = Vec::new();
        target_peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"request", "the client's end reaches the target as EOF");
        // The target still answers after the client's half-close.
        target_peer.write_all(b"response").await.unwrap();
        target_peer.shutdown().await.unwrap();
        let mut got = Vec::new();
        client_peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"response");
        let (moved, result) = relay.await.unwrap();
        result.unwrap();
        assert_eq!(moved, Relayed { to_target: 7, to_client: 8 });
    }
}
