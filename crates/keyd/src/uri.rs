//! PKCS#11 URIs (RFC 7512), as far as naming a key on a token goes:
//! `pkcs11:token=LABEL;object=LABEL;id=%01%02;type=private`.
use sealtls_failure::Remedy;

use crate::backend::Location;

/// The attributes of a PKCS#11 URI that select a key.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pkcs11Uri {
    /// `token=`: the token label.
    pub token: Option<String>,
    /// `object=`: the object's CKA_LABEL.
    pub object: Option<String>,
    /// `id=`: the object's CKA_ID.
    pub id: Option<Vec<u8>>,
}

/// Why a string is not a usable PKCS#11 URI.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum UriError {
    /// Does not start with `pkcs11:`.
    #[error("a PKCS#11 URI starts with \"pkcs11:\"")]
    Scheme,
    /// A bad percent escape.
    #[error("bad percent-encoding in {0}")]
    Escape(String),
    /// `type=` other than private.
    #[error("type={0} does not name a private key")]
    Type(String),
    /// Names nothing.
    #[error("the URI has neither object= nor id=, so it names no key")]
    NoKey,
}

impl Remedy for UriError {
    fn fix(&self) -> Option<String> {
        match self {
            Self::Type(_) => Some("use type=private or leave it out".into()),
            Self::Scheme | Self::Escape(_) | Self::NoKey => None,
        }
    }
}

fn unescape(value: &str) -> Result<Vec<u8>, UriError> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok()).ok_or_else(|| UriError::Escape(value.into()))?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| UriError::Escape(value.into()))?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(out)
}

fn text(value: &str) -> Result<String, UriError> {
    String::from_utf8(unescape(value)?).map_err(|_| UriError::Escape(value.into()))
}

impl Pkcs11Uri {
    /// Parses the path attributes; query attributes (`?pin-source=...`) and
    /// attributes that do not select a key are ignored.
    pub fn parse(uri: &str) -> Result<Self, UriError> {
        let rest = uri.strip_prefix("pkcs11:").ok_or(UriError::Scheme)?;
        let path = rest.split('?').next().unwrap_or_default();
        let mut parsed = Self::default();
        for attr in path.split(';').filter(|a| !a.is_empty()) {
            let (name, value) = attr.split_once('=').unwrap_or((attr, ""));
            match name {
                "token" => parsed.token = Some(text(value)?),
                "object" => parsed.object = Some(text(value)?),
                "id" => parsed.id = Some(unescape(value)?),
                "type" if value != "private" => return Err(UriError::Type(value.into())),
                _ => {}
            }
        }
        if parsed.object.is_none() && parsed.id.is_none() {
            return Err(UriError::NoKey);
        }
        Ok(parsed)
    }

    /// Whether a key kept at `location` is the one named.
    pub fn matches(&self, location: &Location) -> bool {
        let Location::Token { token, label, id } = location else { return false };
        self.token.as_ref().is_none_or(|t| t == token)
            && self.object.as_ref().is_none_or(|o| o == label)
            && self.id.as_ref().is_none_or(|i| i == id)
    }

    /// The URI naming an object, percent-encoding what needs it.
    pub fn format(token: &str, label: &str, id: &[u8]) -> String {
        let enc = |s: &[u8]| -> String {
            s.iter()
                .map(|&b| if b.is_ascii_alphanumeric() || b"-._~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
                .collect()
        };
        let id: String = id.iter().map(|b| format!("%{b:02X}")).collect();
        format!("pkcs11:token={};object={};id={id};type=private", enc(token.as_bytes()), enc(label.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_rfc7512_examples_and_matches_token_objects() {
        let uri =
            Pkcs11Uri::parse("pkcs11:token=The%20Software%20PKCS%2311%20Softtoken;object=my-key;id=%01%a2;type=private?pin-source=file:/x")
                .unwrap();
        assert_eq!(uri.token.as_deref(), Some("The Software PKCS#11 Softtoken"));
        assert_eq!(uri.object.as_deref(), Some("my-key"));
        assert_eq!(uri.id.as_deref(), Some(&[0x01, 0xa2][..]));
        let here = Location::Token { token: "The Software PKCS#11 Softtoken".into(), label: "my-key".into(), id: vec![1, 0xa2] };
        assert!(uri.matches(&here));
        assert!(!uri.matches(&Location::Token { token: "other".into(), label: "my-key".into(), id: vec![1, 0xa2] }));
        assert!(!uri.matches(&Location::SealedFile("/x".into())));
        assert_eq!(Pkcs11Uri::parse("pkcs11:token=t"), Err(UriError::NoKey));
        assert_eq!(Pkcs11Uri::parse("file:/x"), Err(UriError::Scheme));
        assert_eq!(Pkcs11Uri::parse("pkcs11:object=a;type=cert"), Err(UriError::Type("cert".into())));
        assert!(matches!(Pkcs11Uri::parse("pkcs11:id=%zz"), Err(UriError::Escape(_))));
        let formatted = Pkcs11Uri::format("sealtls token", "*.example.com", &[0xff, 1]);
        assert!(Pkcs11Uri::parse(&formatted).unwrap().matches(&Location::Token {
            token: "sealtls token".into(),
            label: "*.example.com".into(),
            id: vec![0xff, 1]
        }));
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(s in "pkcs11:.{0,80}") {
            let _ = Pkcs11Uri::parse(&s);
        }
    }
}
