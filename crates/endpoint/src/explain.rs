//! Failures explained: what went wrong and how to fix it, with a class that
//! maps to a stable process exit code.
use std::io;

use rustls::{AlertDescription, Error as TlsError, InvalidMessage, PeerIncompatible};

use crate::verify::Observation;
pub use sealtls_failure::{Failure, FailureClass};

/// Which end of the connection we are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// We connected.
    Client,
    /// We accepted.
    Server,
}

impl Side {
    fn peer(self) -> &'static str {
        match self {
            Self::Client => "server",
            Self::Server => "client",
        }
    }
}

/// The rustls error inside an I/O error from tokio-rustls, if any.
pub fn tls_error(err: &io::Error) -> Option<&TlsError> {
    err.get_ref().and_then(|e| e.downcast_ref::<TlsError>())
}

/// Alert names as in RFC 8446 (`unknown_ca`, not `UnknownCA`).
pub fn alert_name(alert: AlertDescription) -> String {
    let debug = format!("{alert:?}");
    let mut out = String::new();
    for (i, ch) in debug.chars().enumerate() {
        let prev_lower = i > 0 && debug.chars().nth(i - 1).is_some_and(|c| c.is_ascii_lowercase());
        if ch.is_ascii_uppercase() && prev_lower {
            out.push('_');
        }
        out.push(ch.to_ascii_lowercase());
    }
    out
}

fn is_version_problem(p: &PeerIncompatible) -> bool {
    use PeerIncompatible as P;
    matches!(
        p,
        P::ServerDoesNotSupportTls12Or13
            | P::ServerTlsVersionIsDisabledByOurConfig
            | P::SupportedVersionsExtensionRequired
            | P::Tls12NotOffered
            | P::Tls12NotOfferedOrEnabled
    )
}

fn version_mismatch(side: Side) -> Failure {
    let peer = side.peer();
    Failure::new(
        FailureClass::Protocol,
        format!("protocol version mismatch: the {peer} and we have no TLS version in common"),
        format!("allow a version the {peer} speaks (--tls 1.2, 1.3 or any on our side; -tls1_2 / -tls1_3 on openssl)"),
    )
}

/// Explains a failed handshake or transfer. `seen` is what the handshake's
/// verifiers observed; `peer` names the other end for messages.
pub fn explain(err: &io::Error, seen: &Observation, side: Side, peer: &str) -> Failure {
    match tls_error(err) {
        Some(tls) => explain_tls(tls, seen, side, peer),
        None => explain_io(err, seen, side, peer),
    }
}

