//! The protocol core of the sealtls TLS offload daemon, after TRENTOS's
//! TlsServer: local programs ask the daemon to open, verify and use an
//! outbound TLS connection for them.
//!
//! Everything here is sans-IO: [`code`] holds the OS_Error_t values,
//! [`proto`] encodes and decodes the RPC frames of docs/offload-protocol.md,
//! and [`slot`] is one client's state machine, which says what the runtime
//! must do next instead of doing it.
pub mod code;
pub mod proto;
pub mod slot;

pub use code::{Code, ALL as ALL_CODES};
pub use slot::{Action, Slot, State};

/// Phrases the daemon's DETAIL uses for refusals a client tells apart (for
/// its exit status) without a wire field for them.
pub mod detail {
    /// Opens the reason for a server certificate the daemon did not accept.
    pub const REFUSED_CERTIFICATE: &str = "the daemon did not accept the server's certificate: ";
    /// In the fix for a server certificate from a CA the daemon does not trust.
    pub const UNTRUSTED: &str = "the daemon's trust anchors (--trust, [offload] trust)";
    /// In the fix for a server certificate that does not name the host connected to.
    pub const MISNAMED: &str = "start the daemon with --no-hostname-check";
    /// In the reason for a connect or handshake that ran out of time.
    pub const TIMED_OUT: &str = "did not finish within";
}
