//! TLS endpoints for sealtls: rustls configurations built from files,
//! certificate verifiers that explain refusals, a multi-connection echo
//! server, a client that reports what was negotiated, and bulk transfers.
pub mod client;
pub mod crypto;
pub mod explain;
pub mod forward;
pub mod gate;
pub mod identity;
pub mod legacy;
pub mod metrics;
pub mod net;
pub mod proxy_protocol;
pub mod server;
pub mod session;
pub mod settings;
pub mod signing;
pub mod tls12_ecdsa;
pub mod transfer;
pub mod verify;

pub use crypto::provider;
pub use explain::{Failure, FailureClass};
pub use settings::{ClientAuthMode, TlsVersions};
