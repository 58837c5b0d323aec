//! TLS 1.2 does not bind an ECDSA signature's hash to the curve (RFC 5246
//! 7.4.1.4.1): a client may offer only `ecdsa_secp384r1_sha384` and still
//! accept a P-256 key signing a SHA-384 digest, as OpenSSL does. rustls's
//! keys sign only their curve's own hash. [`Tls12EcdsaKey`] signs any of
//! SHA-256/384/512 with the curve it has; a server offers it only to TLS 1.2
//! handshakes whose ClientHello needs it ([`needs_other_hash`]).
use std::sync::Arc;

use aws_lc_rs::digest::{self, Digest};
use aws_lc_rs::signature::{EcdsaKeyPair, EcdsaSigningAlgorithm, ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P384_SHA384_ASN1_SIGNING};
use rustls::sign::{CertifiedKey, Signer, SigningKey};
use rustls::{SignatureAlgorithm, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The ECDSA schemes of TLS 1.2, each with its hash.
const SCHEMES: [(SignatureScheme, &digest::Algorithm); 3] = [
    (SignatureScheme::ECDSA_NISTP256_SHA256, &digest::SHA256),
    (SignatureScheme::ECDSA_NISTP384_SHA384, &digest::SHA384),
    (SignatureScheme::ECDSA_NISTP521_SHA512, &digest::SHA512),
];

/// The TLS 1.2 ECDHE_ECDSA cipher suites rustls offers.
const ECDSA_SUITES: [u16; 3] = [0xc02b, 0xc02c, 0xcca9];

/// An ECDSA key (P-256 or P-384) that signs TLS 1.2 handshakes with any of
/// the three hashes.
#[derive(Debug)]
pub struct Tls12EcdsaKey {
    pair: Arc<EcdsaKeyPair>,
    /// The scheme named for the key's own curve and hash.
    native: SignatureScheme,
    /// The hash the key pair was made for; digests are fitted to its length.
    own_hash: &'static digest::Algorithm,
}

impl Tls12EcdsaKey {
    /// The key, if `key` is a P-256 or P-384 ECDSA key (PKCS#8 or SEC1).
    pub fn new(key: &PrivateKeyDer<'_>) -> Option<Self> {
        let curves: [(&'static EcdsaSigningAlgorithm, SignatureScheme, &'static digest::Algorithm); 2] = [
            (&ECDSA_P256_SHA256_ASN1_SIGNING, SignatureScheme::ECDSA_NISTP256_SHA256, &digest::SHA256),
            (&ECDSA_P384_SHA384_ASN1_SIGNING, SignatureScheme::ECDSA_NISTP384_SHA384, &digest::SHA384),
        ];
        curves.into_iter().find_map(|(alg, native, own_hash)| {
            let pair = EcdsaKeyPair::from_private_key_der(alg, key.secret_der()).ok()?;
            Some(Self { pair: Arc::new(pair), native, own_hash })
        })
    }

    /// The scheme a client must offer for rustls's own key to be used.
    pub fn native(&self) -> SignatureScheme {
        self.native
    }
}

impl SigningKey for Tls12EcdsaKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        let chosen = if offered.contains(&self.native) {
            self.native
        } else {
            *offered.iter().find(|s| SCHEMES.iter().any(|(known, _)| known == *s))?
        };
        let hash = SCHEMES.iter().find(|(s, _)| *s == chosen).map(|(_, h)| *h)?;
        Some(Box::new(HashSigner { pair: self.pair.clone(), scheme: chosen, hash, own_hash: self.own_hash }))
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        SignatureAlgorithm::ECDSA
    }
}

#[derive(Debug)]
struct HashSigner {
    pair: Arc<EcdsaKeyPair>,
    scheme: SignatureScheme,
    hash: &'static digest::Algorithm,
    own_hash: &'static digest::Algorithm,
}

impl Signer for HashSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        let digest = digest::digest(self.hash, message);
        let fitted = fit(digest.as_ref(), self.own_hash.output_len);
        let digest = Digest::import_less_safe(&fitted, self.own_hash).map_err(|_| rustls::Error::General("digest length".into()))?;
        let signature = self.pair.sign_digest(&digest).map_err(|_| rustls::Error::General("ECDSA signing failed".into()))?;
        Ok(signature.as_ref().to_vec())
    }

    fn scheme(&self) -> SignatureScheme {
        self.scheme
    }
}

/// ECDSA uses the leftmost bits of a digest longer than the curve's order,
/// and a shorter digest as the integer it is (FIPS 186-5 6.4.1): cutting a
/// long digest, or padding a short one with leading zeros, to the key's own
/// hash length gives the same signature input.
fn fit(digest: &[u8], len: usize) -> Vec<u8> {
    if digest.len() >= len {
        return digest[..len].to_vec();
    }
    let mut out = vec![0u8; len - digest.len()];
    out.extend_from_slice(digest);
    out
}

