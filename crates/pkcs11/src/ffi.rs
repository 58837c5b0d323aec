//! The C boundary: every function of the PKCS#11 2.40 list. Each one
//! checks its pointers, hands safe values to [`Token`], and catches panics
//! so that none reaches the host process. The only unsafe code of sealtls
//! outside the binary lives here.
use std::os::raw::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, RwLock};

use cryptoki_sys::*;

use crate::config::Config;
use crate::objects::Value;
use crate::token::{MechanismSpec, Signed, Token, SLOT_ID};

/// The token between C_Initialize and C_Finalize, and the process that initialized it.
static TOKEN: RwLock<Option<(Arc<Token>, u32)>> = RwLock::new(None);

const VERSION: CK_VERSION = CK_VERSION { major: 0, minor: 1 };
const CRYPTOKI_VERSION: CK_VERSION = CK_VERSION { major: 2, minor: 40 };

fn token() -> Result<Arc<Token>, CK_RV> {
    TOKEN.read().unwrap_or_else(|e| e.into_inner()).as_ref().map(|(t, _)| t.clone()).ok_or(CKR_CRYPTOKI_NOT_INITIALIZED)
}

/// Runs `f`, turning a panic into CKR_GENERAL_ERROR.
fn guard(f: impl FnOnce() -> Result<(), CK_RV>) -> CK_RV {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => CKR_OK,
        Ok(Err(rv)) => rv,
        Err(_) => CKR_GENERAL_ERROR,
    }
}

/// `text` in a blank-padded fixed-size field, cut at a character boundary.
fn padded<const N: usize>(text: &str) -> [u8; N] {
    let mut out = [b' '; N];
    let mut end = text.len().min(N);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    out[..end].copy_from_slice(&text.as_bytes()[..end]);
    out
}

/// # Safety
/// `p` is null or valid for writes of `T`.
unsafe fn out<'a, T>(p: *mut T) -> Result<&'a mut T, CK_RV> {
    p.as_mut().ok_or(CKR_ARGUMENTS_BAD)
}

/// `n` items of `T` as a slice length, if such a slice can exist (at most `isize::MAX` bytes).
fn slice_len<T>(n: CK_ULONG) -> Result<usize, CK_RV> {
    let n = usize::try_from(n).map_err(|_| CKR_ARGUMENTS_BAD)?;
    match n.checked_mul(std::mem::size_of::<T>().max(1)) {
        Some(bytes) if bytes <= isize::MAX as usize => Ok(n),
        _ => Err(CKR_ARGUMENTS_BAD),
    }
}

/// # Safety
/// `p` is null or valid for reads of `len` items.
unsafe fn slice<'a, T>(p: *const T, len: CK_ULONG) -> Result<&'a [T], CK_RV> {
    let len = slice_len::<T>(len)?;
    if len == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(CKR_ARGUMENTS_BAD);
    }
    Ok(std::slice::from_raw_parts(p, len))
}

/// # Safety
/// `p` is null or valid for reads and writes of `len` items.
unsafe fn slice_mut<'a, T>(p: *mut T, len: CK_ULONG) -> Result<&'a mut [T], CK_RV> {
    let len = slice_len::<T>(len)?;
    if len == 0 {
        return Ok(&mut []);
    }
    if p.is_null() {
        return Err(CKR_ARGUMENTS_BAD);
    }
    Ok(std::slice::from_raw_parts_mut(p, len))
}

/// # Safety
/// `p` is null or valid for reads of `len` bytes.
unsafe fn bytes<'a>(p: *const u8, len: CK_ULONG) -> Result<&'a [u8], CK_RV> {
    slice(p, len)
}

/// Copies `items` out with PKCS#11's two-call convention: a NULL list asks
/// for the count, a short one gets CKR_BUFFER_TOO_SMALL and the count.
///
/// # Safety
/// `list` is null or valid for writes of `*count` items; `count` is valid.
unsafe fn list_out<T: Copy>(items: &[T], list: *mut T, count: *mut CK_ULONG) -> Result<(), CK_RV> {
    let count = out(count)?;
    if list.is_null() {
        *count = items.len() as CK_ULONG;
        return Ok(());
    }
    if (*count as usize) < items.len() {
        *count = items.len() as CK_ULONG;
        return Err(CKR_BUFFER_TOO_SMALL);
    }
    std::ptr::copy_nonoverlapping(items.as_ptr(), list, items.len());
    *count = items.len() as CK_ULONG;
    Ok(())
}

