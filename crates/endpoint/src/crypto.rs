//! The crypto provider every endpoint is built with.
use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;

/// The process-wide crypto provider: aws-lc-rs.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER.get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider())).clone()
}