fn explain_tls(err: &TlsError, seen: &Observation, side: Side, peer: &str) -> Failure {
    use FailureClass as C;
    let peer_role = side.peer();
    match err {
        TlsError::InvalidCertificate(rustls::CertificateError::ApplicationVerificationFailure) if seen.mismatch().is_some() => {
            let mismatch = seen.mismatch().expect("checked");
            let (what, fix) = match side {
                Side::Server => (
                    format!("refused client {peer} (alert access_denied): {mismatch}"),
                    "allow it with --allow-cn, --allow-dns, --allow-uri or --allow-spki-sha256 if it should get in",
                ),
                Side::Client => (
                    format!("refused server {peer} (alert access_denied): {mismatch}"),
                    "check that this is the server meant; if it is, widen --verify-cn, --verify-dns, --verify-uri or --verify-spki-sha256",
                ),
            };
            Failure::new(C::PeerNotTrusted, what, fix)
        }
        TlsError::InvalidCertificate(ce) => match seen.diagnosis() {
            Some(d) => Failure::new(C::PeerNotTrusted, d.what(), d.fix()),
            None => Failure::new(C::PeerNotTrusted, format!("the {peer_role} certificate was refused: {ce:?}"), "check it with `sealtls inspect FILE`"),
        },
        TlsError::NoCertificatesPresented => Failure::new(
            C::PeerNotTrusted,
            format!("client {peer} sent no certificate, but this server requires one"),
            "the client must present a certificate issued by the CA in --ca (sealtls connect --cert F --key F; openssl s_client -cert F -key F)",
        ),
        TlsError::AlertReceived(alert) => explain_alert(*alert, seen, side, peer),
        TlsError::PeerIncompatible(p) if is_version_problem(p) => version_mismatch(side),
        TlsError::PeerIncompatible(p) => Failure::new(
            C::Protocol,
            format!("the {peer_role} {peer} and we share no usable parameters ({p:?})"),
            "allow a common cipher suite, key-exchange group and signature scheme on both sides (check --tls and the key type)",
        ),
        TlsError::InvalidMessage(InvalidMessage::InvalidContentType | InvalidMessage::UnknownProtocolVersion) => Failure::new(
            C::Protocol,
            format!("{peer} does not speak TLS here: it sent bytes that are not a TLS record ({err})"),
            match side {
                Side::Client => "check the port: it may be a plain-text or HTTP service rather than TLS",
                Side::Server => "the client must speak TLS to this port (plain-text and HTTP clients are refused)",
            },
        ),
        TlsError::InvalidMessage(m) => Failure::new(
            C::Protocol,
            format!("{peer} sent a malformed TLS message ({m:?}; alert decode_error)"),
            format!("the {peer_role}'s TLS implementation encodes a message wrongly: update or report it"),
        ),
        TlsError::InappropriateMessage { .. } | TlsError::InappropriateHandshakeMessage { .. } => Failure::new(
            C::Protocol,
            format!("{peer} sent a TLS message out of order ({err}; alert unexpected_message)"),
            format!("the {peer_role}'s TLS implementation breaks the handshake's message order: update or report it"),
        ),
        TlsError::PeerMisbehaved(m) => Failure::new(
            C::Protocol,
            format!("{peer} broke the TLS protocol ({m:?})"),
            format!("the {peer_role}'s TLS implementation is faulty: update or report it"),
        ),
        TlsError::DecryptError => Failure::new(
            C::Protocol,
            format!("a record or the Finished message from {peer} failed its integrity check (alert bad_record_mac or decrypt_error)"),
            "the bytes were altered in transit (look for a middlebox) or the peer derived different keys (a faulty TLS implementation)",
        ),
        TlsError::General(m) if m == "incompatible signing key" => Failure::new(
            C::Protocol,
            format!("the {peer_role} {peer} offers no signature scheme this key can make (alert handshake_failure)"),
            "allow the scheme of the key type on the client (a P-256 key signs ecdsa_secp256r1_sha256), or serve a key of a type the client accepts",
        ),
        TlsError::NoApplicationProtocol => Failure::new(
            C::Rejected,
            match side {
                Side::Server => format!("the client {peer} offered no application protocol (ALPN) this server accepts (alert no_application_protocol)"),
                Side::Client => format!("the server {peer} chose no application protocol (ALPN) from those we offered"),
            },
            match side {
                Side::Server => "offer one of the server's --alpn protocols from the client, or add the client's to --alpn",
                Side::Client => "offer a protocol the server accepts (--alpn), or ask which ones it serves",
            },
        ),
        other => Failure::new(C::Protocol, format!("TLS failure with {peer}: {other}"), "run with RUST_LOG=debug for details"),
    }
}