fn check_slot(slot: CK_SLOT_ID) -> Result<(), CK_RV> {
    if slot == SLOT_ID {
        Ok(())
    } else {
        Err(CKR_SLOT_ID_INVALID)
    }
}

/// # Safety
/// `args` is null or a valid CK_C_INITIALIZE_ARGS.
unsafe extern "C" fn C_Initialize(args: *mut c_void) -> CK_RV {
    guard(|| {
        if let Some(args) = (args as *const CK_C_INITIALIZE_ARGS).as_ref() {
            if !args.pReserved.is_null() {
                return Err(CKR_ARGUMENTS_BAD);
            }
            let given = [args.CreateMutex.is_some(), args.DestroyMutex.is_some(), args.LockMutex.is_some(), args.UnlockMutex.is_some()];
            if given.iter().any(|g| *g != given[0]) {
                return Err(CKR_ARGUMENTS_BAD);
            }
            // The module locks with the OS's primitives only: an application
            // that gives its own and does not allow those cannot have it.
            if given[0] && args.flags & CKF_OS_LOCKING_OK == 0 {
                return Err(CKR_CANT_LOCK);
            }
        }
        let mut slot = TOKEN.write().unwrap_or_else(|e| e.into_inner());
        if let Some((_, pid)) = slot.as_mut() {
            if *pid == std::process::id() {
                return Err(CKR_CRYPTOKI_ALREADY_INITIALIZED);
            }
            // A forked child initializing again keeps its parent's objects and
            // sessions; its keyd connections are its own from its first call.
            *pid = std::process::id();
            return Ok(());
        }
        let complain = |e: String| {
            eprintln!("sealtls-pkcs11[{}]: {e}", std::process::id());
            CKR_GENERAL_ERROR
        };
        let config = Config::load(|k| std::env::var(k).ok()).map_err(|e| complain(e.to_string()))?;
        let token = Token::new(config).map_err(complain)?;
        *slot = Some((Arc::new(token), std::process::id()));
        Ok(())
    })
}

unsafe extern "C" fn C_Finalize(reserved: *mut c_void) -> CK_RV {
    guard(|| {
        if !reserved.is_null() {
            return Err(CKR_ARGUMENTS_BAD);
        }
        let (token, _) = TOKEN.write().unwrap_or_else(|e| e.into_inner()).take().ok_or(CKR_CRYPTOKI_NOT_INITIALIZED)?;
        token.finalize();
        Ok(())
    })
}

unsafe extern "C" fn C_GetInfo(info: *mut CK_INFO) -> CK_RV {
    guard(|| {
        token()?;
        *out(info)? = CK_INFO {
            cryptokiVersion: CRYPTOKI_VERSION,
            manufacturerID: padded("sealtls"),
            flags: 0,
            libraryDescription: padded("sealtls keyd PKCS#11 module"),
            libraryVersion: VERSION,
        };
        Ok(())
    })
}

/// The function list consumers find with C_GetFunctionList.
#[no_mangle]
pub unsafe extern "C" fn C_GetFunctionList(list: *mut *mut CK_FUNCTION_LIST) -> CK_RV {
    guard(|| {
        *out(list)? = std::ptr::addr_of!(FUNCTION_LIST) as *mut CK_FUNCTION_LIST;
        Ok(())
    })
}

struct Interface(CK_INTERFACE);
// SAFETY: the interface points at static, never-written data.
unsafe impl Sync for Interface {}

static INTERFACE_NAME: &[u8] = b"PKCS 11\0";
static INTERFACE: Interface = Interface(CK_INTERFACE {
    pInterfaceName: INTERFACE_NAME.as_ptr() as *mut CK_UTF8CHAR,
    pFunctionList: std::ptr::addr_of!(FUNCTION_LIST) as *mut c_void,
    flags: 0,
});

/// PKCS#11 3.0 discovery: one interface, "PKCS 11" version 2.40.
#[no_mangle]
pub unsafe extern "C" fn C_GetInterfaceList(list: *mut CK_INTERFACE, count: *mut CK_ULONG) -> CK_RV {
    guard(|| list_out(std::slice::from_ref(&INTERFACE.0), list, count))
}

