//! Reading the daemon's answers, shared by the blocking and async clients:
//! each expected answer is checked against what was asked, and a GOODBYE
//! or a mismatch becomes an [`Error`].
use sealtls_offload_proto::proto::{Op, Response, BODY_OVERHEAD};
use sealtls_offload_proto::Code;

use crate::error::{Error, Result};

/// Largest answer body accepted: a full READ, or a long DETAIL text.
pub(crate) fn max_body(buffer_size: usize) -> usize {
    (buffer_size + BODY_OVERHEAD).max(64 * 1024)
}

/// An answer that is not the one expected, as an error.
pub(crate) fn unexpected(response: Response, expected: &str) -> Error {
    match response {
        Response::Goodbye { code, reason } => Error::explained(code, format!("the offload daemon closed the connection: {reason}")),
        other => Error::explained(Code::Generic, format!("the offload daemon answered {other:?} where {expected} was expected")),
    }
}

/// The WELCOME: badge and buffer size.
pub(crate) fn welcome(response: Response) -> Result<(u32, usize)> {
    match response {
        Response::Welcome { code: Code::Success, badge, buffer_size } => Ok((badge, buffer_size as usize)),
        Response::Welcome { code: Code::OutOfBounds, .. } => {
            Err(Error::explained(Code::OutOfBounds, "all client slots of the offload daemon are taken; retry when a client closes"))
        }
        Response::Welcome { code: Code::OperationDenied, .. } => {
            Err(Error::explained(Code::OperationDenied, "the offload daemon does not allow this user (see its --allow-uid/--allow-gid)"))
        }
        Response::Welcome { code, .. } => Err(Error::explained(code, "the offload daemon refused the connection")),
        other => Err(unexpected(other, "WELCOME")),
    }
}

/// A status answer to `op`.
pub(crate) fn status(response: Response, op: Op) -> Result<()> {
    match response {
        Response::Status { op: got, code } if got == op => match code {
            Code::Success => Ok(()),
            code => Err(Error::code(code)),
        },
        other => Err(unexpected(other, "a status")),
    }
}

/// The answer to WRITE: bytes taken.
pub(crate) fn written(response: Response) -> Result<usize> {
    match response {
        Response::Written { code: Code::Success, taken } => Ok(taken as usize),
        Response::Written { code, .. } => Err(Error::code(code)),
        other => Err(unexpected(other, "a WRITE answer")),
    }
}

/// The answer to READ: the bytes.
pub(crate) fn read(response: Response) -> Result<Vec<u8>> {
    match response {
        Response::Read { code: Code::Success, data } => Ok(data),
        Response::Read { code, .. } => Err(Error::code(code)),
        other => Err(unexpected(other, "a READ answer")),
    }
}

/// The answer to DETAIL or SESSION.
pub(crate) fn text(response: Response, op: Op) -> Result<String> {
    match response {
        Response::Text { op: got, code: Code::Success, text } if got == op => Ok(text),
        Response::Text { op: got, code, .. } if got == op => Err(Error::code(code)),
        other => Err(unexpected(other, "a text answer")),
    }
}
