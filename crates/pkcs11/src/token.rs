//! The one slot and its token: objects mirrored from keyd's KEYS, sessions,
//! searches, and signing operations that end in a keyd call. Safe Rust;
//! every failure is the CK_RV the caller gets.
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use aws_lc_rs::digest::{Context, SHA256, SHA384, SHA512};
use cryptoki_sys::*;
use sealtls_custody_proto::der::{self, DigestHash};
use sealtls_custody_proto::{DigestSigning, ErrorCode, KeyId, Request, Response, Scheme, Selector, MAX_BODY};

use crate::config::Config;
use crate::keyd::{Keyd, KeydError};
use crate::objects::{Class, Key, KeyKind, Object};

/// The token's only slot.
pub(crate) const SLOT_ID: CK_SLOT_ID = 1;
/// How long searches use the known objects after keyd failed to list them.
const REFRESH_BACKOFF: Duration = Duration::from_secs(5);
/// The most data one signing operation takes (keyd's frame limit, less room for the header).
const MAX_SIGN_INPUT: usize = MAX_BODY - 4096;

/// The mechanisms the token signs with, and the key type each needs.
pub(crate) const MECHANISMS: [(CK_MECHANISM_TYPE, CK_KEY_TYPE); 13] = [
    (CKM_ECDSA, CKK_EC),
    (CKM_ECDSA_SHA256, CKK_EC),
    (CKM_ECDSA_SHA384, CKK_EC),
    (CKM_ECDSA_SHA512, CKK_EC),
    (CKM_RSA_PKCS, CKK_RSA),
    (CKM_SHA256_RSA_PKCS, CKK_RSA),
    (CKM_SHA384_RSA_PKCS, CKK_RSA),
    (CKM_SHA512_RSA_PKCS, CKK_RSA),
    (CKM_RSA_PKCS_PSS, CKK_RSA),
    (CKM_SHA256_RSA_PKCS_PSS, CKK_RSA),
    (CKM_SHA384_RSA_PKCS_PSS, CKK_RSA),
    (CKM_SHA512_RSA_PKCS_PSS, CKK_RSA),
    (CKM_EDDSA, CKK_EC_EDWARDS),
];

/// A signing mechanism as C_SignInit gave it.
pub(crate) struct MechanismSpec {
    pub(crate) mechanism: CK_MECHANISM_TYPE,
    /// CK_RSA_PKCS_PSS_PARAMS: hash, MGF, salt length.
    pub(crate) pss: Option<(CK_MECHANISM_TYPE, CK_RSA_PKCS_MGF_TYPE, CK_ULONG)>,
    /// CK_EDDSA_PARAMS asked for Ed25519ph or a context, which keyd does not make.
    pub(crate) eddsa_variant: bool,
}

/// What a signing operation does with its input.
enum Input {
    /// Kept whole: a digest, a DigestInfo or an EdDSA message.
    Whole(Vec<u8>),
    /// Hashed as it arrives.
    Hashed(Context),
}

enum Way {
    /// ECDSA over a digest (made here or given).
    Ecdsa,
    /// RSA PKCS#1 v1.5 over a DigestInfo: given whole, or made here around a digest of this hash.
    RsaPkcs1(Option<DigestHash>),
    RsaPss(DigestHash),
    Ed25519,
}

struct SignOp {
    key: Arc<Key>,
    way: Way,
    input: Input,
    /// C_SignUpdate was called: only C_SignFinal may end the operation.
    updated: bool,
}

#[derive(Default)]
struct Session {
    rw: bool,
    find: Option<(Vec<CK_OBJECT_HANDLE>, usize)>,
    sign: Option<SignOp>,
}

#[derive(Default)]
struct State {
    /// Handle `n` is `objects[n - 1]`; handles stay valid for the life of the module.
    objects: Vec<Object>,
    /// Handles of objects keyd still lists.
    present: Vec<bool>,
    by_identity: HashMap<(Class, KeyId, String), CK_OBJECT_HANDLE>,
    loaded: bool,
    /// When asking keyd for KEYS last failed: searches use the known objects for a while
    /// instead of each waiting for keyd again.
    refresh_failed: Option<Instant>,
    sessions: HashMap<CK_SESSION_HANDLE, Session>,
    next_session: CK_SESSION_HANDLE,
    logged_in: bool,
}

