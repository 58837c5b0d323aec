//! A look at the ClientHello before the handshake goes on: a server whose
//! certificates come from elsewhere (keyd) gets them ready asynchronously
//! here, or refuses the name with the alert TLS defines for it.
use std::future::Future;
use std::pin::Pin;

use rustls::AlertDescription;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::net::Buffered;

/// Why a ClientHello is refused.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// The fatal alert sent: `unrecognized_name` for a name the server
    /// does not serve, `handshake_failure` when it cannot serve it now.
    pub alert: AlertDescription,
    /// For the log line.
    pub reason: String,
}

/// Decides from the server name whether a handshake may go ahead, after
/// making what the certificate resolver needs ready.
pub trait HelloGate: Send + Sync {
    /// Checks `server_name` (the SNI, if any).
    fn check<'a>(&'a self, server_name: Option<&'a str>) -> Pin<Box<dyn Future<Output = Result<(), Refusal>> + Send + 'a>>;
}

/// What the first bytes of a connection hold, as far as the gate is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hello {
    /// More bytes are needed.
    Partial,
    /// A complete ClientHello.
    Complete(HelloInfo),
    /// The first record is not a handshake record: not TLS, or not a
    /// hello; rustls refuses it with its own alert.
    NotHello,
    /// A ClientHello that cannot be decoded (`decode_error`).
    Malformed(&'static str),
    /// A ClientHello over the 64 KiB rustls accepts (`decode_error`).
    TooLarge,
}

/// What the server decides on before rustls sees a ClientHello.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HelloInfo {
    /// The host name of the server_name extension, lower case.
    pub server_name: Option<String>,
    /// The cipher suites offered.
    pub cipher_suites: Vec<u16>,
    /// The signature_algorithms extension's schemes.
    pub signature_schemes: Vec<u16>,
}

/// The largest handshake message rustls accepts.
const MAX_HELLO: usize = 0xffff;
/// The largest plaintext record body TLS allows (RFC 8446 5.1).
const MAX_RECORD: usize = 1 << 14;

/// Looks at the first bytes of a connection: joins the handshake records of
/// the ClientHello (a hello of many cipher suites spans several) and finds
/// its server name. Decodes only what the gate needs; rustls then reads the
/// same bytes and checks everything else.
pub fn client_hello(bytes: &[u8]) -> Hello {
    let mut message = Vec::new();
    let mut rest = bytes;
    loop {
        if message.len() >= 4 {
            let length = u32::from_be_bytes([0, message[1], message[2], message[3]]) as usize;
            if message[0] != 1 {
                return Hello::Malformed("the first handshake message is not a ClientHello");
            }
            if length > MAX_HELLO {
                return Hello::TooLarge;
            }
            if message.len() >= 4 + length {
                return match hello_info(&message[4..4 + length]) {
                    Ok(info) => Hello::Complete(info),
                    Err(why) => Hello::Malformed(why),
                };
            }
        }
        if rest.len() < 5 {
            return Hello::Partial;
        }
        if rest[0] != 0x16 {
            return if message.is_empty() { Hello::NotHello } else { Hello::Malformed("a record of another type inside the ClientHello") };
        }
        let length = u16::from_be_bytes([rest[3], rest[4]]) as usize;
        if length == 0 || length > MAX_RECORD {
            return Hello::Malformed("a handshake record of an impossible length");
        }
        let Some(body) = rest.get(5..5 + length) else { return Hello::Partial };
        message.extend_from_slice(body);
        rest = &rest[5 + length..];
    }
}

/// Reads from a ClientHello body what [`HelloInfo`] holds.
fn hello_info(body: &[u8]) -> Result<HelloInfo, &'static str> {
    let mut info = HelloInfo::default();
    let mut r = Reader(body);
    r.take(2 + 32)?;
    let session = r.u8()?;
    r.take(session)?;
    let suites = r.u16()?;
    info.cipher_suites = u16_list(r.take(suites)?)?;
    let compression = r.u8()?;
    r.take(compression)?;
    if r.0.is_empty() {
        return Ok(info);
    }
    let length = r.u16()?;
    let mut extensions = Reader(r.take(length)?);
    while !extensions.0.is_empty() {
        let kind = extensions.u16()?;
        let length = extensions.u16()?;
        let mut data = Reader(extensions.take(length)?);
        match kind {
            0 => info.server_name = server_name(&mut data)?,
            13 => {
                let length = data.u16()?;
                info.signature_schemes = u16_list(data.take(length)?)?;
            }
            _ => {}
        }
    }
    Ok(info)
}

