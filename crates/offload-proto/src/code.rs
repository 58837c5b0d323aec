//! Return values: TRENTOS's OS_Error_t numbers, so that C programs written
//! for TlsServer compare against the values they already know.

/// An OS_Error_t value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum Code {
    /// The call did what it was asked.
    Success = 0,
    /// Something failed that has no more precise code.
    Generic = -1,
    /// The call is not supported.
    NotSupported = -3,
    /// The call is not allowed in the slot's current state.
    InvalidState = -4,
    /// An argument is out of range (empty host, port 0, size 0 or too big).
    InvalidParameter = -5,
    /// No such client.
    NotFound = -8,
    /// Refused: not allowed for this client, or a second handshake.
    OperationDenied = -10,
    /// The operation failed and was abandoned (a failed handshake).
    Aborted = -11,
    /// A buffer is too small.
    InsufficientSpace = -13,
    /// The peer closed the TLS connection (close_notify).
    ConnectionClosed = -15,
    /// All client slots are taken.
    OutOfBounds = -16,
    /// Still in progress: call again.
    WouldBlock = -17,
    /// Temporarily impossible: call again later.
    TryAgain = -18,
    /// The daemon has no trust anchors.
    NotInitialized = -19,
    /// The network connection was shut down or could not be made.
    NetworkConnShutdown = -1306,
}

/// Every code, in the order of the table in docs/offload-protocol.md.
pub const ALL: [Code; 15] = [
    Code::Success,
    Code::Generic,
    Code::NotSupported,
    Code::InvalidState,
    Code::InvalidParameter,
    Code::NotFound,
    Code::OperationDenied,
    Code::Aborted,
    Code::InsufficientSpace,
    Code::ConnectionClosed,
    Code::OutOfBounds,
    Code::WouldBlock,
    Code::TryAgain,
    Code::NotInitialized,
    Code::NetworkConnShutdown,
];

impl Code {
    /// The number on the wire and in the C ABI.
    pub fn value(self) -> i32 {
        self as i32
    }

    /// The code with this number, if it is one.
    pub fn from_value(value: i32) -> Option<Self> {
        ALL.into_iter().find(|c| c.value() == value)
    }

    /// The OS_Error_t constant name, e.g. `OS_ERROR_WOULD_BLOCK`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Success => "OS_SUCCESS",
            Self::Generic => "OS_ERROR_GENERIC",
            Self::NotSupported => "OS_ERROR_NOT_SUPPORTED",
            Self::InvalidState => "OS_ERROR_INVALID_STATE",
            Self::InvalidParameter => "OS_ERROR_INVALID_PARAMETER",
            Self::NotFound => "OS_ERROR_NOT_FOUND",
            Self::OperationDenied => "OS_ERROR_OPERATION_DENIED",
            Self::Aborted => "OS_ERROR_ABORTED",
            Self::InsufficientSpace => "OS_ERROR_INSUFFICIENT_SPACE",
            Self::ConnectionClosed => "OS_ERROR_CONNECTION_CLOSED",
            Self::OutOfBounds => "OS_ERROR_OUT_OF_BOUNDS",
            Self::WouldBlock => "OS_ERROR_WOULD_BLOCK",
            Self::TryAgain => "OS_ERROR_TRY_AGAIN",
            Self::NotInitialized => "OS_ERROR_NOT_INITIALIZED",
            Self::NetworkConnShutdown => "OS_ERROR_NETWORK_CONN_SHUTDOWN",
        }
    }

    /// What the code means, in words.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Generic => "generic error",
            Self::NotSupported => "not supported",
            Self::InvalidState => "not allowed in the current connection state",
            Self::InvalidParameter => "invalid parameter",
            Self::NotFound => "no such client",
            Self::OperationDenied => "operation denied",
            Self::Aborted => "aborted (for a handshake: see the error detail)",
            Self::InsufficientSpace => "insufficient space",
            Self::ConnectionClosed => "the peer closed the TLS connection",
            Self::OutOfBounds => "all client slots are taken",
            Self::WouldBlock => "in progress: call again",
            Self::TryAgain => "try again later",
            Self::NotInitialized => "the offload daemon has no trust anchors",
            Self::NetworkConnShutdown => "the network connection is shut down",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_trentos_values() {
        assert_eq!(Code::WouldBlock.value(), -17);
        assert_eq!(Code::NetworkConnShutdown.value(), -1306);
        for c in ALL {
            assert_eq!(Code::from_value(c.value()), Some(c));
        }
        assert_eq!(Code::from_value(-2), None);
    }
}
