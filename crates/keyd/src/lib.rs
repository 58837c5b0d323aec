//! The sealtls key-custody daemon: private keys sealed to the machine
//! (or held by a PKCS#11 token) that sign for TLS servers and never leave.
#![deny(missing_docs)]

pub mod authorize;
pub mod backend;
pub mod custody;
pub mod device;
pub mod error;
pub mod keys;
pub mod metrics;
pub mod pkcs11;
pub mod record;
pub mod sealed;
pub mod server;
pub mod tpm;
pub mod uri;

pub use authorize::{Grants, Peer};
pub use backend::{Backend, Entry, Location, State};
pub use custody::{Caller, Custody};
pub use error::StoreError;
pub use sealed::SealedFiles;
pub use server::{ClientCas, Keyd, KeydLimits, KeydSettings, TlsListen};
