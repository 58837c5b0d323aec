//! libsealtls_pkcs11.so driven through the cryptoki crate, call by call:
//! what the PKCS#11 spec asks of attributes, signing and login, and the
//! return codes for a removed key, an absent keyd and a wrong PIN. One test
//! in its own binary: the module is loaded into this process, and its
//! settings come from this process's environment. Where cryptoki hides a
//! convention (a buffer too small, objects found one at a time), the test
//! calls the module's function list itself.
#![allow(unsafe_code)]
mod common;

use std::path::PathBuf;
use std::sync::Arc;

use aws_lc_rs::digest::{digest, SHA256};
use aws_lc_rs::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_FIXED, RSA_PSS_2048_8192_SHA256};
use common::custody::{key, keyd, put};
use common::{run, sealtls, text};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeInfo, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;

fn ok(args: &[&str]) {
    let o = run(sealtls().args(args));
    assert!(o.status.success(), "{args:?}: {}", text(&o));
}

fn module() -> PathBuf {
    common::pkcs11_module()
}

/// The module, initialized with the settings in this process's environment.
fn load() -> Pkcs11 {
    let pkcs11 = Pkcs11::new(module()).unwrap();
    pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)).unwrap();
    pkcs11
}

fn private_key(session: &Session, label: &str) -> Option<ObjectHandle> {
    let found = session.find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY), Attribute::Label(label.into())]).unwrap();
    assert!(found.len() <= 1, "{label}: {found:?}");
    found.first().copied()
}

fn rv(e: Error) -> RvError {
    match e {
        Error::Pkcs11(rv, _) => rv,
        other => panic!("expected a PKCS#11 return code, got {other}"),
    }
}

fn pss_sha256() -> Mechanism<'static> {
    Mechanism::RsaPkcsPss(PkcsPssParams { hash_alg: MechanismType::SHA256, mgf: PkcsMgfType::MGF1_SHA256, s_len: 32.into() })
}

