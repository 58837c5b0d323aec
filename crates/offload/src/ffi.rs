//! The C ABI of include/sealtls_offload.h. Every function returns an
//! OS_Error_t value; none panics across the boundary or blocks longer than
//! one answer from the daemon.
// The one module allowed unsafe code (raw pointers from C callers). Its
// functions are exported by #[no_mangle], not through the Rust API.
#![allow(unsafe_code, unreachable_pub)]

use std::cell::RefCell;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::OnceLock;

use sealtls_offload_proto::{Code, ALL_CODES};

use crate::client::Client;
use crate::error::Error;

/// The opaque handle C programs hold.
pub struct Handle {
    client: Client,
    /// Explanation of the last failure seen on this side.
    last: Option<Error>,
}

thread_local! {
    /// Why the last `sealtls_offload_open` on this thread failed.
    static OPEN_FAILURE: RefCell<Option<Error>> = const { RefCell::new(None) };
}

fn value(code: Code) -> c_int {
    code.value()
}

/// Runs `f`, turning a panic into OS_ERROR_GENERIC.
fn guarded(f: impl FnOnce() -> c_int) -> c_int {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(value(Code::Generic))
}

/// Runs a call on a handle, remembering a failure for last_error_detail.
fn on_handle<T>(h: *mut Handle, call: impl FnOnce(&mut Client) -> Result<T, Error>, done: impl FnOnce(T)) -> c_int {
    guarded(|| {
        // SAFETY: a non-null handle comes from sealtls_offload_open and is not yet closed (the caller's contract).
        let Some(handle) = (unsafe { h.as_mut() }) else { return value(Code::InvalidParameter) };
        match call(&mut handle.client) {
            Ok(t) => {
                done(t);
                value(Code::Success)
            }
            Err(e) => {
                let code = e.code;
                handle.last = Some(e);
                value(code)
            }
        }
    })
}

/// Connects to the daemon at `socket_path` and takes a slot.
///
/// # Safety
/// `socket_path` must be a NUL-terminated string and `out` a valid pointer.
#[no_mangle]
pub unsafe extern "C" fn sealtls_offload_open(socket_path: *const c_char, out: *mut *mut Handle) -> c_int {
    guarded(|| {
        if out.is_null() {
            return value(Code::InvalidParameter);
        }
        // SAFETY: checked non-null; the caller guarantees it is writable.
        unsafe { *out = std::ptr::null_mut() };
        if socket_path.is_null() {
            return value(Code::InvalidParameter);
        }
        // SAFETY: the caller guarantees a NUL-terminated string.
        let path = unsafe { CStr::from_ptr(socket_path) };
        let path = std::path::Path::new(std::ffi::OsStr::from_bytes(path.to_bytes()));
        match Client::open(path) {
            Ok(client) => {
                // SAFETY: as above.
                unsafe { *out = Box::into_raw(Box::new(Handle { client, last: None })) };
                OPEN_FAILURE.with(|f| f.borrow_mut().take());
                value(Code::Success)
            }
            Err(e) => {
                let code = e.code;
                OPEN_FAILURE.with(|f| *f.borrow_mut() = Some(e));
                value(code)
            }
        }
    })
}

/// `connect(host, port)`.
///
/// # Safety
/// `h` must come from `sealtls_offload_open`; `host` must be NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn sealtls_offload_connect(h: *mut Handle, host: *const c_char, port: u16) -> c_int {
    if host.is_null() {
        return value(Code::InvalidParameter);
    }
    // SAFETY: the caller guarantees a NUL-terminated string.
    let host = unsafe { CStr::from_ptr(host) }.to_string_lossy().into_owned();
    on_handle(h, |c| c.connect(&host, port), |()| {})
}

/// `handshake()`.
///
/// # Safety
/// `h` must come from `sealtls_offload_open`.
#[no_mangle]
pub unsafe extern "C" fn sealtls_offload_handshake(h: *mut Handle) -> c_int {
    on_handle(h, Client::handshake, |()| {})
}

/// `write(buf, *len)`: `*len` in is the bytes offered, out the bytes taken.
/// `*len` is written only on OS_SUCCESS; any other result leaves it as the
/// caller set it, so a loop repeating the call on WOULD_BLOCK may set it once.
///
/// # Safety
/// `h` must come from `sealtls_offload_open`; `buf` must hold `*len` bytes.
#[no_mangle]
pub unsafe extern "C" fn sealtls_offload_write(h: *mut Handle, buf: *const c_void, len: *mut usize) -> c_int {
    if buf.is_null() || len.is_null() {
        return value(Code::InvalidParameter);
    }
    // SAFETY: the caller guarantees `buf` holds `*len` readable bytes.
    let data = unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), *len) };
    // SAFETY: checked non-null; written only on success.
    on_handle(h, |c| c.write(data), |n| unsafe { *len = n })
}

