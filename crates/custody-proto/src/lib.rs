//! The key-custody protocol of sealtls (docs/custody-protocol.md) without
//! I/O: frame codec, operations, error codes and key selection by domain.
//! A custody daemon and its clients both build on it.
#![deny(missing_docs)]

pub mod code;
pub mod der;
pub mod domain;
pub mod frame;
pub mod message;
mod wire;

pub use code::ErrorCode;
pub use domain::{normalize_domain, DomainError, DomainTable};
pub use frame::{decode_frame, encode_frame, Frame, FrameError, HEADER_LEN, MAGIC, MAX_BODY, VERSION};
pub use message::{message_parts, ChainInfo, DigestSigning, Family, KeyEntry, KeyId, ListEntry, Op, Request, Response, Scheme, Selector};
pub use wire::BodyError;