/// The host name of a server_name extension (RFC 6066 3), if it has one.
fn server_name(data: &mut Reader<'_>) -> Result<Option<String>, &'static str> {
    let length = data.u16()?;
    let mut names = Reader(data.take(length)?);
    while !names.0.is_empty() {
        let kind = names.u8()?;
        let length = names.u16()?;
        let name = names.take(length)?;
        if kind == 0 {
            let name = std::str::from_utf8(name).map_err(|_| "a server name that is not ASCII")?;
            return Ok(Some(name.to_ascii_lowercase()));
        }
    }
    Ok(None)
}

fn u16_list(bytes: &[u8]) -> Result<Vec<u16>, &'static str> {
    if bytes.len() % 2 != 0 {
        return Err("a list of two-byte values of odd length");
    }
    Ok(bytes.chunks(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect())
}

/// A cursor that refuses to read past its end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        if self.0.len() < n {
            return Err("a length field points past the end of the ClientHello");
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<usize, &'static str> {
        Ok(self.take(1)?[0] as usize)
    }
    fn u16(&mut self) -> Result<usize, &'static str> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]) as usize)
    }
}

/// Reads until [`client_hello`] can decide, keeping every byte for rustls.
pub async fn read_client_hello(io: &mut Buffered) -> std::io::Result<Hello> {
    loop {
        match client_hello(io.peeked()) {
            Hello::Partial => {}
            decided => return Ok(decided),
        }
        if io.peek_more().await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// Sends a fatal alert as a plaintext record, as a server does before its first flight.
pub async fn send_alert<IO: AsyncWrite + Unpin>(io: &mut IO, alert: AlertDescription) {
    let record = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, u8::from(alert)];
    let _ = io.write_all(&record).await;
    let _ = io.flush().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hello(extensions: &[u8]) -> Vec<u8> {
        let mut body = vec![3, 3];
        body.extend([0u8; 32]);
        body.extend([0, 0, 2, 0x13, 0x01, 1, 0]);
        body.extend((extensions.len() as u16).to_be_bytes());
        body.extend(extensions);
        let mut message = vec![1];
        message.extend(&(body.len() as u32).to_be_bytes()[1..]);
        message.extend(body);
        message
    }

    fn records(message: &[u8], size: usize) -> Vec<u8> {
        message.chunks(size).flat_map(|c| [&[0x16, 3, 1][..], &(c.len() as u16).to_be_bytes(), c].concat()).collect()
    }

    fn sni(name: &str) -> Vec<u8> {
        let mut entry = vec![0];
        entry.extend((name.len() as u16).to_be_bytes());
        entry.extend(name.as_bytes());
        let mut list = (entry.len() as u16).to_be_bytes().to_vec();
        list.extend(entry);
        let mut ext = vec![0, 0];
        ext.extend((list.len() as u16).to_be_bytes());
        ext.extend(list);
        ext
    }

    #[test]
    fn server_name_across_records() {
        let mut extensions = vec![0xff, 0x01, 0, 1, 0];
        extensions.extend(sni("WWW.Example.com"));
        let wire = records(&hello(&extensions), 7);
        let Hello::Complete(info) = client_hello(&wire) else { panic!("a complete hello") };
        assert_eq!(info.server_name.as_deref(), Some("www.example.com"));
        assert_eq!(info.cipher_suites, vec![0x1301]);
        for cut in 0..wire.len() {
            assert_eq!(client_hello(&wire[..cut]), Hello::Partial, "cut at {cut}");
        }
    }

    #[test]
    fn no_extensions_means_no_name() {
        assert_eq!(
            client_hello(&records(&hello(&[]), 100)),
            Hello::Complete(HelloInfo { cipher_suites: vec![0x1301], ..Default::default() })
        );
        let sigalgs = [0, 13, 0, 6, 0, 4, 5, 3, 4, 3];
        let Hello::Complete(info) = client_hello(&records(&hello(&sigalgs), 100)) else { panic!("a complete hello") };
        assert_eq!(info.signature_schemes, vec![0x0503, 0x0403]);
    }

    #[test]
    fn refusals() {
        assert_eq!(client_hello(b"GET / HTTP/1.1\r\n"), Hello::NotHello);
        assert_eq!(client_hello(&[0x16, 3, 1, 0, 4, 1, 1, 0, 0]), Hello::TooLarge);
        assert_eq!(client_hello(&[0x16, 3, 1, 0, 4, 2, 0, 0, 0]), Hello::Malformed("the first handshake message is not a ClientHello"));
        let mut truncated = hello(&sni("a.example"));
        let last = truncated.len() - 1;
        truncated[last - 12] = 0x7f;
        assert!(matches!(client_hello(&records(&truncated, 1000)), Hello::Malformed(_)));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = client_hello(&bytes);
            let mut framed = vec![0x16, 3, 1];
            framed.extend((bytes.len() as u16).to_be_bytes());
            framed.extend(&bytes);
            let _ = client_hello(&framed);
        }
    }
}
