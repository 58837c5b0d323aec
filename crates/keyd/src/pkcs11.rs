//! The PKCS#11 backend: private keys live on a token as sensitive,
//! non-extractable objects (CKA_LABEL = domain, CKA_ID = key id) and sign
//! there. Each domain's public key and chain are kept next to it on the
//! token in a data object (CKA_APPLICATION "sealtls chain").
//!
//! ```text
//! data object value: SPKI (u32 len + DER) | certificate count (u16) | each: u32 len + DER
//! ```
use std::path::Path;
use std::sync::{Arc, Mutex};

use aws_lc_rs::digest::{digest, SHA256, SHA384};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType as CkKeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sealtls_custody_proto::{DigestSigning, KeyId, Scheme};
use sealtls_pki::issue::KeyType;
use tracing::warn;
use zeroize::Zeroize;

use crate::backend::{csr_for, Backend, Entry, Location, State};
use crate::error::StoreError;
use crate::keys::{check_chain, checked_digest, Family, KeyInfo, MemoryKey, Sign, SignError};
use crate::record;
use sealtls_custody_proto::der::{self, oid, tag};

const APPLICATION: &[u8] = b"sealtls chain";
/// Signing sessions; signatures on one session are serialized by the token.
const SIGN_SESSIONS: usize = 4;

fn token_error(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Token(format!("{what}: {e}"))
}

/// Sessions on one logged-in token.
struct Sessions {
    admin: Mutex<Session>,
    sign: Vec<Mutex<Session>>,
}

impl Sessions {
    /// A free signing session, else the first one.
    fn signing(&self) -> std::sync::MutexGuard<'_, Session> {
        self.sign.iter().find_map(|s| s.try_lock().ok()).unwrap_or_else(|| self.sign[0].lock().expect("session lock"))
    }
}

/// A PKCS#11 token holding keyd's keys.
pub struct Token {
    label: String,
    sessions: Arc<Sessions>,
}

