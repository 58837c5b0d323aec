//! Failures explained: what went wrong and how to fix it, with a class that
//! maps to a stable process exit code. Errors carry their remedy as data
//! through [`Remedy`]; their `Display` text says only what went wrong.
//!
//! This crate depends on no other sealtls crate, so that every crate may
//! depend on it.
use std::fmt;

/// The remedy given for a configuration failure whose error knows none.
pub const CHECK_FILE: &str = "check the file's path, permissions and contents";

/// Kinds of failure; each has a stable exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureClass {
    /// Bad command line (2).
    Usage,
    /// A file or configuration could not be used (3).
    Config,
    /// The network failed: refused, reset, timed out, closed (4).
    Network,
    /// The peer's certificate was not trusted (5).
    PeerNotTrusted,
    /// The peer refused us, usually our certificate (6).
    Rejected,
    /// The peers could not agree, or one does not speak TLS properly (7).
    Protocol,
    /// Data came back different from what was sent (8).
    DataMismatch,
}

impl FailureClass {
    /// The process exit code for this class.
    pub fn exit_code(self) -> i32 {
        match self {
            Self::Usage => 2,
            Self::Config => 3,
            Self::Network => 4,
            Self::PeerNotTrusted => 5,
            Self::Rejected => 6,
            Self::Protocol => 7,
            Self::DataMismatch => 8,
        }
    }
}

/// An error that knows how it can be fixed. Its `Display` text says what
/// went wrong, in one line, and nothing more; [`Remedy::fix`] says what to do.
pub trait Remedy: fmt::Display {
    /// How to fix it, in one line, when the error knows; `None` leaves the
    /// remedy to the caller, who knows the context.
    fn fix(&self) -> Option<String>;

    /// What went wrong and, after `"; "`, the fix: one line for places that
    /// print an error whole (logs, listings, protocol messages), never to be
    /// cut apart again.
    fn with_fix(&self) -> String {
        match self.fix() {
            Some(fix) => format!("{self}; {fix}"),
            None => self.to_string(),
        }
    }
}

impl<T: Remedy + ?Sized> Remedy for &T {
    fn fix(&self) -> Option<String> {
        (**self).fix()
    }
}

impl<T: Remedy + ?Sized> Remedy for Box<T> {
    fn fix(&self) -> Option<String> {
        (**self).fix()
    }
}

/// An error made on the spot, or one kept after its source is gone: what is
/// wrong and, when known, how to fix it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// What is wrong, in one line.
    pub what: String,
    /// How to fix it, in one line, when known.
    pub fix: Option<String>,
}

impl Problem {
    /// A problem with its fix.
    pub fn new(what: impl Into<String>, fix: impl Into<String>) -> Self {
        Self { what: what.into(), fix: Some(fix.into()) }
    }

    /// A problem whose fix is not known here.
    pub fn bare(what: impl Into<String>) -> Self {
        Self { what: what.into(), fix: None }
    }

    /// The text and remedy of an error.
    pub fn of(err: &(impl Remedy + ?Sized)) -> Self {
        Self { what: err.to_string(), fix: err.fix() }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.what)
    }
}

impl std::error::Error for Problem {}

impl Remedy for Problem {
    fn fix(&self) -> Option<String> {
        self.fix.clone()
    }
}

/// A failure with its explanation.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Failure {
    /// Kind of failure.
    pub class: FailureClass,
    /// What is wrong, in one line.
    pub what: String,
    /// How to fix it, in one line.
    pub fix: String,
}

impl Failure {
    /// A failure of the given class.
    pub fn new(class: FailureClass, what: impl Into<String>, fix: impl Into<String>) -> Self {
        Self { class, what: what.into(), fix: fix.into() }
    }

    /// A failure from an error: what from its `Display` text, the fix from
    /// its [`Remedy`], or `default_fix` when it knows none.
    pub fn from_error(class: FailureClass, err: &(impl Remedy + ?Sized), default_fix: &str) -> Self {
        Self::new(class, err.to_string(), err.fix().unwrap_or_else(|| default_fix.to_owned()))
    }

    /// A configuration failure from an error; errors that know no remedy
    /// get [`CHECK_FILE`].
    pub fn config(err: impl Remedy) -> Self {
        Self::from_error(FailureClass::Config, &err, CHECK_FILE)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}\n  fix: {}", self.what, self.fix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_stable() {
        let codes: Vec<i32> = [
            FailureClass::Usage,
            FailureClass::Config,
            FailureClass::Network,
            FailureClass::PeerNotTrusted,
            FailureClass::Rejected,
            FailureClass::Protocol,
            FailureClass::DataMismatch,
        ]
        .iter()
        .map(|c| c.exit_code())
        .collect();
        assert_eq!(codes, vec![2, 3, 4, 5, 6, 7, 8]);
    }

    struct Semicolon(Option<&'static str>);

    impl fmt::Display for Semicolon {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a.toml: key `a; b` is unknown")
        }
    }

    impl Remedy for Semicolon {
        fn fix(&self) -> Option<String> {
            self.0.map(str::to_owned)
        }
    }

    #[test]
    fn what_is_the_whole_message_even_with_a_semicolon() {
        let f = Failure::config(Semicolon(Some("remove it")));
        assert_eq!((f.what.as_str(), f.fix.as_str()), ("a.toml: key `a; b` is unknown", "remove it"));
        assert_eq!(f.to_string(), "a.toml: key `a; b` is unknown\n  fix: remove it");
        assert_eq!(Failure::config(Semicolon(None)).fix, CHECK_FILE);
        assert_eq!(Failure::from_error(FailureClass::Network, &Semicolon(None), "retry").fix, "retry");
    }
}
