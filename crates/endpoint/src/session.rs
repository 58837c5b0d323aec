//! What was negotiated on a connection, for logs and summaries.
use rustls::CommonState;
use serde::Serialize;

use sealtls_pki::inspect::CertFacts;

/// The negotiated parameters of one TLS session.
#[derive(Clone, Debug, Serialize)]
pub struct SessionInfo {
    /// `TLSv1.3` or `TLSv1.2`.
    pub version: String,
    /// Cipher suite, IANA name.
    pub suite: String,
    /// Key-exchange group, e.g. `X25519MLKEM768`.
    pub group: String,
    /// Subjects of the peer's certificate chain, leaf first (empty if none).
    pub peer_chain: Vec<String>,
}

fn name_of(debug: impl std::fmt::Debug) -> String {
    format!("{debug:?}")
}

impl SessionInfo {
    /// Reads the negotiated parameters from a finished handshake.
    pub fn of(conn: &CommonState) -> Self {
        let version = match conn.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_owned(),
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_owned(),
            Some(v) => name_of(v),
            None => "none".to_owned(),
        };
        let suite = conn.negotiated_cipher_suite().map_or("none".to_owned(), |s| name_of(s.suite()));
        let group = conn.negotiated_key_exchange_group().map_or("none".to_owned(), |g| name_of(g.name()));
        let peer_chain = conn
            .peer_certificates()
            .unwrap_or_default()
            .iter()
            .map(|c| CertFacts::from_der(c).map_or_else(|e| format!("(unparseable: {e})"), |f| f.subject))
            .collect();
        Self { version, suite, group, peer_chain }
    }

    /// The peer's leaf subject, or `none`.
    pub fn peer_subject(&self) -> &str {
        self.peer_chain.first().map_or("none", String::as_str)
    }
}
