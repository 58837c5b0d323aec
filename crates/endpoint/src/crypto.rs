//! The crypto provider every endpoint is built with.
use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;
use rustls::CipherSuite;

/// The process-wide crypto provider: aws-lc-rs, with AES-128-GCM suites
/// ahead of AES-256-GCM (as Go's crypto/tls orders them). Servers choose by
/// this order: TLS 1.3's AES-128-GCM suite hashes with SHA-256, which this
/// class of CPU computes in hardware (SHA-NI), and takes four fewer AES
/// rounds per block, while its security margin is the one RFC 8446 makes
/// mandatory to implement.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            let mut provider = rustls::crypto::aws_lc_rs::default_provider();
            provider.cipher_suites.sort_by_key(|s| {
                !matches!(
                    s.suite(),
                    CipherSuite::TLS13_AES_128_GCM_SHA256
                        | CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
                        | CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
                )
            });
            Arc::new(provider)
        })
        .clone()
}
