//! PKCS#11 backend.
