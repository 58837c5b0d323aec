//! Socket set-up shared by servers and clients.
use std::net::SocketAddr;

use tokio::io::BufReader;
use tokio::net::{TcpListener, TcpStream};

use crate::explain::{Failure, FailureClass};

/// rustls pulls at most 4 KiB per read; a buffer under it turns four or more
/// syscalls per 16 KiB record into one per buffer fill.
pub const READ_BUFFER: usize = 256 * 1024;

/// A TCP stream with a read buffer, as handed to rustls.
pub type Buffered = BufReader<TcpStream>;

/// Prepares an accepted or connected socket for TLS traffic.
pub fn buffered(tcp: TcpStream) -> Buffered {
    // Handshake flights and echoes are latency-bound: do not wait for more data.
    let _ = tcp.set_nodelay(true);
    BufReader::with_capacity(READ_BUFFER, tcp)
}

/// Binds a listener, explaining the usual failures.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, Failure> {
    TcpListener::bind(addr).await.map_err(|e| {
        let fix = match e.kind() {
            std::io::ErrorKind::AddrInUse => format!("another program listens on {addr}: stop it or choose another port"),
            std::io::ErrorKind::PermissionDenied => "ports below 1024 need privileges: choose a port above 1023".to_owned(),
            std::io::ErrorKind::AddrNotAvailable => format!("{} is not an address of this machine", addr.ip()),
            _ => "check the listen address".to_owned(),
        };
        Failure::new(FailureClass::Network, format!("cannot listen on {addr}: {e}"), fix)
    })
}
