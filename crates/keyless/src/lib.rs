//! Keyless TLS: a client for the sealtls key-custody daemon (keyd), and a
//! rustls certificate resolver whose keys sign through keyd, so that the
//! TLS server never holds a private key.
#![deny(missing_docs)]

pub mod client;
pub mod fleet;
pub mod metrics;
pub mod resolver;

pub use client::{KeydClient, KeydEndpoint, KeydError};
pub use fleet::{KeydFleet, MemberHealth, DEFAULT_HEALTH_INTERVAL};
pub use metrics::KeylessMetrics;
pub use resolver::{client_identity, Keyless, KeylessLimits};
