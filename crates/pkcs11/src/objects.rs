//! The token's objects: for each key keyd lets this caller use, a private
//! key (which signs through keyd and reveals nothing secret), its public
//! key and its certificate, with the attributes consumers look for.
use cryptoki_sys::*;
use sealtls_custody_proto::der::{self, oid, tag, PublicKeyParts};
use sealtls_custody_proto::{KeyEntry, KeyId};
use x509_parser::prelude::{FromDer, X509Certificate};

/// What kind of key, with the public parts consumers read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum KeyKind {
    /// ECDSA: the curve's OID contents, the uncompressed point, and the size of r and s.
    Ec { curve: Vec<u8>, point: Vec<u8>, half: usize },
    /// RSA: modulus and public exponent, unsigned big-endian.
    Rsa { modulus: Vec<u8>, exponent: Vec<u8> },
    /// Ed25519: the 32-byte public key.
    Ed25519 { point: Vec<u8> },
}

impl KeyKind {
    fn of(spki: &[u8]) -> Option<Self> {
        match der::public_key_parts(spki).ok()? {
            PublicKeyParts::Ec { curve, point } => {
                let half = match curve {
                    oid::P256 => 32,
                    oid::P384 => 48,
                    _ => return None,
                };
                Some(Self::Ec { curve: curve.to_vec(), point: point.to_vec(), half })
            }
            PublicKeyParts::Rsa { modulus, exponent } => Some(Self::Rsa { modulus: modulus.to_vec(), exponent: exponent.to_vec() }),
            PublicKeyParts::Ed25519(point) => Some(Self::Ed25519 { point: point.to_vec() }),
        }
    }

    /// The PKCS#11 key type.
    pub(crate) fn key_type(&self) -> CK_KEY_TYPE {
        match self {
            Self::Ec { .. } => CKK_EC,
            Self::Rsa { .. } => CKK_RSA,
            Self::Ed25519 { .. } => CKK_EC_EDWARDS,
        }
    }

    /// The length of a signature as PKCS#11 returns it.
    pub(crate) fn signature_len(&self) -> usize {
        match self {
            Self::Ec { half, .. } => 2 * half,
            Self::Rsa { modulus, .. } => modulus.len(),
            Self::Ed25519 { .. } => 64,
        }
    }
}

/// One key keyd holds for a domain.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Key {
    /// The installed name: the objects' CKA_LABEL.
    pub(crate) domain: String,
    /// keyd's key id: the objects' CKA_ID.
    pub(crate) key_id: KeyId,
    /// SubjectPublicKeyInfo DER.
    pub(crate) spki: Vec<u8>,
    /// Type and public parts.
    pub(crate) kind: KeyKind,
    /// The leaf certificate, DER.
    pub(crate) cert: Option<Vec<u8>>,
}

impl Key {
    /// The key a KEYS entry describes; `None` for a key type PKCS#11 consumers cannot use here.
    pub(crate) fn from_entry(entry: KeyEntry) -> Option<Self> {
        let kind = KeyKind::of(&entry.spki)?;
        let cert = (!entry.leaf.is_empty()).then_some(entry.leaf);
        Some(Self { domain: entry.domain, key_id: entry.key_id, spki: entry.spki, kind, cert })
    }
}

/// The three kinds of object each key gives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Class {
    PrivateKey,
    PublicKey,
    Certificate,
}

impl Class {
    pub(crate) fn ck(self) -> CK_OBJECT_CLASS {
        match self {
            Self::PrivateKey => CKO_PRIVATE_KEY,
            Self::PublicKey => CKO_PUBLIC_KEY,
            Self::Certificate => CKO_CERTIFICATE,
        }
    }
}

/// An attribute's value as the token holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Value {
    /// The bytes C_GetAttributeValue copies out.
    Bytes(Vec<u8>),
    /// A secret the token never reveals (CKR_ATTRIBUTE_SENSITIVE).
    Sensitive,
}

/// One object: its class, its key and its attributes.
#[derive(Debug)]
pub(crate) struct Object {
    pub(crate) class: Class,
    pub(crate) key: std::sync::Arc<Key>,
    attributes: Vec<(CK_ATTRIBUTE_TYPE, Value)>,
}