/// PKCS#11 3.0 discovery of the 2.40 function list by name and version.
#[no_mangle]
pub unsafe extern "C" fn C_GetInterface(
    name: *mut CK_UTF8CHAR,
    version: *mut CK_VERSION,
    interface: *mut *mut CK_INTERFACE,
    flags: CK_FLAGS,
) -> CK_RV {
    guard(|| {
        let interface = out(interface)?;
        // The one interface has no flags (it is not CKF_INTERFACE_FORK_SAFE).
        if flags & !INTERFACE.0.flags != 0 {
            return Err(CKR_ARGUMENTS_BAD);
        }
        if !name.is_null() && std::ffi::CStr::from_ptr(name as *const std::os::raw::c_char).to_bytes_with_nul() != INTERFACE_NAME {
            return Err(CKR_ARGUMENTS_BAD);
        }
        if let Some(v) = version.as_ref() {
            if (v.major, v.minor) != (CRYPTOKI_VERSION.major, CRYPTOKI_VERSION.minor) {
                return Err(CKR_ARGUMENTS_BAD);
            }
        }
        *interface = std::ptr::addr_of!(INTERFACE.0) as *mut CK_INTERFACE;
        Ok(())
    })
}

unsafe extern "C" fn C_GetSlotList(_token_present: CK_BBOOL, list: *mut CK_SLOT_ID, count: *mut CK_ULONG) -> CK_RV {
    guard(|| {
        token()?;
        list_out(&[SLOT_ID], list, count)
    })
}

unsafe extern "C" fn C_GetSlotInfo(slot: CK_SLOT_ID, info: *mut CK_SLOT_INFO) -> CK_RV {
    guard(|| {
        let token = token()?;
        check_slot(slot)?;
        *out(info)? = CK_SLOT_INFO {
            slotDescription: padded(&format!("sealtls keyd {}", token.config.keyd)),
            manufacturerID: padded("sealtls"),
            flags: CKF_TOKEN_PRESENT,
            hardwareVersion: VERSION,
            firmwareVersion: VERSION,
        };
        Ok(())
    })
}

unsafe extern "C" fn C_GetTokenInfo(slot: CK_SLOT_ID, info: *mut CK_TOKEN_INFO) -> CK_RV {
    guard(|| {
        let token = token()?;
        check_slot(slot)?;
        let (sessions, rw) = token.session_counts();
        let login = if token.config.pin.is_some() { CKF_LOGIN_REQUIRED } else { 0 };
        // A stable serial per keyd, so that consumers tell two modules' tokens apart.
        let serial = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.config.keyd.as_bytes());
        let serial: String = serial.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect();
        *out(info)? = CK_TOKEN_INFO {
            label: padded(&token.config.token_label),
            manufacturerID: padded("sealtls"),
            model: padded("keyd"),
            serialNumber: padded(&serial),
            flags: CKF_TOKEN_INITIALIZED | CKF_USER_PIN_INITIALIZED | CKF_RNG | login,
            ulMaxSessionCount: CK_EFFECTIVELY_INFINITE,
            ulSessionCount: sessions as CK_ULONG,
            ulMaxRwSessionCount: CK_EFFECTIVELY_INFINITE,
            ulRwSessionCount: rw as CK_ULONG,
            ulMaxPinLen: 256,
            ulMinPinLen: 0,
            ulTotalPublicMemory: CK_UNAVAILABLE_INFORMATION,
            ulFreePublicMemory: CK_UNAVAILABLE_INFORMATION,
            ulTotalPrivateMemory: CK_UNAVAILABLE_INFORMATION,
            ulFreePrivateMemory: CK_UNAVAILABLE_INFORMATION,
            hardwareVersion: VERSION,
            firmwareVersion: VERSION,
            utcTime: [b' '; 16],
        };
        Ok(())
    })
}

unsafe extern "C" fn C_GetMechanismList(slot: CK_SLOT_ID, list: *mut CK_MECHANISM_TYPE, count: *mut CK_ULONG) -> CK_RV {
    guard(|| {
        let token = token()?;
        check_slot(slot)?;
        let all: Vec<CK_MECHANISM_TYPE> = token.mechanisms().map(|(m, _)| *m).collect();
        list_out(&all, list, count)
    })
}

