//! Why the store cannot do what was asked, naming the file and the fix.
use std::path::{Path, PathBuf};

use sealtls_custody_proto::ErrorCode;
use sealtls_failure::{Problem, Remedy};

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An I/O error on a named file.
    #[error("{path}: cannot {action}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done.
        action: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The device secret is missing, exposed or malformed.
    #[error("device secret {path}: {problem}")]
    DeviceSecret {
        /// The secret's file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
        /// What to do.
        fix: String,
    },
    /// The data directory can be read by group or others.
    #[error("data directory {path}: readable by group or others (mode {mode:04o})")]
    ExposedDir {
        /// The directory.
        path: PathBuf,
        /// Its mode.
        mode: u32,
    },
    /// The data directory was sealed under another device secret.
    #[error(
        "data directory {dir} was sealed under a different device secret than {secret} (it was copied from another machine, \
         or the device secret was replaced): nothing in it can be opened here, so keyd serves nothing from it"
    )]
    ForeignStore {
        /// The data directory.
        dir: PathBuf,
        /// The device secret in use.
        secret: PathBuf,
    },
    /// The system random generator failed.
    #[error("the system random number generator failed")]
    Random,
    /// Input refused: bad name, bad key, key not matching the certificate.
    #[error("{0}")]
    Invalid(Problem),
    /// No key under that name.
    #[error("no key is installed for {0}")]
    NotFound(String),
    /// The TPM sealing the store key refused or could not be reached.
    #[error("TPM {tcti}: {problem}")]
    Tpm {
        /// The TCTI used to reach it.
        tcti: String,
        /// What is wrong.
        problem: String,
        /// What to do.
        fix: String,
    },
    /// The PKCS#11 token failed.
    #[error("PKCS#11 token: {0}")]
    Token(String),
}

impl Remedy for StoreError {
    fn fix(&self) -> Option<String> {
        match self {
            Self::DeviceSecret { fix, .. } | Self::Tpm { fix, .. } => Some(fix.clone()),
            Self::ExposedDir { path, .. } => Some(format!("fix it with `chmod 700 {}`", path.display())),
            Self::ForeignStore { .. } => Some(
                "run keyd where the data directory was made (or restore that machine's device secret), \
                 or start with an empty --data-dir and install the keys again with `sealtls key put`"
                    .into(),
            ),
            Self::Invalid(problem) => problem.fix(),
            Self::Io { .. } | Self::Random | Self::NotFound(_) | Self::Token(_) => None,
        }
    }
}

impl StoreError {
    /// Input refused, with no fix to offer.
    pub fn invalid(what: impl Into<String>) -> Self {
        Self::Invalid(Problem::bare(what))
    }

    /// Input refused, and what to give instead.
    pub fn refused(what: impl Into<String>, fix: impl Into<String>) -> Self {
        Self::Invalid(Problem::new(what, fix))
    }

    /// An I/O error while doing `action` on `path`.
    pub fn io(path: &Path, action: &'static str, source: std::io::Error) -> Self {
        Self::Io { path: path.to_owned(), action, source }
    }

    /// The protocol code for this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Invalid(_) => ErrorCode::InvalidInput,
            Self::NotFound(_) => ErrorCode::KeyNotFound,
            Self::Token(_) => ErrorCode::KeyUnavailable,
            _ => ErrorCode::StoreFailed,
        }
    }
}
