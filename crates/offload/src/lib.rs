//! Client of the sealtls TLS offload daemon (`sealtls offload`): have the
//! daemon open, verify and carry a TLS connection for you, without linking
//! a TLS stack or holding trust settings.
//!
//! - [`Client`]: the non-blocking calls of TRENTOS TlsServer (`connect`,
//!   `handshake`, `write`, `read`, `reset`, `disconnect`), each returning
//!   OS_Error_t codes; WOULD_BLOCK means "call again".
//! - [`connect`] / [`AsyncClient`]: the same over tokio, giving an
//!   [`OffloadStream`] that implements `AsyncRead` and `AsyncWrite`.
//! - The C ABI of `include/sealtls_offload.h`, built as `libsealtls_offload.so`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//! let mut tls = sealtls_offload::connect("sealtls-data/offload.sock", "localhost", 10007).await?;
//! tls.write_all(b"hello\n").await?;
//! let mut echo = [0u8; 6];
//! tls.read_exact(&mut echo).await?;
//! # Ok(()) }
//! ```
mod answer;
mod client;
mod error;
mod ffi;
mod stream;

pub use client::Client;
pub use error::{Error, Result};
pub use sealtls_offload_proto::{detail, Code};
pub use stream::{connect, AsyncClient, OffloadStream};