unsafe extern "C" fn C_GetMechanismInfo(slot: CK_SLOT_ID, mechanism: CK_MECHANISM_TYPE, info: *mut CK_MECHANISM_INFO) -> CK_RV {
    guard(|| {
        let token = token()?;
        check_slot(slot)?;
        let key_type = token.mechanisms().find(|(m, _)| *m == mechanism).ok_or(CKR_MECHANISM_INVALID)?.1;
        let (min, max, extra) = match key_type {
            CKK_EC => (256, 384, CKF_EC_F_P | CKF_EC_NAMEDCURVE | CKF_EC_UNCOMPRESS),
            CKK_RSA => (2048, 8192, 0),
            _ => (256, 256, 0),
        };
        *out(info)? = CK_MECHANISM_INFO { ulMinKeySize: min, ulMaxKeySize: max, flags: CKF_SIGN | extra };
        Ok(())
    })
}

unsafe extern "C" fn C_OpenSession(
    slot: CK_SLOT_ID,
    flags: CK_FLAGS,
    _application: *mut c_void,
    _notify: CK_NOTIFY,
    session: *mut CK_SESSION_HANDLE,
) -> CK_RV {
    guard(|| {
        let token = token()?;
        check_slot(slot)?;
        let session = out(session)?;
        if flags & CKF_SERIAL_SESSION == 0 {
            return Err(CKR_SESSION_PARALLEL_NOT_SUPPORTED);
        }
        *session = token.open_session(flags & CKF_RW_SESSION != 0);
        Ok(())
    })
}

unsafe extern "C" fn C_CloseSession(session: CK_SESSION_HANDLE) -> CK_RV {
    guard(|| token()?.close_session(session))
}

unsafe extern "C" fn C_CloseAllSessions(slot: CK_SLOT_ID) -> CK_RV {
    guard(|| {
        let token = token()?;
        check_slot(slot)?;
        token.close_all_sessions();
        Ok(())
    })
}

unsafe extern "C" fn C_GetSessionInfo(session: CK_SESSION_HANDLE, info: *mut CK_SESSION_INFO) -> CK_RV {
    guard(|| {
        let (state, flags) = token()?.session_info(session)?;
        *out(info)? = CK_SESSION_INFO { slotID: SLOT_ID, state, flags, ulDeviceError: 0 };
        Ok(())
    })
}

unsafe extern "C" fn C_Login(session: CK_SESSION_HANDLE, user: CK_USER_TYPE, pin: *mut CK_UTF8CHAR, pin_len: CK_ULONG) -> CK_RV {
    guard(|| {
        let token = token()?;
        token.login(session, user, bytes(pin, pin_len)?)
    })
}

unsafe extern "C" fn C_Logout(session: CK_SESSION_HANDLE) -> CK_RV {
    guard(|| token()?.logout(session))
}

unsafe extern "C" fn C_GetAttributeValue(
    session: CK_SESSION_HANDLE,
    object: CK_OBJECT_HANDLE,
    template: *mut CK_ATTRIBUTE,
    count: CK_ULONG,
) -> CK_RV {
    guard(|| {
        let token = token()?;
        let template = slice_mut(template, count)?;
        token.with_object(session, object, |object| {
            let mut rv = CKR_OK;
            for attribute in template.iter_mut() {
                match object.attribute(attribute.type_) {
                    None => {
                        attribute.ulValueLen = CK_UNAVAILABLE_INFORMATION;
                        rv = CKR_ATTRIBUTE_TYPE_INVALID;
                    }
                    Some(Value::Sensitive) => {
                        attribute.ulValueLen = CK_UNAVAILABLE_INFORMATION;
                        rv = CKR_ATTRIBUTE_SENSITIVE;
                    }
                    Some(Value::Bytes(value)) => {
                        if attribute.pValue.is_null() {
                            attribute.ulValueLen = value.len() as CK_ULONG;
                        } else if attribute.ulValueLen < value.len() as CK_ULONG {
                            attribute.ulValueLen = CK_UNAVAILABLE_INFORMATION;
                            rv = CKR_BUFFER_TOO_SMALL;
                        } else {
                            // SAFETY: the caller gave ulValueLen writable bytes at pValue.
                            std::ptr::copy_nonoverlapping(value.as_ptr(), attribute.pValue as *mut u8, value.len());
                            attribute.ulValueLen = value.len() as CK_ULONG;
                        }
                    }
                }
            }
            if rv == CKR_OK {
                Ok(())
            } else {
                Err(rv)
            }
        })?
    })
}