/// A chain served with a [`Tls12EcdsaKey`], if the key is one.
pub fn tls12_ecdsa_identity(chain: Vec<CertificateDer<'static>>, key: &PrivateKeyDer<'_>) -> Option<Arc<CertifiedKey>> {
    let key = Tls12EcdsaKey::new(key)?;
    Some(Arc::new(CertifiedKey::new(chain, Arc::new(key))))
}

/// Whether a ClientHello can only be served with a [`Tls12EcdsaKey`] over
/// TLS 1.2: it does not offer `native`, offers another ECDSA scheme, and
/// offers an ECDHE_ECDSA suite of TLS 1.2.
pub fn needs_other_hash(native: SignatureScheme, offered_schemes: &[u16], offered_suites: &[u16]) -> bool {
    let offers = |s: SignatureScheme| offered_schemes.contains(&u16::from(s));
    !offers(native) && SCHEMES.iter().any(|(s, _)| offers(*s)) && offered_suites.iter().any(|s| ECDSA_SUITES.contains(s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::signature::{KeyPair, ECDSA_P256_SHA256_ASN1};
    use aws_lc_rs::signature::{UnparsedPublicKey, ECDSA_P256_SHA384_ASN1, ECDSA_P256_SHA512_ASN1, ECDSA_P384_SHA256_ASN1};
    use rustls_pki_types::PrivatePkcs8KeyDer;

    fn key(alg: &'static EcdsaSigningAlgorithm) -> (PrivateKeyDer<'static>, Vec<u8>) {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
        let public = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref()).unwrap().public_key().as_ref().to_vec();
        (PrivatePkcs8KeyDer::from(pkcs8.as_ref().to_vec()).into(), public)
    }

    #[test]
    fn p256_signs_every_hash_and_each_verifies() {
        let (der, public) = key(&ECDSA_P256_SHA256_ASN1_SIGNING);
        let k = Tls12EcdsaKey::new(&der).unwrap();
        for (offered, verify) in [
            (SignatureScheme::ECDSA_NISTP256_SHA256, &ECDSA_P256_SHA256_ASN1),
            (SignatureScheme::ECDSA_NISTP384_SHA384, &ECDSA_P256_SHA384_ASN1),
            (SignatureScheme::ECDSA_NISTP521_SHA512, &ECDSA_P256_SHA512_ASN1),
        ] {
            let signer = k.choose_scheme(&[offered]).unwrap();
            assert_eq!(signer.scheme(), offered);
            let sig = signer.sign(b"server key exchange").unwrap();
            UnparsedPublicKey::new(verify, &public).verify(b"server key exchange", &sig).unwrap();
        }
    }

    #[test]
    fn p384_signs_sha256_and_prefers_its_own_scheme() {
        let (der, public) = key(&ECDSA_P384_SHA384_ASN1_SIGNING);
        let k = Tls12EcdsaKey::new(&der).unwrap();
        let signer = k.choose_scheme(&[SignatureScheme::ECDSA_NISTP256_SHA256]).unwrap();
        let sig = signer.sign(b"m").unwrap();
        UnparsedPublicKey::new(&ECDSA_P384_SHA256_ASN1, &public).verify(b"m", &sig).unwrap();
        let both = [SignatureScheme::ECDSA_NISTP256_SHA256, SignatureScheme::ECDSA_NISTP384_SHA384];
        assert_eq!(k.choose_scheme(&both).unwrap().scheme(), SignatureScheme::ECDSA_NISTP384_SHA384);
        assert!(k.choose_scheme(&[SignatureScheme::RSA_PSS_SHA256]).is_none());
    }

    #[test]
    fn which_hellos_need_it() {
        let p256 = SignatureScheme::ECDSA_NISTP256_SHA256;
        assert!(needs_other_hash(p256, &[0x0503, 0x0603], &[0xc02b]));
        assert!(!needs_other_hash(p256, &[0x0503, 0x0403], &[0xc02b]), "the native scheme is offered");
        assert!(!needs_other_hash(p256, &[0x0503], &[0x1301]), "no TLS 1.2 ECDSA suite");
        assert!(!needs_other_hash(p256, &[0x0804], &[0xc02b]), "no ECDSA scheme at all");
    }

    #[test]
    fn rsa_keys_are_not_taken() {
        let rsa = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
        assert!(Tls12EcdsaKey::new(&PrivatePkcs8KeyDer::from(rsa.serialize_der()).into()).is_none());
    }
}