impl Token {
    /// Loads `module`, finds the token labelled `label` and logs in with `pin`.
    pub fn open(module: &Path, label: &str, pin: &str) -> Result<Self, StoreError> {
        let pkcs11 = Pkcs11::new(module).map_err(|e| token_error(&format!("cannot load the PKCS#11 module {}", module.display()), e))?;
        pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)).map_err(|e| token_error("C_Initialize", e))?;
        let slots = pkcs11.get_slots_with_token().map_err(|e| token_error("listing slots", e))?;
        let mut labels = Vec::new();
        let slot = slots.into_iter().find(|s| {
            let found = pkcs11.get_token_info(*s).map(|i| i.label().trim_end().to_string()).unwrap_or_default();
            labels.push(found.clone());
            found == label
        });
        let slot = slot.ok_or_else(|| StoreError::Token(format!("no token labelled {label:?} (tokens present: {labels:?}); create one with `softhsm2-util --init-token --free --label {label}`")))?;
        let open = || pkcs11.open_rw_session(slot).map_err(|e| token_error("opening a session", e));
        let admin = open()?;
        admin
            .login(UserType::User, Some(&AuthPin::from(pin.to_string())))
            .map_err(|e| token_error(&format!("login to token {label:?} (check the PIN file)"), e))?;
        let sign = (0..SIGN_SESSIONS).map(|_| open().map(Mutex::new)).collect::<Result<_, _>>()?;
        Ok(Self { label: label.to_string(), sessions: Arc::new(Sessions { admin: Mutex::new(admin), sign }) })
    }

    fn location(&self, domain: &str, id: &[u8]) -> Location {
        Location::Token { token: self.label.clone(), label: domain.to_string(), id: id.to_vec() }
    }

    fn find(&self, session: &Session, template: &[Attribute]) -> Result<Vec<ObjectHandle>, StoreError> {
        session.find_objects(template).map_err(|e| token_error("C_FindObjects", e))
    }

    fn chain_objects(&self, session: &Session, domain: Option<&str>) -> Result<Vec<ObjectHandle>, StoreError> {
        let mut t = vec![Attribute::Class(ObjectClass::DATA), Attribute::Application(APPLICATION.to_vec())];
        if let Some(d) = domain {
            t.push(Attribute::Label(d.as_bytes().to_vec()));
        }
        self.find(session, &t)
    }

    fn private_key(&self, session: &Session, domain: &str, id: &[u8]) -> Result<Option<ObjectHandle>, StoreError> {
        let t = [Attribute::Class(ObjectClass::PRIVATE_KEY), Attribute::Label(domain.as_bytes().to_vec()), Attribute::Id(id.to_vec())];
        Ok(self.find(session, &t)?.into_iter().next())
    }

    /// Writes (replacing) the domain's data object.
    fn store_chain(&self, session: &Session, domain: &str, spki: &[u8], chain: &[CertificateDer<'_>]) -> Result<(), StoreError> {
        let mut value = Vec::new();
        record::put_bytes(&mut value, spki);
        record::put_certs(&mut value, chain);
        let old = self.chain_objects(session, Some(domain))?;
        session
            .create_object(&[
                Attribute::Class(ObjectClass::DATA),
                Attribute::Token(true),
                Attribute::Private(false),
                Attribute::Application(APPLICATION.to_vec()),
                Attribute::Label(domain.as_bytes().to_vec()),
                Attribute::Value(value),
            ])
            .map_err(|e| token_error("storing the chain", e))?;
        for h in old {
            let _ = session.destroy_object(h);
        }
        Ok(())
    }

    fn entry(&self, domain: &str, key: KeyInfo, handle: ObjectHandle, chain: Vec<CertificateDer<'static>>) -> Result<Entry, StoreError> {
        let not_after = if chain.is_empty() { None } else { Some(check_chain(domain, &key, &chain)?) };
        let signer = TokenKey { sessions: self.sessions.clone(), handle, family: key.family };
        Ok(Entry {
            domain: domain.into(),
            location: self.location(domain, &key.id.0),
            key,
            chain,
            not_after,
            state: State::Ready(Arc::new(signer)),
        })
    }

    fn load_one(&self, session: &Session, handle: ObjectHandle) -> Option<Entry> {
        let attrs = session.get_attributes(handle, &[AttributeType::Label, AttributeType::Value]).ok()?;
        let (mut domain, mut value) = (String::new(), Vec::new());
        for a in attrs {
            match a {
                Attribute::Label(l) => domain = String::from_utf8_lossy(&l).into_owned(),
                Attribute::Value(v) => value = v,
                _ => {}
            }
        }
        let unavailable = |why: String, key: KeyInfo| {
            warn!(domain = %domain, token = %self.label, "{why}; skipped, other keys are served");
            Some(Entry {
                domain: domain.clone(),
                location: self.location(&domain, &key.id.0),
                key,
                chain: Vec::new(),
                not_after: None,
                state: State::Unavailable(why),
            })
        };
        let Some((spki, chain)) = parse_chain_value(&value) else {
            return unavailable("its chain object on the token does not parse".into(), KeyInfo::unknown(KeyId([0; 32])));
        };
        let key = match KeyInfo::from_spki(spki) {
            Ok(k) => k,
            Err(e) => return unavailable(format!("its public key does not parse: {e}"), KeyInfo::unknown(KeyId([0; 32]))),
        };
        match self.private_key(session, &domain, &key.id.0) {
            Ok(Some(h)) => self.entry(&domain, key, h, chain).ok(),
            _ => unavailable("the token has no private key object for it".into(), key),
        }
    }
}

fn parse_chain_value(v: &[u8]) -> Option<(Vec<u8>, Vec<CertificateDer<'static>>)> {
    let mut fields = record::Fields::new(v);
    let spki = fields.bytes()?.to_vec();
    let chain = fields.certs()?;
    fields.is_done().then_some((spki, chain))
}

/// Attributes every private key gets: on the token, private, sensitive, never extractable, for signing only.
fn private_key_template(domain: &str, id: &[u8]) -> Vec<Attribute> {
    vec![
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(true),
        Attribute::Decrypt(false),
        Attribute::Derive(false),
        Attribute::Label(domain.as_bytes().to_vec()),
        Attribute::Id(id.to_vec()),
    ]
}