unsafe extern "C" fn C_FindObjectsInit(session: CK_SESSION_HANDLE, template: *mut CK_ATTRIBUTE, count: CK_ULONG) -> CK_RV {
    guard(|| {
        let token = token()?;
        let attributes = slice(template, count)?;
        let mut wanted = Vec::with_capacity(attributes.len());
        for a in attributes {
            wanted.push((a.type_, bytes(a.pValue as *const u8, a.ulValueLen)?.to_vec()));
        }
        token.find_init(session, &wanted)
    })
}

unsafe extern "C" fn C_FindObjects(
    session: CK_SESSION_HANDLE,
    objects: *mut CK_OBJECT_HANDLE,
    max: CK_ULONG,
    count: *mut CK_ULONG,
) -> CK_RV {
    guard(|| {
        let token = token()?;
        let count = out(count)?;
        let room = slice_mut(objects, max)?;
        let found = token.find(session, room.len())?;
        room[..found.len()].copy_from_slice(&found);
        *count = found.len() as CK_ULONG;
        Ok(())
    })
}

unsafe extern "C" fn C_FindObjectsFinal(session: CK_SESSION_HANDLE) -> CK_RV {
    guard(|| token()?.find_final(session))
}

/// # Safety
/// `m` is null or a valid CK_MECHANISM whose parameter is valid for its length.
unsafe fn mechanism_spec(m: *const CK_MECHANISM) -> Result<Option<MechanismSpec>, CK_RV> {
    let Some(m) = m.as_ref() else { return Ok(None) };
    let mut spec = MechanismSpec { mechanism: m.mechanism, pss: None, eddsa_variant: false };
    let has_parameter = !m.pParameter.is_null() && m.ulParameterLen > 0;
    match m.mechanism {
        CKM_RSA_PKCS_PSS | CKM_SHA256_RSA_PKCS_PSS | CKM_SHA384_RSA_PKCS_PSS | CKM_SHA512_RSA_PKCS_PSS if has_parameter => {
            if m.ulParameterLen as usize != std::mem::size_of::<CK_RSA_PKCS_PSS_PARAMS>() {
                return Err(CKR_MECHANISM_PARAM_INVALID);
            }
            let p = std::ptr::read_unaligned(m.pParameter as *const CK_RSA_PKCS_PSS_PARAMS);
            spec.pss = Some((p.hashAlg, p.mgf, p.sLen));
        }
        CKM_EDDSA if has_parameter => {
            if m.ulParameterLen as usize != std::mem::size_of::<CK_EDDSA_PARAMS>() {
                return Err(CKR_MECHANISM_PARAM_INVALID);
            }
            let p = std::ptr::read_unaligned(m.pParameter as *const CK_EDDSA_PARAMS);
            spec.eddsa_variant = p.phFlag != CK_FALSE || p.ulContextDataLen > 0;
        }
        _ => {}
    }
    Ok(Some(spec))
}

unsafe extern "C" fn C_SignInit(session: CK_SESSION_HANDLE, mechanism: *mut CK_MECHANISM, key: CK_OBJECT_HANDLE) -> CK_RV {
    guard(|| {
        let token = token()?;
        token.sign_init(session, mechanism_spec(mechanism)?, key)
    })
}

/// Writes a signature, or its length, by the two-call convention.
///
/// # Safety
/// `signature` is null or valid for `*len` bytes; `len` is valid.
unsafe fn sign_out(
    token: &Token,
    session: CK_SESSION_HANDLE,
    data: Option<&[u8]>,
    signature: *mut CK_BYTE,
    len: *mut CK_ULONG,
) -> Result<(), CK_RV> {
    let len = out(len)?;
    let room = (!signature.is_null()).then(|| usize::try_from(*len).unwrap_or(usize::MAX));
    match token.sign(session, data, room)? {
        Signed::Length(n) => {
            *len = n as CK_ULONG;
            Ok(())
        }
        Signed::TooSmall(n) => {
            *len = n as CK_ULONG;
            Err(CKR_BUFFER_TOO_SMALL)
        }
        Signed::Done(sig) => {
            std::ptr::copy_nonoverlapping(sig.as_ptr(), signature, sig.len());
            *len = sig.len() as CK_ULONG;
            Ok(())
        }
    }
}