fn explain_alert(alert: AlertDescription, seen: &Observation, side: Side, peer: &str) -> Failure {
    use AlertDescription as A;
    use FailureClass as C;
    let name = alert_name(alert);
    let peer_role = side.peer();
    let no_cert_sent = seen.cert_requested() && !seen.cert_sent();
    match alert {
        A::CertificateRequired => client_cert_missing(peer, &name),
        A::HandshakeFailure if side == Side::Client && no_cert_sent => client_cert_missing(peer, &name),
        A::ProtocolVersion => version_mismatch(side),
        A::UnknownCA
        | A::BadCertificate
        | A::CertificateUnknown
        | A::UnsupportedCertificate
        | A::CertificateExpired
        | A::CertificateRevoked
        | A::AccessDenied
        | A::DecryptError
            if side == Side::Server || seen.cert_sent() =>
        {
            let (whose, fix) = match side {
                // The chain was accepted: an identity rule refused it.
                Side::Client if alert == A::AccessDenied => (
                    "our client certificate",
                    "the server's identity rules (--allow-cn, --allow-dns, --allow-uri, --allow-spki-sha256) name no identity in it: have ours allowed there, or use a certificate they allow",
                ),
                Side::Client => (
                    "our client certificate",
                    "check it with `sealtls inspect FILE`, and use a certificate issued by a CA in the server's --ca (or add our CA there)",
                ),
                Side::Server => (
                    "this server's certificate",
                    "give the client the CA that issued this server's certificate (openssl s_client -CAfile, sealtls connect --ca), or check the name it connects to",
                ),
            };
            let reason = match alert {
                A::UnknownCA => "it does not trust the CA that issued it",
                A::CertificateExpired => "it considers the certificate expired or not yet valid",
                A::BadCertificate | A::UnsupportedCertificate => {
                    "it found the certificate unusable (wrong name, key usage, CA flag or encoding)"
                }
                A::AccessDenied => "the certificate is valid but not allowed in",
                A::DecryptError => "the handshake signature did not verify",
                _ => "it did not accept the certificate",
            };
            Failure::new(C::Rejected, format!("the {peer_role} {peer} rejected {whose} (alert {name}): {reason}"), fix)
        }
        A::HandshakeFailure => Failure::new(
            C::Protocol,
            format!(
                "the {peer_role} {peer} aborted the handshake (alert handshake_failure): no common cipher suite, group or signature scheme"
            ),
            "allow common parameters on both sides (check --tls, key types, and the peer's cipher settings)",
        ),
        A::NoApplicationProtocol => Failure::new(
            C::Rejected,
            format!("the {peer_role} {peer} accepts none of the application protocols (ALPN) offered (alert no_application_protocol)"),
            "offer a protocol both sides accept (--alpn)",
        ),
        A::UnrecognisedName => Failure::new(
            C::Rejected,
            format!("the {peer_role} {peer} does not serve the name we asked for (alert unrecognized_name)"),
            "connect with a name it serves (--server-name)",
        ),
        _ => Failure::new(
            C::Protocol,
            format!("the {peer_role} {peer} aborted the connection with alert {name}"),
            "look at the peer's log for the reason",
        ),
    }
}

fn client_cert_missing(peer: &str, alert: &str) -> Failure {
    Failure::new(
        FailureClass::Rejected,
        format!("server {peer} requires a client certificate and none was sent (alert {alert})"),
        "pass --cert FILE --key FILE with a certificate issued by a CA the server trusts",
    )
}

/// Whether an I/O error is rustls refusing a handshake message larger than
/// it buffers (64 KiB).
pub fn is_oversized_message(err: &io::Error) -> bool {
    tls_error(err).is_none() && err.to_string() == "message buffer full"
}

