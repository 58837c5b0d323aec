//! The PROXY protocol v2 header a forwarding server sends to its target
//! before any client byte: the client's and the listener's addresses, and
//! what TLS negotiated, as TLVs (haproxy's proxy-protocol.txt, section 2.2).
//!
//! The `ppp` crate builds the header and its TLVs; it has no helper for the
//! inside of `PP2_TYPE_SSL` (a client byte, a 32-bit verify result, then
//! sub-TLVs), which [`ssl_value`] lays out.
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use ppp::v2::{Addresses, Builder, Command, Protocol, Type, Version, WriteToHeader, Writer};
use rustls::{HandshakeKind, ServerConnection};

/// Which PROXY protocol version a target gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyProtocol {
    /// The binary header, with TLVs.
    V2,
}

impl FromStr for ProxyProtocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "v2" | "2" => Ok(Self::V2),
            "v1" | "1" => Err("PROXY protocol v1 is not offered (its text line cannot carry the TLS facts); use v2".into()),
            _ => Err(format!("unknown PROXY protocol version `{s}`; use v2")),
        }
    }
}

impl fmt::Display for ProxyProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("v2")
    }
}

/// `PP2_CLIENT_SSL`: the client connected over TLS.
pub const PP2_CLIENT_SSL: u8 = 0x01;
/// `PP2_CLIENT_CERT_CONN`: the client sent a certificate on this connection.
pub const PP2_CLIENT_CERT_CONN: u8 = 0x02;
/// `PP2_CLIENT_CERT_SESS`: the client sent a certificate at least once in
/// this TLS session (this connection may have resumed it).
pub const PP2_CLIENT_CERT_SESS: u8 = 0x04;

/// What a TLS session tells the target.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsFacts {
    /// The SNI the client sent.
    pub server_name: Option<String>,
    /// The negotiated application protocol.
    pub alpn: Option<Vec<u8>>,
    /// `TLSv1.3` or `TLSv1.2`.
    pub version: String,
    /// The cipher suite's IANA name, e.g. `TLS_AES_128_GCM_SHA256`.
    pub cipher: String,
    /// The subject CN of the client's verified certificate.
    pub client_cn: Option<String>,
    /// The client sent a certificate (verified, or there would be no session).
    pub client_cert: bool,
    /// The session was resumed rather than fully negotiated here.
    pub resumed: bool,
}

impl TlsFacts {
    /// Reads them from a finished server handshake. rustls ends the
    /// handshake on a certificate it cannot verify, so any certificate
    /// still here was verified.
    pub fn of(conn: &ServerConnection) -> Self {
        let version = match conn.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_owned(),
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_owned(),
            Some(v) => format!("{v:?}"),
            None => String::new(),
        };
        let chain = conn.peer_certificates().unwrap_or_default();
        Self {
            server_name: conn.server_name().map(str::to_owned),
            alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
            version,
            cipher: conn.negotiated_cipher_suite().map(|s| iana_name(s.suite())).unwrap_or_default(),
            client_cn: chain.first().and_then(|leaf| common_name(leaf)),
            client_cert: !chain.is_empty(),
            resumed: conn.handshake_kind() == Some(HandshakeKind::Resumed),
        }
    }
}

/// A suite's IANA name: rustls names TLS 1.3 suites `TLS13_...`, IANA (and
/// OpenSSL) `TLS_...`; TLS 1.2 names are IANA's already.
pub fn iana_name(suite: rustls::CipherSuite) -> String {
    let name = format!("{suite:?}");
    match name.strip_prefix("TLS13_") {
        Some(rest) => format!("TLS_{rest}"),
        None => name,
    }
}

/// The first subject CN of a DER certificate.
fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?.to_owned();
    Some(cn)
}

/// `PP2_SUBTYPE_SSL_VERSION`, `_CN` and `_CIPHER` (ppp's names).
const SUBTYPES: (Type, Type, Type) = (Type::SSLVersion, Type::SSLCommonName, Type::SSLCipher);

/// The value of the `PP2_TYPE_SSL` TLV: the client bits, the verify result
/// (0: the client's certificate was verified; 1: none was sent), then the
/// version, CN (when a certificate was verified) and cipher sub-TLVs.
pub fn ssl_value(facts: &TlsFacts) -> std::io::Result<Vec<u8>> {
    let mut client = PP2_CLIENT_SSL;
    if facts.client_cert {
        client |= PP2_CLIENT_CERT_SESS;
        if !facts.resumed {
            client |= PP2_CLIENT_CERT_CONN;
        }
    }
    let verify: u32 = if facts.client_cert { 0 } else { 1 };
    let (version, cn, cipher) = SUBTYPES;
    let mut w = Writer::default();
    client.write_to(&mut w)?;
    verify.write_to(&mut w)?;
    (version, facts.version.as_bytes()).write_to(&mut w)?;
    if let Some(name) = &facts.client_cn {
        (cn, name.as_bytes()).write_to(&mut w)?;
    }
    (cipher, facts.cipher.as_bytes()).write_to(&mut w)?;
    Ok(w.finish())
}

/// The whole header: PROXY over TCP from `client` to `listener`, then
/// `PP2_TYPE_ALPN` and `PP2_TYPE_AUTHORITY` when there are any, then
/// `PP2_TYPE_SSL`. An IPv4 address beside an IPv6 one is given IPv4-mapped.
pub fn header(client: SocketAddr, listener: SocketAddr, facts: &TlsFacts) -> std::io::Result<Vec<u8>> {
    let (client, listener) = same_family(client, listener);
    let mut builder = Builder::with_addresses(Version::Two | Command::Proxy, Protocol::Stream, Addresses::from((client, listener)));
    if let Some(alpn) = &facts.alpn {
        builder = builder.write_tlv(Type::ALPN, alpn)?;
    }
    if let Some(name) = &facts.server_name {
        builder = builder.write_tlv(Type::Authority, name.as_bytes())?;
    }
    builder.write_tlv(Type::SSL, &ssl_value(facts)?)?.build()
}