unsafe extern "C" fn C_Sign(
    session: CK_SESSION_HANDLE,
    data: *mut CK_BYTE,
    data_len: CK_ULONG,
    signature: *mut CK_BYTE,
    signature_len: *mut CK_ULONG,
) -> CK_RV {
    guard(|| {
        let token = token()?;
        sign_out(&token, session, Some(bytes(data, data_len)?), signature, signature_len)
    })
}

unsafe extern "C" fn C_SignUpdate(session: CK_SESSION_HANDLE, part: *mut CK_BYTE, part_len: CK_ULONG) -> CK_RV {
    guard(|| {
        let token = token()?;
        token.sign_update(session, bytes(part, part_len)?)
    })
}

unsafe extern "C" fn C_SignFinal(session: CK_SESSION_HANDLE, signature: *mut CK_BYTE, signature_len: *mut CK_ULONG) -> CK_RV {
    guard(|| {
        let token = token()?;
        sign_out(&token, session, None, signature, signature_len)
    })
}

unsafe extern "C" fn C_GenerateRandom(session: CK_SESSION_HANDLE, data: *mut CK_BYTE, len: CK_ULONG) -> CK_RV {
    guard(|| {
        token()?.session_info(session)?;
        aws_lc_rs::rand::fill(slice_mut(data, len)?).map_err(|_| CKR_FUNCTION_FAILED)
    })
}

unsafe extern "C" fn C_SeedRandom(_session: CK_SESSION_HANDLE, _seed: *mut CK_BYTE, _len: CK_ULONG) -> CK_RV {
    CKR_RANDOM_SEED_NOT_SUPPORTED
}

unsafe extern "C" fn C_GetFunctionStatus(_session: CK_SESSION_HANDLE) -> CK_RV {
    CKR_FUNCTION_NOT_PARALLEL
}

unsafe extern "C" fn C_CancelFunction(_session: CK_SESSION_HANDLE) -> CK_RV {
    CKR_FUNCTION_NOT_PARALLEL
}

/// Functions the token does not offer: they exist, and say so.
macro_rules! unsupported {
    ($($name:ident($($arg:ty),*);)*) => {
        $(
            unsafe extern "C" fn $name($(_: $arg),*) -> CK_RV {
                CKR_FUNCTION_NOT_SUPPORTED
            }
        )*
    };
}

