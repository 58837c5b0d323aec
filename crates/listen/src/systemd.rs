//! Listening sockets passed by systemd (socket activation): taken from
//! LISTEN_FDS / LISTEN_PID / LISTEN_FDNAMES once, at start, marked
//! close-on-exec, and the variables removed so that children do not
//! believe the sockets are theirs.
use std::sync::Mutex;

use sealtls_failure::{Failure, FailureClass};

/// A socket systemd passed.
pub(crate) enum Passed {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener),
}

struct Slot {
    name: String,
    socket: Option<Passed>,
}

static PASSED: Mutex<Vec<Slot>> = Mutex::new(Vec::new());

/// Takes the listening sockets systemd passed to this process, if any.
/// Call it first thing in `main`, before other threads start: it changes
/// the environment.
pub fn take_from_env() {
    let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
    // Checks LISTEN_PID against our pid and removes LISTEN_FDS and LISTEN_PID.
    let mut fds = listenfd::ListenFd::from_env();
    std::env::remove_var("LISTEN_FDNAMES");
    let names: Vec<&str> = names.split(':').collect();
    let mut slots = PASSED.lock().unwrap_or_else(|e| e.into_inner());
    for index in 0..fds.len() {
        // Taking marks the fd close-on-exec; a socket of another kind stays unused.
        let socket = match fds.take_tcp_listener(index) {
            Ok(Some(tcp)) => Some(Passed::Tcp(tcp)),
            _ => fds.take_unix_listener(index).ok().flatten().map(Passed::Unix),
        };
        let name = names.get(index).filter(|n| !n.is_empty()).map_or_else(|| "unknown".to_owned(), |n| (*n).to_owned());
        slots.push(Slot { name, socket });
    }
}

/// The passed socket named `name` (matched against LISTEN_FDNAMES), or
/// the first one not yet taken. Each socket can be taken once.
pub(crate) fn take(name: Option<&str>) -> Result<Passed, Failure> {
    let mut slots = PASSED.lock().unwrap_or_else(|e| e.into_inner());
    let spec = name.map_or_else(|| "systemd".to_owned(), |n| format!("systemd:{n}"));
    if slots.is_empty() {
        return Err(Failure::new(
            FailureClass::Config,
            format!("--listen {spec}: systemd passed no sockets (LISTEN_FDS is not set for this process)"),
            "start the service through its .socket unit, or listen on an address (IP:PORT or unix:PATH)",
        ));
    }
    let found = slots.iter_mut().find(|s| s.socket.is_some() && name.is_none_or(|n| s.name == n));
    match found.and_then(|s| s.socket.take()) {
        Some(socket) => Ok(socket),
        None => {
            let names: Vec<&str> = slots.iter().map(|s| s.name.as_str()).collect();
            Err(Failure::new(
                FailureClass::Config,
                format!("--listen {spec}: no unused listening socket of that name among those systemd passed ({})", names.join(", ")),
                "match FileDescriptorName= in the .socket unit (default: the socket unit's name), or use --listen systemd for the first",
            ))
        }
    }
}