fn ulong(v: CK_ULONG) -> Value {
    Value::Bytes(v.to_ne_bytes().to_vec())
}

fn flag(b: bool) -> Value {
    Value::Bytes(vec![if b { CK_TRUE } else { CK_FALSE }])
}

fn bytes(b: &[u8]) -> Value {
    Value::Bytes(b.to_vec())
}

impl Object {
    /// The object of `class` for `key`; `private` sets CKA_PRIVATE (a PIN is configured).
    pub(crate) fn new(class: Class, key: std::sync::Arc<Key>, private: bool) -> Self {
        let mut a = vec![
            (CKA_CLASS, ulong(class.ck())),
            (CKA_TOKEN, flag(true)),
            (CKA_PRIVATE, flag(private && class == Class::PrivateKey)),
            (CKA_MODIFIABLE, flag(false)),
            (CKA_COPYABLE, flag(false)),
            (CKA_DESTROYABLE, flag(false)),
            (CKA_LABEL, bytes(key.domain.as_bytes())),
            (CKA_ID, bytes(&key.key_id.0)),
        ];
        let cert = key.cert.as_deref().and_then(|c| X509Certificate::from_der(c).ok().map(|(_, parsed)| parsed));
        if let Some(cert) = &cert {
            a.push((CKA_SUBJECT, bytes(cert.tbs_certificate.subject.as_raw())));
        }
        match class {
            Class::Certificate => {
                if let (Some(der), Some(cert)) = (&key.cert, &cert) {
                    a.extend([
                        (CKA_CERTIFICATE_TYPE, ulong(CKC_X_509)),
                        (CKA_CERTIFICATE_CATEGORY, ulong(CK_CERTIFICATE_CATEGORY_TOKEN_USER)),
                        (CKA_TRUSTED, flag(false)),
                        (CKA_ISSUER, bytes(cert.tbs_certificate.issuer.as_raw())),
                        (CKA_SERIAL_NUMBER, Value::Bytes(der::write(tag::INTEGER, cert.tbs_certificate.raw_serial()))),
                        (CKA_VALUE, bytes(der)),
                        (CKA_PUBLIC_KEY_INFO, bytes(&key.spki)),
                    ]);
                }
            }
            Class::PrivateKey | Class::PublicKey => {
                let private = class == Class::PrivateKey;
                a.extend([
                    (CKA_KEY_TYPE, ulong(key.kind.key_type())),
                    (CKA_LOCAL, flag(false)),
                    (CKA_DERIVE, flag(false)),
                    (CKA_KEY_GEN_MECHANISM, ulong(CK_UNAVAILABLE_INFORMATION)),
                    (CKA_PUBLIC_KEY_INFO, bytes(&key.spki)),
                    (CKA_SIGN, flag(private)),
                    (CKA_SIGN_RECOVER, flag(false)),
                    (CKA_DECRYPT, flag(false)),
                    (CKA_UNWRAP, flag(false)),
                    (CKA_VERIFY, flag(!private)),
                    (CKA_VERIFY_RECOVER, flag(false)),
                    (CKA_ENCRYPT, flag(false)),
                    (CKA_WRAP, flag(false)),
                ]);
                if private {
                    a.extend([
                        (CKA_SENSITIVE, flag(true)),
                        (CKA_ALWAYS_SENSITIVE, flag(true)),
                        (CKA_EXTRACTABLE, flag(false)),
                        (CKA_NEVER_EXTRACTABLE, flag(true)),
                        (CKA_ALWAYS_AUTHENTICATE, flag(false)),
                        (CKA_WRAP_WITH_TRUSTED, flag(false)),
                    ]);
                } else {
                    a.push((CKA_TRUSTED, flag(false)));
                }
                match &key.kind {
                    KeyKind::Ec { curve, point, .. } => {
                        a.push((CKA_EC_PARAMS, Value::Bytes(der::write(tag::OID, curve))));
                        a.push((CKA_EC_POINT, Value::Bytes(der::write(tag::OCTET_STRING, point))));
                        if private {
                            a.push((CKA_VALUE, Value::Sensitive));
                        }
                    }
                    KeyKind::Ed25519 { point } => {
                        a.push((CKA_EC_PARAMS, Value::Bytes(der::write(tag::OID, oid::ED25519))));
                        a.push((CKA_EC_POINT, Value::Bytes(der::write(tag::OCTET_STRING, point))));
                        if private {
                            a.push((CKA_VALUE, Value::Sensitive));
                        }
                    }
                    KeyKind::Rsa { modulus, exponent } => {
                        a.push((CKA_MODULUS, bytes(modulus)));
                        a.push((CKA_MODULUS_BITS, ulong(modulus_bits(modulus))));
                        a.push((CKA_PUBLIC_EXPONENT, bytes(exponent)));
                        if private {
                            for secret in [CKA_PRIVATE_EXPONENT, CKA_PRIME_1, CKA_PRIME_2, CKA_EXPONENT_1, CKA_EXPONENT_2, CKA_COEFFICIENT]
                            {
                                a.push((secret, Value::Sensitive));
                            }
                        }
                    }
                }
            }
        }
        Self { class, key, attributes: a }
    }

