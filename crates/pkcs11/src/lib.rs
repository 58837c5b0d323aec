//! `libsealtls_pkcs11.so`: a PKCS#11 module whose private keys stay in
//! keyd. nginx (through OpenSSL's pkcs11 engine), OpenSSL, GnuTLS, curl and
//! other PKCS#11 consumers find keyd's keys and certificates on one token
//! and sign through keyd's SIGN_DIGEST and SIGN; the host process never
//! holds a private key.
//!
//! Configuration is read at C_Initialize: `SEALTLS_PKCS11_CONF` (a TOML
//! file), else `SEALTLS_PKCS11_KEYD` with `SEALTLS_PKCS11_KEYD_CA`,
//! `_KEYD_CERT`, `_KEYD_KEY`, `_TOKEN_LABEL`, `_PIN`, `_TIMEOUT_MS` and `_ED25519`,
//! else /etc/sealtls/pkcs11.toml.

mod config;
#[allow(unsafe_code, non_snake_case, missing_docs, unreachable_pub)]
mod ffi;
mod keyd;
mod objects;
mod token;
