//! A look at the ClientHello before the handshake goes on: a server whose
//! certificates come from elsewhere (keyd) gets them ready asynchronously
//! here, or refuses the name with the alert TLS defines for it.
use std::future::Future;
use std::pin::Pin;

use rustls::server::{Accepted, Acceptor};
use rustls::AlertDescription;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Why a ClientHello is refused.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// The fatal alert sent: `unrecognized_name` for a name the server
    /// does not serve, `handshake_failure` when it cannot serve it now.
    pub alert: AlertDescription,
    /// For the log line.
    pub reason: String,
}

/// Decides from the server name whether a handshake may go ahead, after
/// making what the certificate resolver needs ready.
pub trait HelloGate: Send + Sync {
    /// Checks `server_name` (the SNI, if any).
    fn check<'a>(&'a self, server_name: Option<&'a str>) -> Pin<Box<dyn Future<Output = Result<(), Refusal>> + Send + 'a>>;
}

/// What reading a ClientHello came to.
pub enum Hello {
    /// A ClientHello, ready to go on with.
    Accepted(Box<Accepted>),
    /// Not TLS, or a malformed hello; rustls's alert has been sent.
    Invalid(rustls::Error),
}

/// Reads until a complete ClientHello, without starting the handshake.
pub async fn read_client_hello<IO: AsyncRead + AsyncWrite + Unpin>(io: &mut IO) -> std::io::Result<Hello> {
    let mut acceptor = Acceptor::default();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = io.read(&mut buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let mut rest = &buf[..n];
        while !rest.is_empty() {
            if acceptor.read_tls(&mut rest)? == 0 {
                return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "ClientHello too large"));
            }
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => return Ok(Hello::Accepted(Box::new(accepted))),
            Ok(None) => continue,
            Err((error, mut alert)) => {
                let mut out = Vec::new();
                let _ = alert.write_all(&mut out);
                let _ = io.write_all(&out).await;
                return Ok(Hello::Invalid(error));
            }
        }
    }
}

/// Sends a fatal alert as a plaintext record, as a server does before its first flight.
pub async fn send_alert<IO: AsyncWrite + Unpin>(io: &mut IO, alert: AlertDescription) {
    let record = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, u8::from(alert)];
    let _ = io.write_all(&record).await;
    let _ = io.flush().await;
}
