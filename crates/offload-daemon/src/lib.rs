//! The sealtls TLS offload daemon, after TRENTOS TlsServer: local programs
//! connect to a Unix socket, get a slot (badge), and have the daemon open,
//! verify and use outbound TLS connections for them, with the calls,
//! states and OS_Error_t codes of `sealtls-offload-proto`.
//!
//! One task per client drives that client's frames, state machine and TLS
//! connection, so a client that misbehaves only holds itself up.
mod buffer;
mod daemon;
pub mod metrics;
mod session;
mod shared;
mod upstream;

pub use daemon::{Allow, Daemon, OffloadSettings, TrustAnchors, BUFFER_SIZES, DEFAULT_BUFFER_SIZE, DEFAULT_MAX_CLIENTS, FIRST_BADGE};