fn same_family(a: SocketAddr, b: SocketAddr) -> (SocketAddr, SocketAddr) {
    let canonical = |s: SocketAddr| SocketAddr::new(s.ip().to_canonical(), s.port());
    let (a, b) = (canonical(a), canonical(b));
    let v6 = |s: SocketAddr| match s {
        SocketAddr::V4(v4) => SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port()),
        v6 => v6,
    };
    if a.is_ipv4() == b.is_ipv4() {
        (a, b)
    } else {
        (v6(a), v6(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ppp::v2::Header;

    fn facts() -> TlsFacts {
        TlsFacts {
            server_name: Some("localhost".into()),
            alpn: Some(b"h2".to_vec()),
            version: "TLSv1.3".into(),
            cipher: "TLS_AES_256_GCM_SHA384".into(),
            client_cn: Some("alice".into()),
            client_cert: true,
            resumed: false,
        }
    }

    /// Sub-TLVs of an SSL value, after its five fixed bytes.
    fn sub_tlvs(mut v: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        while !v.is_empty() {
            let len = u16::from_be_bytes([v[1], v[2]]) as usize;
            out.push((v[0], v[3..3 + len].to_vec()));
            v = &v[3 + len..];
        }
        out
    }

    #[test]
    fn the_ssl_value_is_laid_out_as_the_spec_says() {
        let v = ssl_value(&facts()).unwrap();
        assert_eq!(v[0], PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS);
        assert_eq!(&v[1..5], &[0, 0, 0, 0], "verified: verify is zero");
        assert_eq!(
            sub_tlvs(&v[5..]),
            vec![(0x21, b"TLSv1.3".to_vec()), (0x22, b"alice".to_vec()), (0x23, b"TLS_AES_256_GCM_SHA384".to_vec())]
        );

        let anonymous = TlsFacts { client_cn: None, client_cert: false, ..facts() };
        let v = ssl_value(&anonymous).unwrap();
        assert_eq!(v[0], PP2_CLIENT_SSL);
        assert_eq!(&v[1..5], &[0, 0, 0, 1], "no certificate: verify is not zero");
        assert_eq!(sub_tlvs(&v[5..]).iter().map(|t| t.0).collect::<Vec<_>>(), [0x21, 0x23]);

        let resumed = TlsFacts { resumed: true, ..facts() };
        assert_eq!(ssl_value(&resumed).unwrap()[0], PP2_CLIENT_SSL | PP2_CLIENT_CERT_SESS);
    }

    #[test]
    fn the_header_parses_back_with_addresses_and_tlvs() {
        let client: SocketAddr = "192.0.2.7:50123".parse().unwrap();
        let listener: SocketAddr = "127.0.0.1:4433".parse().unwrap();
        let bytes = header(client, listener, &facts()).unwrap();
        let parsed = Header::try_from(bytes.as_slice()).unwrap();
        assert_eq!(parsed.len(), bytes.len(), "nothing after the header");
        assert_eq!(parsed.command, Command::Proxy);
        assert_eq!(parsed.protocol, Protocol::Stream);
        assert_eq!(parsed.addresses, Addresses::from((client, listener)));
        let tlvs: Vec<_> = parsed.tlvs().map(|t| t.unwrap()).map(|t| (t.kind, t.value.to_vec())).collect();
        assert_eq!(tlvs[0], (0x01, b"h2".to_vec()));
        assert_eq!(tlvs[1], (0x02, b"localhost".to_vec()));
        assert_eq!(tlvs[2], (0x20, ssl_value(&facts()).unwrap()));
        assert_eq!(tlvs.len(), 3);

        let bare = TlsFacts { server_name: None, alpn: None, ..facts() };
        let parsed_bare = header(client, listener, &bare).unwrap();
        let kinds: Vec<u8> = Header::try_from(parsed_bare.as_slice()).unwrap().tlvs().map(|t| t.unwrap().kind).collect();
        assert_eq!(kinds, [0x20], "no SNI, no ALPN: only the SSL TLV");
    }

    #[test]
    fn mixed_families_become_ipv6_and_mapped_ones_ipv4() {
        let (a, b) = same_family("[::ffff:127.0.0.1]:5000".parse().unwrap(), "127.0.0.1:443".parse().unwrap());
        assert_eq!((a.to_string(), b.to_string()), ("127.0.0.1:5000".into(), "127.0.0.1:443".into()));
        let (a, b) = same_family("127.0.0.1:5000".parse().unwrap(), "[::1]:443".parse().unwrap());
        assert_eq!((a.to_string(), b.to_string()), ("[::ffff:127.0.0.1]:5000".into(), "[::1]:443".into()));
    }

    #[test]
    fn only_v2_is_offered() {
        assert_eq!("v2".parse::<ProxyProtocol>(), Ok(ProxyProtocol::V2));
        assert!("v1".parse::<ProxyProtocol>().unwrap_err().contains("v1 is not offered"));
        assert!("v3".parse::<ProxyProtocol>().is_err());
    }

    #[test]
    fn suites_get_their_iana_names() {
        assert_eq!(iana_name(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256), "TLS_AES_128_GCM_SHA256");
        assert_eq!(iana_name(rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384), "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384");
    }
}