#[test]
fn the_module_keeps_pkcs11s_conventions() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let pki = d.join("pki");
    ok(&["pki", "init", "--dir", pki.to_str().unwrap()]);
    ok(&["pki", "issue", "server", "--dir", pki.to_str().unwrap(), "--name", "www.test.com"]);
    ok(&["pki", "issue", "server", "--dir", pki.to_str().unwrap(), "--name", "rsa.test.com", "--key-type", "rsa2048"]);
    let start_keyd = || keyd(&d.join("keyd"), &d.join("device.key"), &[]);
    let kd = start_keyd();
    put(&kd.addr, &pki, "www.test.com");
    put(&kd.addr, &pki, "rsa.test.com");
    std::env::remove_var("SEALTLS_PKCS11_CONF");
    std::env::set_var("SEALTLS_PKCS11_KEYD", format!("unix:{}", kd.addr));

    let pkcs11 = load();
    assert_eq!(pkcs11.get_library_info().unwrap().manufacturer_id(), "sealtls");
    let slots = pkcs11.get_slots_with_token().unwrap();
    assert_eq!(slots.len(), 1);
    let info = pkcs11.get_token_info(slots[0]).unwrap();
    assert!(info.label() == "sealtls" && info.token_initialized() && !info.login_required());
    assert!(matches!(
        pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)).map_err(rv),
        Err(RvError::CryptokiAlreadyInitialized)
    ));
    let session = pkcs11.open_ro_session(slots[0]).unwrap();

    // Attributes: sizes on request, secrets refused, unknown types said so.
    let ec = private_key(&session, "www.test.com").expect("the ECDSA key is listed");
    let infos =
        session.get_attribute_info(ec, &[AttributeType::Label, AttributeType::Value, AttributeType::Id, AttributeType::Modulus]).unwrap();
    assert!(
        matches!(
            infos[..],
            [AttributeInfo::Available(12), AttributeInfo::Sensitive, AttributeInfo::Available(32), AttributeInfo::TypeInvalid]
        ),
        "{infos:?}"
    );
    let attrs = session.get_attributes(ec, &[AttributeType::KeyType, AttributeType::Sensitive, AttributeType::Extractable]).unwrap();
    assert!(
        attrs.contains(&Attribute::KeyType(KeyType::EC))
            && attrs.contains(&Attribute::Sensitive(true))
            && attrs.contains(&Attribute::Extractable(false))
    );
    let certs = session.find_objects(&[Attribute::Class(ObjectClass::CERTIFICATE), Attribute::Label("www.test.com".into())]).unwrap();
    let der = match session.get_attributes(certs[0], &[AttributeType::Value]).unwrap().pop() {
        Some(Attribute::Value(v)) => v,
        other => panic!("certificate value: {other:?}"),
    };
    let leaf = sealtls_pki::load_certs(&pki.join("www.test.com.pem")).unwrap();
    assert_eq!(der, leaf[0].as_ref(), "the certificate object holds the leaf keyd has");

    // Signing: raw r || s for ECDSA, from several threads at once, each with its own session.
    let message = b"signed through keyd";
    let hash = digest(&SHA256, message);
    let sig = session.sign(&Mechanism::Ecdsa, ec, hash.as_ref()).unwrap();
    assert_eq!(sig.len(), 64);
    let ec_point = match session.get_attributes(ec, &[AttributeType::EcPoint]).unwrap().pop() {
        Some(Attribute::EcPoint(p)) => p[2..].to_vec(),
        other => panic!("EC point: {other:?}"),
    };
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &ec_point).verify(message, &sig).unwrap();
    let pkcs11 = Arc::new(pkcs11);
    let threads: Vec<_> = (0..4)
        .map(|i| {
            let (pkcs11, slot, point) = (pkcs11.clone(), slots[0], ec_point.clone());
            std::thread::spawn(move || {
                let session = pkcs11.open_ro_session(slot).unwrap();
                let key = private_key(&session, "www.test.com").unwrap();
                for n in 0..25 {
                    let m = format!("thread {i} message {n}");
                    let sig = session.sign(&Mechanism::EcdsaSha256, key, m.as_bytes()).unwrap();
                    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &point).verify(m.as_bytes(), &sig).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let rsa = private_key(&session, "rsa.test.com").expect("the RSA key is listed");
    let (modulus, exponent) = match &session.get_attributes(rsa, &[AttributeType::Modulus, AttributeType::PublicExponent]).unwrap()[..] {
        [Attribute::Modulus(n), Attribute::PublicExponent(e)] => (n.clone(), e.clone()),
        other => panic!("RSA public parts: {other:?}"),
    };
    let sig = session.sign(&pss_sha256(), rsa, hash.as_ref()).unwrap();
    let rsa_public = aws_lc_rs::signature::RsaPublicKeyComponents { n: &modulus, e: &exponent };
    rsa_public.verify(&RSA_PSS_2048_8192_SHA256, message, &sig).unwrap();
    // Parameters keyd cannot honour are refused before anything is signed.
    let short_salt =
        Mechanism::RsaPkcsPss(PkcsPssParams { hash_alg: MechanismType::SHA256, mgf: PkcsMgfType::MGF1_SHA256, s_len: 20.into() });
    assert_eq!(session.sign(&short_salt, rsa, hash.as_ref()).map_err(rv).unwrap_err(), RvError::MechanismParamInvalid);
    assert_eq!(session.sign(&Mechanism::Ecdsa, rsa, hash.as_ref()).map_err(rv).unwrap_err(), RvError::KeyTypeInconsistent);

    // Multi-part signing.
    session.sign_init(&Mechanism::EcdsaSha256, ec).unwrap();
    session.sign_update(b"signed through ").unwrap();
    session.sign_update(b"keyd").unwrap();
    let sig = session.sign_final().unwrap();
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &ec_point).verify(message, &sig).unwrap();
    // Re-authentication outside an operation is refused.
    assert_eq!(session.login(UserType::ContextSpecific, None).map_err(rv).unwrap_err(), RvError::OperationNotInitialized);
    raw_conventions(ec);

    // keyd gone: CKR_DEVICE_ERROR; back: the same handles sign again.
    drop(kd);
    assert_eq!(session.sign(&pss_sha256(), rsa, hash.as_ref()).map_err(rv).unwrap_err(), RvError::DeviceError);
    let kd = start_keyd();
    assert_eq!(session.sign(&pss_sha256(), rsa, hash.as_ref()).unwrap().len(), 256);

    // A key removed from keyd: its handle signs no more.
    let o = key(&kd.addr, &["rm", "www.test.com"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(session.sign(&Mechanism::Ecdsa, ec, hash.as_ref()).map_err(rv).unwrap_err(), RvError::KeyHandleInvalid);
    assert_eq!(private_key(&session, "www.test.com"), None, "a search no longer finds it");
    drop(session);
    let Ok(pkcs11) = Arc::try_unwrap(pkcs11) else { panic!("a signing thread still holds the module") };
    pkcs11.finalize().unwrap();

    // With a PIN configured: login required, private keys hidden until it, a wrong PIN refused.
    std::env::set_var("SEALTLS_PKCS11_PIN", "4321");
    let pkcs11 = load();
    let slot = pkcs11.get_slots_with_token().unwrap()[0];
    assert!(pkcs11.get_token_info(slot).unwrap().login_required());
    let session = pkcs11.open_ro_session(slot).unwrap();
    assert_eq!(private_key(&session, "rsa.test.com"), None);
    assert_eq!(session.login(UserType::User, Some(&AuthPin::from("1234".to_string()))).map_err(rv).unwrap_err(), RvError::PinIncorrect);
    session.login(UserType::User, Some(&AuthPin::from("4321".to_string()))).unwrap();
    let rsa = private_key(&session, "rsa.test.com").expect("visible after login");
    assert_eq!(session.sign(&pss_sha256(), rsa, hash.as_ref()).unwrap().len(), 256);
    drop(session);
    pkcs11.finalize().unwrap();
    std::env::remove_var("SEALTLS_PKCS11_PIN");
    drop(kd);
}

/// What cryptoki's safe API does not let a caller do wrong: buffers too
/// small for an attribute and for a signature, and a search read one
/// object at a time, through the module's own function list.
fn raw_conventions(ec: ObjectHandle) {
    use cryptoki_sys::*;
    let lib = unsafe { cryptoki_sys::Pkcs11::new(module()) }.unwrap();
    let mut list: *mut CK_FUNCTION_LIST = std::ptr::null_mut();
    assert_eq!(unsafe { lib.C_GetFunctionList(&mut list) }, CKR_OK);
    let f = unsafe { &*list };
    let mut session: CK_SESSION_HANDLE = 0;
    assert_eq!(unsafe { f.C_OpenSession.unwrap()(1, CKF_SERIAL_SESSION, std::ptr::null_mut(), None, &mut session) }, CKR_OK);

    let mut class = CKO_PRIVATE_KEY;
    let mut template = [CK_ATTRIBUTE { type_: CKA_CLASS, pValue: (&mut class as *mut CK_ULONG).cast(), ulValueLen: 8 }];
    assert_eq!(unsafe { f.C_FindObjectsInit.unwrap()(session, template.as_mut_ptr(), 1) }, CKR_OK);
    let mut found = Vec::new();
    loop {
        let (mut handle, mut count) = (0, 0);
        assert_eq!(unsafe { f.C_FindObjects.unwrap()(session, &mut handle, 1, &mut count) }, CKR_OK);
        if count == 0 {
            break;
        }
        found.push(handle);
    }
    assert_eq!(unsafe { f.C_FindObjectsFinal.unwrap()(session) }, CKR_OK);
    assert_eq!(found.len(), 2, "www.test.com and rsa.test.com, one per call: {found:?}");
    let handle = ec.handle();

    let mut small = [0u8; 4];
    let mut label = [CK_ATTRIBUTE { type_: CKA_LABEL, pValue: small.as_mut_ptr().cast(), ulValueLen: 4 }];
    assert_eq!(unsafe { f.C_GetAttributeValue.unwrap()(session, handle, label.as_mut_ptr(), 1) }, CKR_BUFFER_TOO_SMALL);
    assert_eq!(label[0].ulValueLen, CK_UNAVAILABLE_INFORMATION);

    let mut mechanism = CK_MECHANISM { mechanism: CKM_ECDSA, pParameter: std::ptr::null_mut(), ulParameterLen: 0 };
    assert_eq!(unsafe { f.C_SignInit.unwrap()(session, &mut mechanism, handle) }, CKR_OK);
    let mut digest = [7u8; 32];
    let mut signature = [0u8; 64];
    let mut len: CK_ULONG = 10;
    let mut sign = |len: &mut CK_ULONG, out: *mut u8| unsafe { f.C_Sign.unwrap()(session, digest.as_mut_ptr(), 32, out, len) };
    assert_eq!(sign(&mut len, signature.as_mut_ptr()), CKR_BUFFER_TOO_SMALL);
    assert_eq!(len, 64, "the length needed");
    assert_eq!(sign(&mut len, signature.as_mut_ptr()), CKR_OK, "the operation went on after CKR_BUFFER_TOO_SMALL");
    assert_ne!(signature, [0u8; 64]);
    assert_eq!(sign(&mut len, signature.as_mut_ptr()), CKR_OPERATION_NOT_INITIALIZED, "and ended with the signature");

    // C_Sign may not end a multi-part operation; it ends it with an error.
    let mut mechanism = CK_MECHANISM { mechanism: CKM_ECDSA_SHA256, pParameter: std::ptr::null_mut(), ulParameterLen: 0 };
    assert_eq!(unsafe { f.C_SignInit.unwrap()(session, &mut mechanism, handle) }, CKR_OK);
    let mut part = *b"part";
    assert_eq!(unsafe { f.C_SignUpdate.unwrap()(session, part.as_mut_ptr(), 4) }, CKR_OK);
    assert_eq!(sign(&mut len, signature.as_mut_ptr()), CKR_OPERATION_ACTIVE);
    assert_eq!(unsafe { f.C_SignUpdate.unwrap()(session, part.as_mut_ptr(), 4) }, CKR_OPERATION_NOT_INITIALIZED);
    assert_eq!(unsafe { f.C_CloseSession.unwrap()(session) }, CKR_OK);
}
