//! PKI for sealtls: issue a development CA and leaves, load certificates
//! and keys in every common form, inspect them, and explain in plain words
//! why a peer's certificate chain was refused.
pub mod diagnose;
pub mod files;
pub mod identity;
pub mod inspect;
pub mod issue;
pub mod load;

pub use diagnose::{diagnose, Diagnosis, Problem, Purpose};
pub use load::{load_certs, load_certs_pem, load_key, load_key_pem, LoadError};