/// The token.
pub(crate) struct Token {
    pub(crate) config: Config,
    keyd: Keyd,
    state: Mutex<State>,
}

/// The signature length a caller asked for, or the signature.
pub(crate) enum Signed {
    /// Only the length (a NULL buffer); the operation goes on.
    Length(usize),
    /// The buffer is too small for this length; the operation goes on.
    TooSmall(usize),
    /// The signature; the operation is over.
    Done(Vec<u8>),
}

impl Token {
    pub(crate) fn new(config: Config) -> Result<Self, String> {
        let keyd = Keyd::new(&config)?;
        Ok(Self { config, keyd, state: Mutex::new(State { next_session: 1, ..State::default() }) })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The mechanisms offered: EdDSA only when Ed25519 keys are shown.
    pub(crate) fn mechanisms(&self) -> impl Iterator<Item = &(CK_MECHANISM_TYPE, CK_KEY_TYPE)> {
        MECHANISMS.iter().filter(|(_, k)| *k != CKK_EC_EDWARDS || self.config.ed25519)
    }

    /// Closes keyd connections (C_Finalize).
    pub(crate) fn finalize(&self) {
        self.keyd.close_all();
    }

    fn hides_private(&self, state: &State) -> bool {
        self.config.pin.is_some() && !state.logged_in
    }

    pub(crate) fn open_session(&self, rw: bool) -> CK_SESSION_HANDLE {
        let mut s = self.state();
        let handle = s.next_session;
        s.next_session += 1;
        s.sessions.insert(handle, Session { rw, ..Session::default() });
        handle
    }

    pub(crate) fn close_session(&self, session: CK_SESSION_HANDLE) -> Result<(), CK_RV> {
        let mut s = self.state();
        s.sessions.remove(&session).ok_or(CKR_SESSION_HANDLE_INVALID)?;
        if s.sessions.is_empty() {
            // Closing the last session logs the token out (PKCS#11 2.40, 5.6).
            s.logged_in = false;
        }
        Ok(())
    }

    pub(crate) fn close_all_sessions(&self) {
        let mut s = self.state();
        s.sessions.clear();
        s.logged_in = false;
    }

    /// (state, flags) for C_GetSessionInfo.
    pub(crate) fn session_info(&self, session: CK_SESSION_HANDLE) -> Result<(CK_STATE, CK_FLAGS), CK_RV> {
        let s = self.state();
        let rw = s.sessions.get(&session).ok_or(CKR_SESSION_HANDLE_INVALID)?.rw;
        let state = match (rw, s.logged_in) {
            (false, false) => CKS_RO_PUBLIC_SESSION,
            (false, true) => CKS_RO_USER_FUNCTIONS,
            (true, false) => CKS_RW_PUBLIC_SESSION,
            (true, true) => CKS_RW_USER_FUNCTIONS,
        };
        Ok((state, CKF_SERIAL_SESSION | if rw { CKF_RW_SESSION } else { 0 }))
    }

    /// (sessions, read-write sessions) for C_GetTokenInfo.
    pub(crate) fn session_counts(&self) -> (usize, usize) {
        let s = self.state();
        (s.sessions.len(), s.sessions.values().filter(|x| x.rw).count())
    }

    pub(crate) fn login(&self, session: CK_SESSION_HANDLE, user: CK_USER_TYPE, pin: &[u8]) -> Result<(), CK_RV> {
        let mut s = self.state();
        let signing = s.sessions.get(&session).ok_or(CKR_SESSION_HANDLE_INVALID)?.sign.is_some();
        match user {
            CKU_USER if s.logged_in => return Err(CKR_USER_ALREADY_LOGGED_IN),
            CKU_USER => {}
            // Re-authentication for one operation: no key here needs it, but a consumer may still give it.
            CKU_CONTEXT_SPECIFIC if !signing => return Err(CKR_OPERATION_NOT_INITIALIZED),
            CKU_CONTEXT_SPECIFIC => {}
            _ => return Err(CKR_USER_TYPE_INVALID),
        }
        if let Some(want) = &self.config.pin {
            if aws_lc_rs::constant_time::verify_slices_are_equal(want.as_bytes(), pin).is_err() {
                return Err(CKR_PIN_INCORRECT);
            }
        }
        if user == CKU_USER {
            s.logged_in = true;
        }
        Ok(())
    }

    pub(crate) fn logout(&self, session: CK_SESSION_HANDLE) -> Result<(), CK_RV> {
        let mut s = self.state();
        if !s.sessions.contains_key(&session) {
            return Err(CKR_SESSION_HANDLE_INVALID);
        }
        if !s.logged_in {
            return Err(CKR_USER_NOT_LOGGED_IN);
        }
        s.logged_in = false;
        Ok(())
    }

    /// Mirrors keyd's KEYS into the object table. Without keyd, the objects
    /// already known stay (a consumer that found its key keeps it); with
    /// none known, the search fails with CKR_DEVICE_ERROR.
    fn refresh(&self) -> Result<(), CK_RV> {
        {
            let s = self.state();
            if s.loaded && s.refresh_failed.is_some_and(|t| t.elapsed() < REFRESH_BACKOFF) {
                return Ok(());
            }
        }
        let failed = |rv: CK_RV| {
            let mut s = self.state();
            s.refresh_failed = Some(Instant::now());
            if s.loaded {
                Ok(())
            } else {
                Err(rv)
            }
        };
        let entries = match self.keyd.call(&Request::Keys) {
            Ok(Response::Keys(entries)) => entries,
            Ok(_) => return failed(self.failed("keyd answered KEYS with something else", CKR_DEVICE_ERROR)),
            Err(e) => return failed(self.keyd_failure(&e)),
        };
        let private = self.config.pin.is_some();
        let mut s = self.state();
        let s = &mut *s;
        s.present.iter_mut().for_each(|p| *p = false);
        for entry in entries {
            let Some(key) = Key::from_entry(entry).map(Arc::new) else { continue };
            if matches!(key.kind, KeyKind::Ed25519 { .. }) && !self.config.ed25519 {
                continue;
            }
            let classes: &[Class] = if key.cert.is_some() {
                &[Class::PrivateKey, Class::PublicKey, Class::Certificate]
            } else {
                &[Class::PrivateKey, Class::PublicKey]
            };
            for &class in classes {
                let identity = (class, key.key_id, key.domain.clone());
                let object = Object::new(class, key.clone(), private);
                match s.by_identity.get(&identity) {
                    Some(&h) => {
                        s.objects[h as usize - 1] = object;
                        s.present[h as usize - 1] = true;
                    }
                    None => {
                        s.objects.push(object);
                        s.present.push(true);
                        s.by_identity.insert(identity, s.objects.len() as CK_OBJECT_HANDLE);
                    }
                }
            }
        }
        s.loaded = true;
        s.refresh_failed = None;
        Ok(())
    }

    pub(crate) fn find_init(&self, session: CK_SESSION_HANDLE, template: &[(CK_ATTRIBUTE_TYPE, Vec<u8>)]) -> Result<(), CK_RV> {
        {
            let s = self.state();
            let sess = s.sessions.get(&session).ok_or(CKR_SESSION_HANDLE_INVALID)?;
            if sess.find.is_some() {
                return Err(CKR_OPERATION_ACTIVE);
            }
        }
        self.refresh()?;
        let mut s = self.state();
        let hide = self.hides_private(&s);
        let found: Vec<CK_OBJECT_HANDLE> = s
            .objects
            .iter()
            .enumerate()
            .filter(|(i, o)| s.present[*i] && !(hide && o.class == Class::PrivateKey) && o.matches(template))
            .map(|(i, _)| i as CK_OBJECT_HANDLE + 1)
            .collect();
        let sess = s.sessions.get_mut(&session).ok_or(CKR_SESSION_HANDLE_INVALID)?;
        sess.find = Some((found, 0));
        Ok(())
    }

    pub(crate) fn find(&self, session: CK_SESSION_HANDLE, max: usize) -> Result<Vec<CK_OBJECT_HANDLE>, CK_RV> {
        let mut s = self.state();
        let sess = s.sessions.get_mut(&session).ok_or(CKR_SESSION_HANDLE_INVALID)?;
        let (found, next) = sess.find.as_mut().ok_or(CKR_OPERATION_NOT_INITIALIZED)?;
        let take: Vec<_> = found.iter().skip(*next).take(max).copied().collect();
        *next += take.len();
        Ok(take)
    }

    pub(crate) fn find_final(&self, session: CK_SESSION_HANDLE) -> Result<(), CK_RV> {
        let mut s = self.state();
        let sess = s.sessions.get_mut(&session).ok_or(CKR_SESSION_HANDLE_INVALID)?;
        sess.find.take().map(|_| ()).ok_or(CKR_OPERATION_NOT_INITIALIZED)
    }

    /// Runs `f` on a visible object.
    pub(crate) fn with_object<R>(
        &self,
        session: CK_SESSION_HANDLE,
        handle: CK_OBJECT_HANDLE,
        f: impl FnOnce(&Object) -> R,
    ) -> Result<R, CK_RV> {
        let s = self.state();
        if !s.sessions.contains_key(&session) {
            return Err(CKR_SESSION_HANDLE_INVALID);
        }
        let i = (handle as usize).checked_sub(1).filter(|i| *i < s.objects.len()).ok_or(CKR_OBJECT_HANDLE_INVALID)?;
        let object = &s.objects[i];
        if !s.present[i] || (self.hides_private(&s) && object.class == Class::PrivateKey) {
            return Err(CKR_OBJECT_HANDLE_INVALID);
        }
        Ok(f(object))
    }

    pub(crate) fn sign_init(&self, session: CK_SESSION_HANDLE, spec: Option<MechanismSpec>, handle: CK_OBJECT_HANDLE) -> Result<(), CK_RV> {
        let mut s = self.state();
        let hide = self.hides_private(&s);
        let key = {
            let i = (handle as usize).checked_sub(1).filter(|i| *i < s.objects.len() && s.present[*i]);
            i.map(|i| &s.objects[i]).filter(|o| o.class == Class::PrivateKey).map(|o| o.key.clone())
        };
        let sess = s.sessions.get_mut(&session).ok_or(CKR_SESSION_HANDLE_INVALID)?;
        let Some(spec) = spec else {
            // A NULL mechanism ends the operation (PKCS#11 3.0).
            sess.sign = None;
            return Ok(());
        };
        if sess.sign.is_some() {
            return Err(CKR_OPERATION_ACTIVE);
        }
        if hide {
            return Err(CKR_USER_NOT_LOGGED_IN);
        }
        let key = key.ok_or(CKR_KEY_HANDLE_INVALID)?;
        let (way, input) = operation(&spec, &key.kind)?;
        sess.sign = Some(SignOp { key, way, input, updated: false });
        Ok(())
    }

    pub(crate) fn sign_update(&self, session: CK_SESSION_HANDLE, data: &[u8]) -> Result<(), CK_RV> {
        let mut s = self.state();
        let sess = s.sessions.get_mut(&session).ok_or(CKR_SESSION_HANDLE_INVALID)?;
        let op = sess.sign.as_mut().ok_or(CKR_OPERATION_NOT_INITIALIZED)?;
        op.updated = true;
        match &mut op.input {
            Input::Hashed(ctx) => ctx.update(data),
            Input::Whole(buf) => {
                if buf.len() + data.len() > MAX_SIGN_INPUT {
                    sess.sign = None;
                    return Err(CKR_DATA_LEN_RANGE);
                }
                buf.extend_from_slice(data);
            }
        }
        Ok(())
    }

    /// C_Sign (`data` given) and C_SignFinal (`None`): the length when
    /// `room` is `None`, else the signature, made by keyd.
    pub(crate) fn sign(&self, session: CK_SESSION_HANDLE, data: Option<&[u8]>, room: Option<usize>) -> Result<Signed, CK_RV> {
        let op = {
            let mut s = self.state();
            let sess = s.sessions.get_mut(&session).ok_or(CKR_SESSION_HANDLE_INVALID)?;
            let op = sess.sign.as_ref().ok_or(CKR_OPERATION_NOT_INITIALIZED)?;
            if op.updated && data.is_some() {
                // C_Sign after C_SignUpdate: the operation ends (PKCS#11 2.40, 5.2).
                sess.sign = None;
                return Err(CKR_OPERATION_ACTIVE);
            }
            let len = op.key.kind.signature_len();
            match room {
                None => return Ok(Signed::Length(len)),
                Some(room) if room < len => return Ok(Signed::TooSmall(len)),
                Some(_) => {}
            }
            sess.sign.take().expect("checked above")
        };
        let SignOp { key, way, input, .. } = op;
        let input = match (input, data) {
            (Input::Whole(mut buf), Some(data)) => {
                if data.len() > MAX_SIGN_INPUT {
                    return Err(CKR_DATA_LEN_RANGE);
                }
                buf.extend_from_slice(data);
                buf
            }
            (Input::Hashed(mut ctx), Some(data)) => {
                ctx.update(data);
                ctx.finish().as_ref().to_vec()
            }
            (Input::Whole(buf), None) => buf,
            (Input::Hashed(ctx), None) => ctx.finish().as_ref().to_vec(),
        };
        self.sign_with_keyd(&key, &way, input).map(Signed::Done)
    }

    fn sign_with_keyd(&self, key: &Key, way: &Way, input: Vec<u8>) -> Result<Vec<u8>, CK_RV> {
        let selector = Selector::KeyId(key.key_id);
        let request = match (way, &key.kind) {
            (Way::Ecdsa, KeyKind::Ec { half, .. }) => {
                Request::SignDigest { key: selector, how: DigestSigning::Ecdsa, digest: ecdsa_digest(&input, *half) }
            }
            (Way::RsaPkcs1(Some(hash)), _) => {
                Request::SignDigest { key: selector, how: DigestSigning::RsaPkcs1, digest: der::write_digest_info(*hash, &input) }
            }
            (Way::RsaPkcs1(None), _) => {
                if der::digest_info(&input).is_err() {
                    self.keyd.complain(
                        "rsa-pkcs-input",
                        "CKM_RSA_PKCS input is not a DigestInfo of SHA-256, SHA-384 or SHA-512; keyd signs nothing else with PKCS#1 v1.5",
                    );
                    return Err(CKR_DATA_INVALID);
                }
                Request::SignDigest { key: selector, how: DigestSigning::RsaPkcs1, digest: input }
            }
            (Way::RsaPss(hash), _) => {
                if input.len() != hash.output_len() {
                    return Err(CKR_DATA_LEN_RANGE);
                }
                let how = match hash {
                    DigestHash::Sha256 => DigestSigning::RsaPssSha256,
                    DigestHash::Sha384 => DigestSigning::RsaPssSha384,
                    DigestHash::Sha512 => DigestSigning::RsaPssSha512,
                };
                Request::SignDigest { key: selector, how, digest: input }
            }
            (Way::Ed25519, _) => Request::Sign { key: selector, scheme: Scheme::Ed25519, message: input },
            (Way::Ecdsa, _) => return Err(CKR_KEY_TYPE_INCONSISTENT),
        };
        let signature = match self.keyd.call(&request) {
            Ok(Response::DigestSignature(sig) | Response::Signature(sig)) => sig,
            Ok(_) => return Err(self.failed("keyd answered a signing request with something else", CKR_DEVICE_ERROR)),
            Err(e) => return Err(self.keyd_failure(&e)),
        };
        let signature = match &key.kind {
            KeyKind::Ec { half, .. } => {
                der::ecdsa_raw(&signature, *half).map_err(|e| self.failed(&format!("keyd's ECDSA signature: {e}"), CKR_DEVICE_ERROR))?
            }
            _ => signature,
        };
        if signature.len() != key.kind.signature_len() {
            return Err(self.failed("keyd's signature has the wrong length", CKR_DEVICE_ERROR));
        }
        Ok(signature)
    }

    fn failed(&self, what: &str, rv: CK_RV) -> CK_RV {
        self.keyd.complain(what, what);
        rv
    }

    /// The CK_RV for a keyd failure, with a line on stderr.
    fn keyd_failure(&self, e: &KeydError) -> CK_RV {
        let (kind, rv) = match e {
            KeydError::Unreachable(_) => ("unreachable", CKR_DEVICE_ERROR),
            KeydError::Refused { code, .. } => match code {
                ErrorCode::Forbidden => ("forbidden", CKR_KEY_FUNCTION_NOT_PERMITTED),
                ErrorCode::KeyNotFound => ("key not found", CKR_KEY_HANDLE_INVALID),
                ErrorCode::SchemeMismatch | ErrorCode::UnsupportedScheme => ("mechanism", CKR_MECHANISM_INVALID),
                ErrorCode::KeyUnavailable | ErrorCode::Busy | ErrorCode::SigningFailed => ("device", CKR_DEVICE_ERROR),
                _ => ("failed", CKR_FUNCTION_FAILED),
            },
        };
        let text = e.describe();
        // Refusals are told once per distinct message; unreachability once per period.
        let kind = if kind == "unreachable" { kind.to_string() } else { text.clone() };
        self.keyd.complain(&kind, &text);
        rv
    }
}

fn hash_of(m: CK_MECHANISM_TYPE) -> Option<DigestHash> {
    match m {
        CKM_SHA256 => Some(DigestHash::Sha256),
        CKM_SHA384 => Some(DigestHash::Sha384),
        CKM_SHA512 => Some(DigestHash::Sha512),
        _ => None,
    }
}

fn mgf_of(hash: DigestHash) -> CK_RSA_PKCS_MGF_TYPE {
    match hash {
        DigestHash::Sha256 => CKG_MGF1_SHA256,
        DigestHash::Sha384 => CKG_MGF1_SHA384,
        DigestHash::Sha512 => CKG_MGF1_SHA512,
    }
}

fn context(hash: DigestHash) -> Input {
    let alg = match hash {
        DigestHash::Sha256 => &SHA256,
        DigestHash::Sha384 => &SHA384,
        DigestHash::Sha512 => &SHA512,
    };
    Input::Hashed(Context::new(alg))
}

/// PSS parameters keyd can honour: MGF1 with the same hash, salt as long as the hash.
fn pss_hash(spec: &MechanismSpec, fixed: Option<DigestHash>) -> Result<DigestHash, CK_RV> {
    let (hash_alg, mgf, salt) = spec.pss.ok_or(CKR_MECHANISM_PARAM_INVALID)?;
    let hash = hash_of(hash_alg).ok_or(CKR_MECHANISM_PARAM_INVALID)?;
    if fixed.is_some_and(|f| f != hash) || mgf != mgf_of(hash) || salt as usize != hash.output_len() {
        return Err(CKR_MECHANISM_PARAM_INVALID);
    }
    Ok(hash)
}

/// What a mechanism asks of a key, checked against it.
fn operation(spec: &MechanismSpec, kind: &KeyKind) -> Result<(Way, Input), CK_RV> {
    let needs = MECHANISMS.iter().find(|(m, _)| *m == spec.mechanism).ok_or(CKR_MECHANISM_INVALID)?.1;
    if needs != kind.key_type() {
        return Err(CKR_KEY_TYPE_INCONSISTENT);
    }
    let whole = || Input::Whole(Vec::new());
    Ok(match spec.mechanism {
        CKM_ECDSA => (Way::Ecdsa, whole()),
        CKM_ECDSA_SHA256 => (Way::Ecdsa, context(DigestHash::Sha256)),
        CKM_ECDSA_SHA384 => (Way::Ecdsa, context(DigestHash::Sha384)),
        CKM_ECDSA_SHA512 => (Way::Ecdsa, context(DigestHash::Sha512)),
        CKM_RSA_PKCS => (Way::RsaPkcs1(None), whole()),
        CKM_SHA256_RSA_PKCS | CKM_SHA384_RSA_PKCS | CKM_SHA512_RSA_PKCS => {
            let hash = match spec.mechanism {
                CKM_SHA256_RSA_PKCS => DigestHash::Sha256,
                CKM_SHA384_RSA_PKCS => DigestHash::Sha384,
                _ => DigestHash::Sha512,
            };
            (Way::RsaPkcs1(Some(hash)), context(hash))
        }
        CKM_RSA_PKCS_PSS => (Way::RsaPss(pss_hash(spec, None)?), whole()),
        CKM_SHA256_RSA_PKCS_PSS => (Way::RsaPss(pss_hash(spec, Some(DigestHash::Sha256))?), context(DigestHash::Sha256)),
        CKM_SHA384_RSA_PKCS_PSS => (Way::RsaPss(pss_hash(spec, Some(DigestHash::Sha384))?), context(DigestHash::Sha384)),
        CKM_SHA512_RSA_PKCS_PSS => (Way::RsaPss(pss_hash(spec, Some(DigestHash::Sha512))?), context(DigestHash::Sha512)),
        CKM_EDDSA if spec.eddsa_variant => return Err(CKR_MECHANISM_PARAM_INVALID),
        CKM_EDDSA => (Way::Ed25519, whole()),
        _ => return Err(CKR_MECHANISM_INVALID),
    })
}

/// ECDSA uses the leftmost bits of a digest as long as the curve's order;
/// keyd takes exactly that many bytes, so longer digests are cut and
/// shorter ones padded on the left (the same number either way).
fn ecdsa_digest(digest: &[u8], half: usize) -> Vec<u8> {
    if digest.len() >= half {
        digest[..half].to_vec()
    } else {
        let mut out = vec![0; half - digest.len()];
        out.extend_from_slice(digest);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(mechanism: CK_MECHANISM_TYPE, pss: Option<(CK_MECHANISM_TYPE, CK_RSA_PKCS_MGF_TYPE, CK_ULONG)>) -> MechanismSpec {
        MechanismSpec { mechanism, pss, eddsa_variant: false }
    }

    #[test]
    fn mechanisms_are_checked_against_the_key_and_their_parameters() {
        let ec = KeyKind::Ec { curve: vec![], point: vec![], half: 32 };
        let rsa = KeyKind::Rsa { modulus: vec![0xc0; 256], exponent: vec![1, 0, 1] };
        assert!(matches!(operation(&spec(CKM_ECDSA, None), &ec), Ok((Way::Ecdsa, Input::Whole(_)))));
        assert!(matches!(operation(&spec(CKM_ECDSA, None), &rsa), Err(CKR_KEY_TYPE_INCONSISTENT)));
        assert!(matches!(operation(&spec(CKM_RSA_PKCS_PSS, None), &rsa), Err(CKR_MECHANISM_PARAM_INVALID)));
        let good = Some((CKM_SHA384, CKG_MGF1_SHA384, 48));
        assert!(matches!(operation(&spec(CKM_RSA_PKCS_PSS, good), &rsa), Ok((Way::RsaPss(DigestHash::Sha384), _))));
        assert!(matches!(operation(&spec(CKM_SHA256_RSA_PKCS_PSS, good), &rsa), Err(CKR_MECHANISM_PARAM_INVALID)));
        let short_salt = Some((CKM_SHA256, CKG_MGF1_SHA256, 20));
        assert!(matches!(operation(&spec(CKM_RSA_PKCS_PSS, short_salt), &rsa), Err(CKR_MECHANISM_PARAM_INVALID)));
        assert!(matches!(operation(&spec(CKM_MD5_RSA_PKCS, None), &rsa), Err(CKR_MECHANISM_INVALID)));
        assert!(matches!(operation(&spec(CKM_EC_EDWARDS_KEY_PAIR_GEN, None), &ec), Err(CKR_MECHANISM_INVALID)));
    }

    #[test]
    fn ecdsa_digests_take_the_curves_size() {
        assert_eq!(ecdsa_digest(&[1; 48], 32), vec![1; 32]);
        assert_eq!(ecdsa_digest(&[1; 20], 32), [vec![0; 12], vec![1; 20]].concat());
        assert_eq!(ecdsa_digest(&[2; 32], 32), vec![2; 32]);
    }
}