    /// The attribute's value; `None` when the object has no such attribute.
    pub(crate) fn attribute(&self, t: CK_ATTRIBUTE_TYPE) -> Option<&Value> {
        self.attributes.iter().find(|(k, _)| *k == t).map(|(_, v)| v)
    }

    /// Whether every (type, value) of a search template matches; secrets never match.
    pub(crate) fn matches(&self, template: &[(CK_ATTRIBUTE_TYPE, Vec<u8>)]) -> bool {
        template.iter().all(|(t, want)| matches!(self.attribute(*t), Some(Value::Bytes(have)) if have == want))
    }
}

fn modulus_bits(modulus: &[u8]) -> CK_ULONG {
    let n = der::unsigned(modulus);
    match n.first() {
        Some(&top) => (n.len() * 8 - top.leading_zeros() as usize) as CK_ULONG,
        None => 0,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn spki_p256() -> Vec<u8> {
        let point = [&[4u8][..], &[7; 64]].concat();
        let alg = der::write(tag::SEQUENCE, &[der::write(tag::OID, oid::EC_PUBLIC_KEY), der::write(tag::OID, oid::P256)].concat());
        der::write(tag::SEQUENCE, &[alg, der::write(tag::BIT_STRING, &[&[0u8][..], &point].concat())].concat())
    }

    #[test]
    fn private_keys_show_their_public_parts_and_hide_the_rest() {
        let entry = KeyEntry { domain: "www.test.com".into(), key_id: KeyId([9; 32]), spki: spki_p256(), leaf: vec![] };
        let key = Arc::new(Key::from_entry(entry).unwrap());
        assert_eq!(key.kind.signature_len(), 64);
        let private = Object::new(Class::PrivateKey, key.clone(), false);
        assert_eq!(private.attribute(CKA_LABEL), Some(&Value::Bytes(b"www.test.com".to_vec())));
        assert_eq!(private.attribute(CKA_SENSITIVE), Some(&Value::Bytes(vec![CK_TRUE])));
        assert_eq!(private.attribute(CKA_VALUE), Some(&Value::Sensitive));
        assert_eq!(private.attribute(CKA_EC_PARAMS), Some(&Value::Bytes([&[6u8, 8][..], oid::P256].concat())));
        assert!(private.matches(&[(CKA_CLASS, CKO_PRIVATE_KEY.to_ne_bytes().to_vec()), (CKA_ID, vec![9; 32])]));
        assert!(!private.matches(&[(CKA_VALUE, vec![])]), "secrets never match a template");
        assert!(!private.matches(&[(CKA_CLASS, CKO_PUBLIC_KEY.to_ne_bytes().to_vec())]));
        let public = Object::new(Class::PublicKey, key, false);
        assert_eq!(public.attribute(CKA_VALUE), None);
        assert_eq!(public.attribute(CKA_VERIFY), Some(&Value::Bytes(vec![CK_TRUE])));
        assert_eq!(modulus_bits(&[0x01, 0, 0]), 17);
    }
}
