//! What a call can fail with: an OS_Error_t code from the daemon, or a
//! problem reaching it (with words saying which).
use std::fmt;

use sealtls_offload_proto::Code;

/// A failed call: the OS_Error_t code, and for failures on this side of the
/// socket (daemon unreachable, gone, or speaking nonsense) what happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    /// The code, as the C ABI returns it.
    pub code: Code,
    /// Words explaining the failure, when known here (the daemon was not
    /// reachable, or its DETAIL was fetched already); else ask DETAIL.
    pub detail: Option<String>,
}

impl Error {
    /// The daemon answered `code`.
    pub fn code(code: Code) -> Self {
        Self { code, detail: None }
    }

    /// A failure with words saying what happened.
    pub fn explained(code: Code, what: impl Into<String>) -> Self {
        Self { code, detail: Some(what.into()) }
    }

    /// Whether the call is still in progress and should be repeated.
    pub fn is_would_block(&self) -> bool {
        self.code == Code::WouldBlock
    }
}

impl From<Code> for Error {
    fn from(code: Code) -> Self {
        Self::code(code)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.detail {
            Some(what) => write!(f, "{}: {what}", self.code.name()),
            None => write!(f, "{} ({})", self.code.name(), self.code.describe()),
        }
    }
}

impl std::error::Error for Error {}

impl From<Error> for std::io::Error {
    fn from(e: Error) -> Self {
        let kind = match e.code {
            Code::WouldBlock => std::io::ErrorKind::WouldBlock,
            Code::ConnectionClosed => std::io::ErrorKind::UnexpectedEof,
            Code::NetworkConnShutdown => std::io::ErrorKind::ConnectionReset,
            _ => std::io::ErrorKind::Other,
        };
        std::io::Error::new(kind, e)
    }
}

/// Result of a call.
pub type Result<T> = std::result::Result<T, Error>;