/// `read(buf, *len)`: `*len` in is the buffer size, out the bytes read.
/// As with write, `*len` is written only on OS_SUCCESS.
///
/// # Safety
/// `h` must come from `sealtls_offload_open`; `buf` must have room for `*len` bytes.
#[no_mangle]
pub unsafe extern "C" fn sealtls_offload_read(h: *mut Handle, buf: *mut c_void, len: *mut usize) -> c_int {
    if buf.is_null() || len.is_null() {
        return value(Code::InvalidParameter);
    }
    // SAFETY: the caller guarantees `buf` has room for `*len` bytes.
    let data = unsafe { std::slice::from_raw_parts_mut(buf.cast::<u8>(), *len) };
    // SAFETY: checked non-null; written only on success.
    on_handle(h, |c| c.read(data), |n| unsafe { *len = n })
}

/// `reset()`.
///
/// # Safety
/// `h` must come from `sealtls_offload_open`.
#[no_mangle]
pub unsafe extern "C" fn sealtls_offload_reset(h: *mut Handle) -> c_int {
    on_handle(h, Client::reset, |()| {})
}

/// `disconnect()`.
///
/// # Safety
/// `h` must come from `sealtls_offload_open`.
#[no_mangle]
pub unsafe extern "C" fn sealtls_offload_disconnect(h: *mut Handle) -> c_int {
    on_handle(h, Client::disconnect, |()| {})
}

/// Frees the slot (closing its connection with close_notify) and the handle.
///
/// # Safety
/// `h` must come from `sealtls_offload_open` and not be used afterwards.
#[no_mangle]
pub unsafe extern "C" fn sealtls_offload_close(h: *mut Handle) {
    if !h.is_null() {
        // SAFETY: the handle came from Box::into_raw in sealtls_offload_open.
        let _ = catch_unwind(AssertUnwindSafe(|| drop(unsafe { Box::from_raw(h) })));
    }
}

/// `"OS_ERROR_NAME: meaning"` for a code, or a note that it is unknown.
#[no_mangle]
pub extern "C" fn sealtls_offload_strerror(code: c_int) -> *const c_char {
    static TEXTS: OnceLock<Vec<(c_int, CString)>> = OnceLock::new();
    let texts = TEXTS.get_or_init(|| {
        ALL_CODES
            .iter()
            .map(|c| (c.value(), CString::new(format!("{}: {}", c.name(), c.describe())).expect("no NUL in code texts")))
            .collect()
    });
    texts.iter().find(|(v, _)| *v == code).map_or(c"unknown OS_Error_t value".as_ptr(), |(_, t)| t.as_ptr())
}

/// Copies `text` into `buf` (`len` bytes), NUL-terminated, cut if needed.
fn copy_out(text: &str, buf: *mut c_char, len: usize) -> c_int {
    if buf.is_null() || len == 0 {
        return value(Code::InvalidParameter);
    }
    let bytes = text.as_bytes();
    let n = bytes.len().min(len - 1);
    // SAFETY: the caller guarantees `buf` has room for `len` bytes; n < len.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr().cast::<c_char>(), buf, n);
        *buf.add(n) = 0;
    }
    if n < bytes.len() {
        value(Code::InsufficientSpace)
    } else {
        value(Code::Success)
    }
}

/// Why the last call on `h` failed (with `h` NULL: why the last
/// `sealtls_offload_open` on this thread failed), as text in `buf`.
/// OS_ERROR_INSUFFICIENT_SPACE when the text had to be cut.
///
/// # Safety
/// `h` must be NULL or come from `sealtls_offload_open`; `buf` must have room for `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn sealtls_offload_last_error_detail(h: *mut Handle, buf: *mut c_char, len: usize) -> c_int {
    guarded(|| {
        let text = if h.is_null() {
            OPEN_FAILURE.with(|f| f.borrow().as_ref().map(Error::to_string)).unwrap_or_default()
        } else {
            // SAFETY: a non-null handle comes from sealtls_offload_open.
            let handle = unsafe { &mut *h };
            match handle.last.as_ref().and_then(|e| e.detail.clone()) {
                Some(text) => text,
                None => match handle.client.detail() {
                    Ok(text) if !text.is_empty() => text,
                    Ok(_) => handle.last.as_ref().map(Error::to_string).unwrap_or_default(),
                    Err(e) => e.to_string(),
                },
            }
        };
        copy_out(&text, buf, len)
    })
}