unsupported! {
    C_InitToken(CK_SLOT_ID, *mut CK_UTF8CHAR, CK_ULONG, *mut CK_UTF8CHAR);
    C_InitPIN(CK_SESSION_HANDLE, *mut CK_UTF8CHAR, CK_ULONG);
    C_SetPIN(CK_SESSION_HANDLE, *mut CK_UTF8CHAR, CK_ULONG, *mut CK_UTF8CHAR, CK_ULONG);
    C_GetOperationState(CK_SESSION_HANDLE, *mut CK_BYTE, *mut CK_ULONG);
    C_SetOperationState(CK_SESSION_HANDLE, *mut CK_BYTE, CK_ULONG, CK_OBJECT_HANDLE, CK_OBJECT_HANDLE);
    C_CreateObject(CK_SESSION_HANDLE, *mut CK_ATTRIBUTE, CK_ULONG, *mut CK_OBJECT_HANDLE);
    C_CopyObject(CK_SESSION_HANDLE, CK_OBJECT_HANDLE, *mut CK_ATTRIBUTE, CK_ULONG, *mut CK_OBJECT_HANDLE);
    C_DestroyObject(CK_SESSION_HANDLE, CK_OBJECT_HANDLE);
    C_GetObjectSize(CK_SESSION_HANDLE, CK_OBJECT_HANDLE, *mut CK_ULONG);
    C_SetAttributeValue(CK_SESSION_HANDLE, CK_OBJECT_HANDLE, *mut CK_ATTRIBUTE, CK_ULONG);
    C_EncryptInit(CK_SESSION_HANDLE, *mut CK_MECHANISM, CK_OBJECT_HANDLE);
    C_Encrypt(CK_SESSION_HANDLE, *mut CK_BYTE, CK_ULONG, *mut CK_BYTE, *mut CK_ULONG);
    C_EncryptUpdate(CK_SESSION_HANDLE, *mut CK_BYTE, CK_ULONG, *mut CK_BYTE, *mut CK_ULONG);
    C_EncryptFinal(CK_SESSION_HANDLE, *mut CK_BYTE, *mut CK_ULONG);
    C_DecryptInit(CK_SESSION_HANDLE, *mut CK_MECHANISM, CK_OBJECT_HANDLE);
    C_Decrypt(CK_SESSION_HANDLE, *mut CK_BYTE, CK_ULONG, *mut CK_BYTE, *mut CK_ULONG);
    C_DecryptUpdate(CK_SESSION_HANDLE, *mut CK_BYTE, CK_ULONG, *mut CK_BYTE, *mut CK_ULONG);
    C_DecryptFinal(CK_SESSION_HANDLE, *mut CK_BYTE, *mut CK_ULONG);
    C_DigestInit(CK_SESSION_HANDLE, *mut CK_MECHANISM);
    C_Digest(CK_SESSION_HANDLE, *mut CK_BYTE, CK_ULONG, *mut CK_BYTE, *mut CK_ULONG);
    C_DigestUpdate(CK_SESSION_HANDLE, *mut CK_BYTE, CK_ULONG);
    C_DigestKey(CK_SESSION_HANDLE, CK_OBJECT_HANDLE);
    C_DigestFinal(CK_SESSION_HANDLE, *mut CK_BYTE, *mut CK_ULONG);
    C_SignRecoverInit(CK_SESSION_HANDLE, *mut CK_MECHANISM, CK_OBJECT_HANDLE);
    C_SignRecover(CK_SESSION_HANDLE, *mut CK_BYTE, CK_ULONG, *mut CK_BYTE, *mut CK_ULONG);
    C_VerifyInit(CK_SESSION_HANDLE, *mut CK_MECHANISM, CK_OBJECT_HANDLE);
    C_Verify(CK_SESSION_HANDLE, *mut CK_BYTE, CK_ULONG, *mut CK_BYTE, CK_ULONG);
    C_VerifyUpdate(CK_SESSION_HANDLE, *mut CK_BYTE, CK_ULONG);
    C_VerifyFinal(CK_SESSION_HANDLE, *mut CK_BYTE, CK_ULONG);
    C_VerifyRecoverInit(CK_SESSION_HANDLE, *mut CK_MECHANISM, CK_OBJECT_HANDLE);
    C_VerifyRecover(CK_SESSION_HANDLE, *mut CK_BYTE, CK_ULONG, *mut CK_BYTE, *mut CK_ULONG);
    C_DigestEncryptUpdate(CK_SESSION_HANDLE, *mut CK_BYTE, CK_ULONG, *mut CK_BYTE, *mut CK_ULONG);
    C_DecryptDigestUpdate(CK_SESSION_HANDLE, *mut CK_BYTE, CK_ULONG, *mut CK_BYTE, *mut CK_ULONG);
    C_SignEncryptUpdate(CK_SESSION_HANDLE, *mut CK_BYTE, CK_ULONG, *mut CK_BYTE, *mut CK_ULONG);
    C_DecryptVerifyUpdate(CK_SESSION_HANDLE, *mut CK_BYTE, CK_ULONG, *mut CK_BYTE, *mut CK_ULONG);
    C_GenerateKey(CK_SESSION_HANDLE, *mut CK_MECHANISM, *mut CK_ATTRIBUTE, CK_ULONG, *mut CK_OBJECT_HANDLE);
    C_GenerateKeyPair(CK_SESSION_HANDLE, *mut CK_MECHANISM, *mut CK_ATTRIBUTE, CK_ULONG, *mut CK_ATTRIBUTE, CK_ULONG, *mut CK_OBJECT_HANDLE, *mut CK_OBJECT_HANDLE);
    C_WrapKey(CK_SESSION_HANDLE, *mut CK_MECHANISM, CK_OBJECT_HANDLE, CK_OBJECT_HANDLE, *mut CK_BYTE, *mut CK_ULONG);
    C_UnwrapKey(CK_SESSION_HANDLE, *mut CK_MECHANISM, CK_OBJECT_HANDLE, *mut CK_BYTE, CK_ULONG, *mut CK_ATTRIBUTE, CK_ULONG, *mut CK_OBJECT_HANDLE);
    C_DeriveKey(CK_SESSION_HANDLE, *mut CK_MECHANISM, CK_OBJECT_HANDLE, *mut CK_ATTRIBUTE, CK_ULONG, *mut CK_OBJECT_HANDLE);
    C_WaitForSlotEvent(CK_FLAGS, *mut CK_SLOT_ID, *mut c_void);
}