fn explain_io(err: &io::Error, seen: &Observation, side: Side, peer: &str) -> Failure {
    use io::ErrorKind as K;
    use FailureClass as C;
    let peer_role = side.peer();
    if let Some(t) = err.get_ref().and_then(|e| e.downcast_ref::<crate::forward::TargetFailed>()) {
        return Failure::new(
            C::Network,
            format!("the target {} failed in the middle of the session ({})", t.target, t.error),
            "look at the application behind the target (--target, or a table's `target`): its log, whether it restarted; the client's connection was closed without close_notify, so it sees the session cut",
        );
    }
    if is_oversized_message(err) {
        return Failure::new(
            C::Protocol,
            format!("{peer} sent a TLS handshake message over the 64 KiB limit (alert decode_error)"),
            format!("the {peer_role} offers far more than a handshake needs (cipher suites, extensions or certificates): trim its configuration"),
        );
    }
    match err.kind() {
        K::ConnectionRefused => {
            Failure::new(C::Network, format!("nothing accepts connections at {peer}"), "start the server, or check the host and port")
        }
        K::TimedOut => Failure::new(
            C::Network,
            format!("{peer} did not answer in time"),
            "check that the host is reachable and the port is right; for slow links raise the timeout (`--timeout`, or `--connect-timeout` for a tunnel)",
        ),
        K::UnexpectedEof | K::ConnectionReset | K::BrokenPipe if side == Side::Client && seen.cert_requested() && !seen.cert_sent() => {
            Failure::new(
                C::Rejected,
                format!(
                    "server {peer} asked for a client certificate, none was sent, and it closed the connection without an alert ({err})"
                ),
                "pass --cert FILE --key FILE with a certificate issued by a CA the server trusts",
            )
        }
        K::UnexpectedEof | K::ConnectionReset | K::BrokenPipe => Failure::new(
            C::Network,
            format!("the {peer_role} {peer} closed the connection unexpectedly ({err})"),
            match side {
                Side::Client => "the server may have refused us without an alert (wrong TLS version, or not a TLS port): check its log",
                Side::Server => "the client gave up, or it is not a TLS client",
            },
        ),
        K::InvalidData => Failure::new(
            C::Protocol,
            format!("{peer} sent a malformed TLS message ({err}; alert decode_error)"),
            format!("the {peer_role}'s TLS implementation encodes a message wrongly: update or report it"),
        ),
        _ => Failure::new(C::Network, format!("network error with {peer}: {err}"), "check the address and that the peer is running"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alert_names_follow_the_rfc() {
        assert_eq!(alert_name(AlertDescription::UnknownCA), "unknown_ca");
        assert_eq!(alert_name(AlertDescription::CertificateRequired), "certificate_required");
        assert_eq!(alert_name(AlertDescription::BadCertificate), "bad_certificate");
        assert_eq!(alert_name(AlertDescription::ProtocolVersion), "protocol_version");
    }

    #[test]
    fn certificate_required_alert_means_we_sent_none() {
        let seen = Observation::default();
        let err = io::Error::new(io::ErrorKind::InvalidData, TlsError::AlertReceived(AlertDescription::CertificateRequired));
        let f = explain(&err, &seen, Side::Client, "127.0.0.1:1");
        assert_eq!(f.class, FailureClass::Rejected);
        assert!(f.what.contains("requires a client certificate"));
    }

    fn server_reads(err: io::Error) -> Failure {
        explain(&err, &Observation::default(), Side::Server, "127.0.0.1:9")
    }

    fn tls(e: TlsError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }

    #[test]
    fn protocol_errors_are_named_in_tls_terms() {
        let f = server_reads(tls(TlsError::InvalidMessage(InvalidMessage::InvalidKeyUpdate)));
        assert!(f.what.contains("malformed TLS message") && f.what.contains("decode_error"), "{f}");
        assert!(!f.what.contains("does not speak TLS") && !f.fix.contains("plain-text"), "{f}");
        let f = server_reads(tls(TlsError::InvalidMessage(InvalidMessage::InvalidContentType)));
        assert!(f.what.contains("does not speak TLS here"), "{f}");
        let f = server_reads(tls(TlsError::DecryptError));
        assert!(f.what.contains("Finished") && !f.what.contains("corrupted in transit"), "{f}");
        let f = server_reads(tls(TlsError::General("incompatible signing key".into())));
        assert!(f.what.contains("no signature scheme this key can make"), "{f}");
        let f = server_reads(tls(TlsError::NoApplicationProtocol));
        assert!(f.what.contains("application protocol (ALPN)") && f.fix.contains("--alpn"), "{f}");
    }

    #[test]
    fn an_oversized_hello_is_not_a_network_error() {
        let f = server_reads(io::Error::other("message buffer full"));
        assert_eq!(f.class, FailureClass::Protocol);
        assert!(f.what.contains("64 KiB") && !f.fix.contains("check the address"), "{f}");
    }
}
