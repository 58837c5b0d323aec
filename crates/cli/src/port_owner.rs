//! Which process listens on a TCP address: the socket's inode from
//! /proc/net/tcp{,6}, then the process holding it among /proc/*/fd. Only
//! processes this user may inspect are found.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::up_lock::command_line;

/// The TCP state of a listening socket in /proc/net/tcp.
const LISTEN: &str = "0A";

/// An address of /proc/net/tcp (`0100007F`) or tcp6 (32 hex digits): words in host byte order.
fn parse_ip(hex: &str) -> Option<IpAddr> {
    let mut bytes = Vec::with_capacity(16);
    for i in (0..hex.len()).step_by(8) {
        bytes.extend(u32::from_str_radix(hex.get(i..i + 8)?, 16).ok()?.to_ne_bytes());
    }
    match bytes.len() {
        4 => Some(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(bytes).ok()?))),
        16 => Some(IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?))),
        _ => None,
    }
}

/// Whether a listener on `listening` keeps `wanted` from being bound.
fn blocks(listening: SocketAddr, wanted: SocketAddr) -> bool {
    let (a, b) = (listening.ip().to_canonical(), wanted.ip().to_canonical());
    listening.port() == wanted.port() && (a == b || a.is_unspecified() || b.is_unspecified())
}

/// The inodes of the listening sockets that block `wanted`.
fn listening_inodes(wanted: SocketAddr) -> Vec<String> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) = (f.get(1), f.get(3), f.get(9)) else { continue };
            let Some((ip, port)) = local.split_once(':') else { continue };
            let (Some(ip), Ok(port)) = (parse_ip(ip), u16::from_str_radix(port, 16)) else { continue };
            if *state == LISTEN && *inode != "0" && blocks(SocketAddr::new(ip, port), wanted) {
                inodes.push(format!("socket:[{inode}]"));
            }
        }
    }
    inodes
}

/// The process listening where `wanted` would be bound, as (pid, command
/// line), when it can be seen.
pub fn listener_of(wanted: SocketAddr) -> Option<(u32, String)> {
    let inodes = listening_inodes(wanted);
    if inodes.is_empty() {
        return None;
    }
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().filter(|n| n.bytes().all(|b| b.is_ascii_digit())) else { continue };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else { continue };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|l| inodes.iter().any(|i| l.as_os_str() == i.as_str())) {
                return Some((pid.parse().ok()?, command_line(pid).unwrap_or_else(|| "?".into())));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_addresses_parse() {
        assert_eq!(parse_ip("0100007F"), Some(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        assert_eq!(parse_ip("00000000000000000000000001000000"), Some(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        assert_eq!(parse_ip("XYZ"), None);
    }

    #[test]
    fn finds_this_process_listening() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let (pid, _) = listener_of(addr).expect("found");
        assert_eq!(pid, std::process::id());
        assert_eq!(listener_of(SocketAddr::new(addr.ip(), 0)), None);
        drop(l);
        assert_eq!(listener_of(addr), None);
    }
}
