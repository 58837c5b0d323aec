//! Which verified peers are let in: rules naming a certificate's common
//! name, DNS or URI subjectAltName, or public key. The matching lives in
//! [`sealtls_pki::identity`] so that keyd can use it too; it is re-exported
//! here unchanged.
pub use sealtls_pki::identity::*;