/// The token attributes of a private key: its type and secret components.
fn import_template(key: &PrivateKeyDer<'_>) -> Result<Vec<Attribute>, StoreError> {
    let bad = |e: der::DerError| StoreError::invalid(format!("cannot take the private key apart for the token: {e}"));
    let (alg, params, inner) = match key {
        PrivateKeyDer::Pkcs8(k) => {
            let (seq, _) = der::expect(k.secret_pkcs8_der(), tag::SEQUENCE).map_err(bad)?;
            let items = der::items(seq).map_err(bad)?;
            let (alg_seq, key_octets) = match items.as_slice() {
                [_, alg, key, ..] if alg.tag == tag::SEQUENCE && key.tag == tag::OCTET_STRING => (alg.value, key.value),
                _ => return Err(bad(der::DerError("not PKCS#8"))),
            };
            let alg_items = der::items(alg_seq).map_err(bad)?;
            let oid = alg_items.first().filter(|t| t.tag == tag::OID).ok_or(bad(der::DerError("no algorithm")))?.value;
            let params = alg_items.get(1).filter(|t| t.tag == tag::OID).map(|t| t.value);
            (oid, params, key_octets)
        }
        PrivateKeyDer::Sec1(k) => (oid::EC_PUBLIC_KEY, None, k.secret_sec1_der()),
        PrivateKeyDer::Pkcs1(k) => (oid::RSA, None, k.secret_pkcs1_der()),
        _ => return Err(StoreError::invalid("unsupported private key form")),
    };
    let (seq, _) = der::expect(inner, tag::SEQUENCE).map_err(bad)?;
    let items = der::items(seq).map_err(bad)?;
    if alg == oid::EC_PUBLIC_KEY {
        let d = items.get(1).filter(|t| t.tag == tag::OCTET_STRING).ok_or(bad(der::DerError("no EC private value")))?.value;
        // SEC1 carries its curve in [0]; PKCS#8 in the algorithm parameters.
        let curve = match params {
            Some(p) => p,
            None => {
                let tagged = items.iter().find(|t| t.tag == 0xa0).ok_or(bad(der::DerError("no curve")))?;
                der::expect(tagged.value, tag::OID).map_err(bad)?.0
            }
        };
        if curve != oid::P256 && curve != oid::P384 {
            return Err(StoreError::invalid("only P-256 and P-384 EC keys can go on the token"));
        }
        return Ok(vec![
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::KeyType(CkKeyType::EC),
            Attribute::EcParams(der::write(tag::OID, curve)),
            Attribute::Value(d.to_vec()),
        ]);
    }
    if alg == oid::RSA {
        let int = |i: usize| {
            items
                .get(i)
                .filter(|t| t.tag == tag::INTEGER)
                .map(|t| der::unsigned(t.value).to_vec())
                .ok_or(bad(der::DerError("short RSA key")))
        };
        return Ok(vec![
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::KeyType(CkKeyType::RSA),
            Attribute::Modulus(int(1)?),
            Attribute::PublicExponent(int(2)?),
            Attribute::PrivateExponent(int(3)?),
            Attribute::Prime1(int(4)?),
            Attribute::Prime2(int(5)?),
            Attribute::Exponent1(int(6)?),
            Attribute::Exponent2(int(7)?),
            Attribute::Coefficient(int(8)?),
        ]);
    }
    Err(StoreError::invalid("only ECDSA P-256/P-384 and RSA keys can go on the token (Ed25519 stays with the sealed-file backend)"))
}

/// An import template, its secret components zeroized when dropped.
struct SecretTemplate(Vec<Attribute>);

impl Drop for SecretTemplate {
    fn drop(&mut self) {
        for a in &mut self.0 {
            if let Attribute::Value(v)
            | Attribute::PrivateExponent(v)
            | Attribute::Prime1(v)
            | Attribute::Prime2(v)
            | Attribute::Exponent1(v)
            | Attribute::Exponent2(v)
            | Attribute::Coefficient(v) = a
            {
                v.zeroize();
            }
        }
    }
}

