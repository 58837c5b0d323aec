//! Error codes carried by ERROR responses.

/// Why a request failed. The numbers are part of the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ErrorCode {
    /// The body does not fit the operation (a field is truncated, too long or left over).
    BadRequest = 1,
    /// The kind byte names no operation.
    UnknownOperation = 2,
    /// No key is installed for the domain, key id or URI.
    KeyNotFound = 3,
    /// The key cannot make this signature scheme (e.g. RSA asked for ECDSA).
    SchemeMismatch = 4,
    /// The scheme is not one of the protocol's.
    UnsupportedScheme = 5,
    /// The caller may sign but not provision.
    Forbidden = 6,
    /// The key exists but cannot be used: its entry failed authentication or its token is gone.
    KeyUnavailable = 7,
    /// Provisioning input was refused: a key that does not match its certificate, a bad name, an unreadable key.
    InvalidInput = 8,
    /// The store could not be written.
    StoreFailed = 9,
    /// The backend failed to sign.
    SigningFailed = 10,
    /// The daemon is at its limit of connections or requests in flight; retry later.
    Busy = 11,
    /// A bug in the daemon.
    Internal = 12,
}

impl ErrorCode {
    /// Every code, in number order.
    pub const ALL: [Self; 12] = [
        Self::BadRequest,
        Self::UnknownOperation,
        Self::KeyNotFound,
        Self::SchemeMismatch,
        Self::UnsupportedScheme,
        Self::Forbidden,
        Self::KeyUnavailable,
        Self::InvalidInput,
        Self::StoreFailed,
        Self::SigningFailed,
        Self::Busy,
        Self::Internal,
    ];

    /// The code for a number; unknown numbers become `Internal` so that a
    /// newer daemon's codes still read as failures.
    pub fn from_u16(n: u16) -> Self {
        Self::ALL.into_iter().find(|c| *c as u16 == n).unwrap_or(Self::Internal)
    }

    /// The name used in the spec and in logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::BadRequest => "BAD_REQUEST",
            Self::UnknownOperation => "UNKNOWN_OPERATION",
            Self::KeyNotFound => "KEY_NOT_FOUND",
            Self::SchemeMismatch => "SCHEME_MISMATCH",
            Self::UnsupportedScheme => "UNSUPPORTED_SCHEME",
            Self::Forbidden => "FORBIDDEN",
            Self::KeyUnavailable => "KEY_UNAVAILABLE",
            Self::InvalidInput => "INVALID_INPUT",
            Self::StoreFailed => "STORE_FAILED",
            Self::SigningFailed => "SIGNING_FAILED",
            Self::Busy => "BUSY",
            Self::Internal => "INTERNAL",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_round_trip_and_are_dense() {
        for (i, c) in ErrorCode::ALL.into_iter().enumerate() {
            assert_eq!(c as u16, i as u16 + 1);
            assert_eq!(ErrorCode::from_u16(c as u16), c);
        }
        assert_eq!(ErrorCode::from_u16(999), ErrorCode::Internal);
    }
}