static FUNCTION_LIST: CK_FUNCTION_LIST = CK_FUNCTION_LIST {
    version: CRYPTOKI_VERSION,
    C_Initialize: Some(C_Initialize),
    C_Finalize: Some(C_Finalize),
    C_GetInfo: Some(C_GetInfo),
    C_GetFunctionList: Some(C_GetFunctionList),
    C_GetSlotList: Some(C_GetSlotList),
    C_GetSlotInfo: Some(C_GetSlotInfo),
    C_GetTokenInfo: Some(C_GetTokenInfo),
    C_GetMechanismList: Some(C_GetMechanismList),
    C_GetMechanismInfo: Some(C_GetMechanismInfo),
    C_InitToken: Some(C_InitToken),
    C_InitPIN: Some(C_InitPIN),
    C_SetPIN: Some(C_SetPIN),
    C_OpenSession: Some(C_OpenSession),
    C_CloseSession: Some(C_CloseSession),
    C_CloseAllSessions: Some(C_CloseAllSessions),
    C_GetSessionInfo: Some(C_GetSessionInfo),
    C_GetOperationState: Some(C_GetOperationState),
    C_SetOperationState: Some(C_SetOperationState),
    C_Login: Some(C_Login),
    C_Logout: Some(C_Logout),
    C_CreateObject: Some(C_CreateObject),
    C_CopyObject: Some(C_CopyObject),
    C_DestroyObject: Some(C_DestroyObject),
    C_GetObjectSize: Some(C_GetObjectSize),
    C_GetAttributeValue: Some(C_GetAttributeValue),
    C_SetAttributeValue: Some(C_SetAttributeValue),
    C_FindObjectsInit: Some(C_FindObjectsInit),
    C_FindObjects: Some(C_FindObjects),
    C_FindObjectsFinal: Some(C_FindObjectsFinal),
    C_EncryptInit: Some(C_EncryptInit),
    C_Encrypt: Some(C_Encrypt),
    C_EncryptUpdate: Some(C_EncryptUpdate),
    C_EncryptFinal: Some(C_EncryptFinal),
    C_DecryptInit: Some(C_DecryptInit),
    C_Decrypt: Some(C_Decrypt),
    C_DecryptUpdate: Some(C_DecryptUpdate),
    C_DecryptFinal: Some(C_DecryptFinal),
    C_DigestInit: Some(C_DigestInit),
    C_Digest: Some(C_Digest),
    C_DigestUpdate: Some(C_DigestUpdate),
    C_DigestKey: Some(C_DigestKey),
    C_DigestFinal: Some(C_DigestFinal),
    C_SignInit: Some(C_SignInit),
    C_Sign: Some(C_Sign),
    C_SignUpdate: Some(C_SignUpdate),
    C_SignFinal: Some(C_SignFinal),
    C_SignRecoverInit: Some(C_SignRecoverInit),
    C_SignRecover: Some(C_SignRecover),
    C_VerifyInit: Some(C_VerifyInit),
    C_Verify: Some(C_Verify),
    C_VerifyUpdate: Some(C_VerifyUpdate),
    C_VerifyFinal: Some(C_VerifyFinal),
    C_VerifyRecoverInit: Some(C_VerifyRecoverInit),
    C_VerifyRecover: Some(C_VerifyRecover),
    C_DigestEncryptUpdate: Some(C_DigestEncryptUpdate),
    C_DecryptDigestUpdate: Some(C_DecryptDigestUpdate),
    C_SignEncryptUpdate: Some(C_SignEncryptUpdate),
    C_DecryptVerifyUpdate: Some(C_DecryptVerifyUpdate),
    C_GenerateKey: Some(C_GenerateKey),
    C_GenerateKeyPair: Some(C_GenerateKeyPair),
    C_WrapKey: Some(C_WrapKey),
    C_UnwrapKey: Some(C_UnwrapKey),
    C_DeriveKey: Some(C_DeriveKey),
    C_SeedRandom: Some(C_SeedRandom),
    C_GenerateRandom: Some(C_GenerateRandom),
    C_GetFunctionStatus: Some(C_GetFunctionStatus),
    C_CancelFunction: Some(C_CancelFunction),
    C_WaitForSlotEvent: Some(C_WaitForSlotEvent),
};