/// A key on the token.
struct TokenKey {
    sessions: Arc<Sessions>,
    handle: ObjectHandle,
    family: Family,
}

fn pss(hash: MechanismType, mgf: PkcsMgfType, salt: u64) -> PkcsPssParams {
    PkcsPssParams { hash_alg: hash, mgf, s_len: salt.into() }
}

impl Sign for TokenKey {
    fn sign(&self, scheme: Scheme, message: &[u8]) -> Result<Vec<u8>, SignError> {
        if !self.family.allows(scheme) {
            return Err(SignError::SchemeMismatch { key: format!("{:?}", self.family), scheme });
        }
        let session = self.sessions.signing();
        let failed = |e: cryptoki::error::Error| SignError::Failed(format!("token: {e}"));
        use Scheme as S;
        let (mechanism, data): (Mechanism, Vec<u8>) = match scheme {
            S::EcdsaP256Sha256 => (Mechanism::Ecdsa, digest(&SHA256, message).as_ref().to_vec()),
            S::EcdsaP384Sha384 => (Mechanism::Ecdsa, digest(&SHA384, message).as_ref().to_vec()),
            S::RsaPkcs1Sha256 => (Mechanism::Sha256RsaPkcs, message.to_vec()),
            S::RsaPkcs1Sha384 => (Mechanism::Sha384RsaPkcs, message.to_vec()),
            S::RsaPkcs1Sha512 => (Mechanism::Sha512RsaPkcs, message.to_vec()),
            S::RsaPssSha256 => (Mechanism::Sha256RsaPkcsPss(pss(MechanismType::SHA256, PkcsMgfType::MGF1_SHA256, 32)), message.to_vec()),
            S::RsaPssSha384 => (Mechanism::Sha384RsaPkcsPss(pss(MechanismType::SHA384, PkcsMgfType::MGF1_SHA384, 48)), message.to_vec()),
            S::RsaPssSha512 => (Mechanism::Sha512RsaPkcsPss(pss(MechanismType::SHA512, PkcsMgfType::MGF1_SHA512, 64)), message.to_vec()),
            S::Ed25519 => return Err(SignError::SchemeMismatch { key: "token".into(), scheme }),
        };
        let raw = session.sign(&mechanism, self.handle, &data).map_err(failed)?;
        self.signature_as_tls_sends_it(raw)
    }

    fn sign_digest(&self, how: DigestSigning, input: &[u8]) -> Result<Vec<u8>, SignError> {
        let (hash, digest) = checked_digest(self.family, &format!("{:?}", self.family), how, input)?;
        // The token takes a bare digest, or for PKCS#1 v1.5 a DigestInfo: made
        // here in its one DER form, so that both backends sign the same bytes.
        let digest_info;
        let input = if how == DigestSigning::RsaPkcs1 {
            digest_info = der::write_digest_info(hash, digest);
            &digest_info[..]
        } else {
            digest
        };
        let mechanism = match how {
            DigestSigning::Ecdsa => Mechanism::Ecdsa,
            DigestSigning::RsaPkcs1 => Mechanism::RsaPkcs,
            DigestSigning::RsaPssSha256 => Mechanism::RsaPkcsPss(pss(MechanismType::SHA256, PkcsMgfType::MGF1_SHA256, 32)),
            DigestSigning::RsaPssSha384 => Mechanism::RsaPkcsPss(pss(MechanismType::SHA384, PkcsMgfType::MGF1_SHA384, 48)),
            DigestSigning::RsaPssSha512 => Mechanism::RsaPkcsPss(pss(MechanismType::SHA512, PkcsMgfType::MGF1_SHA512, 64)),
        };
        let raw = self.sessions.signing().sign(&mechanism, self.handle, input).map_err(|e| SignError::Failed(format!("token: {e}")))?;
        self.signature_as_tls_sends_it(raw)
    }

    fn is_slow(&self) -> bool {
        true
    }
}

