//! Keyless TLS.