impl TokenKey {
    /// Tokens return ECDSA signatures as raw `r || s`; TLS and the protocol carry DER.
    fn signature_as_tls_sends_it(&self, raw: Vec<u8>) -> Result<Vec<u8>, SignError> {
        match self.family {
            Family::EcdsaP256 | Family::EcdsaP384 => der::ecdsa_signature(&raw).map_err(|e| SignError::Failed(e.to_string())),
            _ => Ok(raw),
        }
    }
}

/// A freshly generated token key as rcgen needs it to sign a CSR.
struct CsrKey<'a> {
    key: &'a TokenKey,
    raw_public: Vec<u8>,
    algorithm: &'static rcgen::SignatureAlgorithm,
    scheme: Scheme,
}

impl rcgen::PublicKeyData for CsrKey<'_> {
    fn der_bytes(&self) -> &[u8] {
        &self.raw_public
    }
    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.algorithm
    }
}

impl rcgen::SigningKey for CsrKey<'_> {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.key.sign(self.scheme, msg).map_err(|_| rcgen::Error::RemoteKeyError)
    }
}

impl Backend for Token {
    fn describe(&self) -> String {
        format!("PKCS#11 token {:?}", self.label)
    }

    fn kind(&self) -> &'static str {
        "pkcs11"
    }

    fn load(&self) -> Result<Vec<Entry>, StoreError> {
        let session = self.sessions.admin.lock().expect("session lock");
        Ok(self.chain_objects(&session, None)?.into_iter().filter_map(|h| self.load_one(&session, h)).collect())
    }

    fn put(&self, domain: &str, key: &PrivateKeyDer<'_>, chain: &[CertificateDer<'static>]) -> Result<Entry, StoreError> {
        let info = MemoryKey::new(key, domain)?.info().clone();
        check_chain(domain, &info, chain)?;
        let mut template = SecretTemplate(import_template(key)?);
        template.0.extend(private_key_template(domain, &info.id.0));
        let session = self.sessions.admin.lock().expect("session lock");
        let old: Vec<_> =
            self.find(&session, &[Attribute::Class(ObjectClass::PRIVATE_KEY), Attribute::Label(domain.as_bytes().to_vec())])?;
        let handle = session.create_object(&template.0).map_err(|e| token_error("importing the key", e))?;
        drop(template);
        self.store_chain(&session, domain, &info.spki, chain)?;
        for h in old.into_iter().filter(|h| *h != handle) {
            let _ = session.destroy_object(h);
        }
        self.entry(domain, info, handle, chain.to_vec())
    }

    fn put_chain(&self, entry: &Entry, chain: &[CertificateDer<'static>]) -> Result<Entry, StoreError> {
        check_chain(&entry.domain, &entry.key, chain)?;
        let session = self.sessions.admin.lock().expect("session lock");
        let handle =
            self.private_key(&session, &entry.domain, &entry.key.id.0)?.ok_or_else(|| StoreError::NotFound(entry.domain.clone()))?;
        self.store_chain(&session, &entry.domain, &entry.key.spki, chain)?;
        self.entry(&entry.domain, entry.key.clone(), handle, chain.to_vec())
    }

    fn generate(&self, domain: &str, key_type: KeyType) -> Result<(Entry, Vec<u8>), StoreError> {
        let session = self.sessions.admin.lock().expect("session lock");
        let placeholder = [0u8; 32];
        let (mechanism, public_template, curve) = match key_type {
            KeyType::EcdsaP256 => (Mechanism::EccKeyPairGen, vec![Attribute::EcParams(der::write(tag::OID, oid::P256))], Some(oid::P256)),
            KeyType::EcdsaP384 => (Mechanism::EccKeyPairGen, vec![Attribute::EcParams(der::write(tag::OID, oid::P384))], Some(oid::P384)),
            KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096 => {
                let bits: u64 = match key_type {
                    KeyType::Rsa2048 => 2048,
                    KeyType::Rsa3072 => 3072,
                    _ => 4096,
                };
                (Mechanism::RsaPkcsKeyPairGen, vec![Attribute::ModulusBits(bits.into()), Attribute::PublicExponent(vec![1, 0, 1])], None)
            }
            KeyType::Ed25519 => {
                return Err(StoreError::refused(
                    "Ed25519 keys are not generated on the token",
                    "use ecdsa-p256, ecdsa-p384 or rsa2048..rsa4096",
                ))
            }
        };
        let mut public_template = public_template;
        public_template.extend([Attribute::Token(false), Attribute::Verify(true)]);
        let (public, private) = session
            .generate_key_pair(&mechanism, &public_template, &private_key_template(domain, &placeholder))
            .map_err(|e| token_error("generating the key", e))?;
        let (spki, raw_public) = match curve {
            Some(curve) => {
                let point = match session
                    .get_attributes(public, &[AttributeType::EcPoint])
                    .map_err(|e| token_error("reading the public key", e))?
                    .pop()
                {
                    Some(Attribute::EcPoint(p)) => der::expect(&p, tag::OCTET_STRING).map(|(v, _)| v.to_vec()).unwrap_or(p),
                    _ => return Err(StoreError::Token("the token returned no EC point".into())),
                };
                let alg = der::write(tag::SEQUENCE, &[der::write(tag::OID, oid::EC_PUBLIC_KEY), der::write(tag::OID, curve)].concat());
                let mut bits = vec![0u8];
                bits.extend_from_slice(&point);
                (der::write(tag::SEQUENCE, &[alg, der::write(tag::BIT_STRING, &bits)].concat()), point)
            }
            None => {
                let attrs = session
                    .get_attributes(public, &[AttributeType::Modulus, AttributeType::PublicExponent])
                    .map_err(|e| token_error("reading the public key", e))?;
                let (mut n, mut e) = (Vec::new(), Vec::new());
                for a in attrs {
                    match a {
                        Attribute::Modulus(m) => n = m,
                        Attribute::PublicExponent(x) => e = x,
                        _ => {}
                    }
                }
                let rsa_public = der::write(tag::SEQUENCE, &[der::write_unsigned(&n), der::write_unsigned(&e)].concat());
                let alg = der::write(tag::SEQUENCE, &[der::write(tag::OID, oid::RSA), der::write(tag::NULL, &[])].concat());
                let mut bits = vec![0u8];
                bits.extend_from_slice(&rsa_public);
                (der::write(tag::SEQUENCE, &[alg, der::write(tag::BIT_STRING, &bits)].concat()), rsa_public)
            }
        };
        let info = KeyInfo::from_spki(spki)?;
        session.update_attributes(private, &[Attribute::Id(info.id.0.to_vec())]).map_err(|e| token_error("naming the key", e))?;
        let _ = session.destroy_object(public);
        self.store_chain(&session, domain, &info.spki, &[])?;
        drop(session);
        let entry = self.entry(domain, info, private, Vec::new())?;
        let State::Ready(_) = &entry.state else { unreachable!("entry() makes ready entries") };
        let key = TokenKey { sessions: self.sessions.clone(), handle: private, family: entry.key.family };
        let (algorithm, scheme) = match entry.key.family {
            Family::EcdsaP256 => (&rcgen::PKCS_ECDSA_P256_SHA256, Scheme::EcdsaP256Sha256),
            Family::EcdsaP384 => (&rcgen::PKCS_ECDSA_P384_SHA384, Scheme::EcdsaP384Sha384),
            _ => (&rcgen::PKCS_RSA_SHA256, Scheme::RsaPkcs1Sha256),
        };
        let csr = csr_for(domain, &CsrKey { key: &key, raw_public, algorithm, scheme })?;
        Ok((entry, csr))
    }

    fn remove(&self, entry: &Entry) -> Result<(), StoreError> {
        let session = self.sessions.admin.lock().expect("session lock");
        let mut objects = self.chain_objects(&session, Some(&entry.domain))?;
        objects.extend(
            self.find(&session, &[Attribute::Class(ObjectClass::PRIVATE_KEY), Attribute::Label(entry.domain.as_bytes().to_vec())])?,
        );
        for h in objects {
            session.destroy_object(h).map_err(|e| token_error("removing an object", e))?;
        }
        Ok(())
    }
}
