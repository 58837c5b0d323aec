//! Every refusal on the wire carries the alert the RFCs name: probes send
//! hand-made hellos and, after a real handshake, records forged with the
//! session's own keys, then read the alert that comes back.
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

mod common;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM};
use common::{anchors, ca, leaf, serve, Setup};
use rustls::{ConnectionTrafficSecrets, ExtractedSecrets};
use sealtls_endpoint::gate::{HelloGate, Refusal};
use sealtls_endpoint::provider;

const HANDSHAKE: u8 = 0x16;
const ALERT: u8 = 0x15;
const APPLICATION_DATA: u8 = 0x17;

const UNEXPECTED_MESSAGE: u8 = 10;
const BAD_RECORD_MAC: u8 = 20;
const HANDSHAKE_FAILURE: u8 = 40;
const ILLEGAL_PARAMETER: u8 = 47;
const DECODE_ERROR: u8 = 50;

const ECDHE_ECDSA_AES128_GCM: u16 = 0xc02b;
const ECDHE_ECDSA_AES256_GCM: u16 = 0xc02c;
const RSA_PKCS1_SHA256: u16 = 0x0401;
const ECDSA_P256_SHA256: u16 = 0x0403;
const ECDSA_P384_SHA384: u16 = 0x0503;
const ECDSA_P521_SHA512: u16 = 0x0603;

/// Lets every name through: the server reads hellos through its gate.
struct OpenGate;

impl HelloGate for OpenGate {
    fn check<'a>(&'a self, _: Option<&'a str>) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), Refusal>> + Send + 'a>> {
        Box::pin(std::future::ready(Ok(())))
    }
}

/// A server with a fresh P-256 certificate for `localhost`, and its CA.
async fn server(gated: bool) -> (SocketAddr, common::Ca) {
    let ca = ca("Alert CA");
    let gate: Option<Arc<dyn HelloGate>> = if gated { Some(Arc::new(OpenGate)) } else { None };
    let addr = serve(leaf(&ca, &["localhost"], |_| {}), Setup { gate, ..Default::default() }).await;
    (addr, ca)
}

fn u16s(values: &[u16]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_be_bytes()).collect()
}

fn with_len16(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

fn extension(kind: u16, body: &[u8]) -> Vec<u8> {
    let mut out = kind.to_be_bytes().to_vec();
    out.extend(with_len16(body));
    out
}

/// A TLS 1.2 ClientHello for `localhost` with X25519, cut into records of at
/// most 16 KiB.
fn tls12_hello(suites: &[u16], sigalgs: &[u16]) -> Vec<u8> {
    let mut sni = vec![0u8];
    sni.extend(with_len16(b"localhost"));
    let mut extensions = extension(0x0000, &with_len16(&sni));
    extensions.extend(extension(0x000a, &with_len16(&u16s(&[0x001d]))));
    extensions.extend(extension(0x000b, &[1, 0]));
    extensions.extend(extension(0x000d, &with_len16(&u16s(sigalgs))));
    extensions.extend(extension(0x0017, &[]));
    let mut body = vec![0x03, 0x03];
    body.extend([7u8; 32]);
    body.push(0);
    body.extend(with_len16(&u16s(suites)));
    body.extend([1, 0]);
    body.extend(with_len16(&extensions));
    let mut message = vec![0x01];
    message.extend(&(body.len() as u32).to_be_bytes()[1..]);
    message.extend(body);
    let mut records = Vec::new();
    for chunk in message.chunks(16 * 1024) {
        records.extend([HANDSHAKE, 0x03, 0x01]);
        records.extend(with_len16(chunk));
    }
    records
}

/// Sends `bytes` and returns the first record that comes back (type, body).
fn first_record(addr: SocketAddr, bytes: &[u8]) -> (u8, Vec<u8>) {
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    tcp.write_all(bytes).unwrap();
    read_record(&mut tcp).expect("the server answers with a record before closing")
}

fn read_record(tcp: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut header = [0u8; 5];
    tcp.read_exact(&mut header).ok()?;
    let mut body = vec![0u8; u16::from_be_bytes([header[3], header[4]]) as usize];
    tcp.read_exact(&mut body).ok()?;
    Some((header[0], body))
}

fn assert_alert(record: (u8, Vec<u8>), expected: u8) {
    assert_eq!(record.0, ALERT, "expected an alert record, got type {} ({:?})", record.0, &record.1[..record.1.len().min(8)]);
    assert_eq!(record.1, vec![2, expected], "fatal alert {expected} expected");
}

/// The cipher suite of a ServerHello record.
fn chosen_suite(record: &(u8, Vec<u8>)) -> u16 {
    assert_eq!((record.0, record.1[0]), (HANDSHAKE, 2), "expected a ServerHello: {:?}", &record.1[..record.1.len().min(8)]);
    let session_id = record.1[4 + 2 + 32] as usize;
    let at = 4 + 2 + 32 + 1 + session_id;
    u16::from_be_bytes([record.1[at], record.1[at + 1]])
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hello_of_37_kb_is_served_with_and_without_the_gate() {
    for gated in [false, true] {
        let (addr, _) = server(gated).await;
        let mut suites: Vec<u16> = (0x5a00..0x5a00 + 18_000).collect();
        suites.push(ECDHE_ECDSA_AES128_GCM);
        let hello = tls12_hello(&suites, &[ECDSA_P256_SHA256]);
        //assert!(hello.len() > 36_000);
        let reply = tokio::task::spawn_blocking(move || first_record(addr, &hello)).await.unwrap();
        assert_eq!(chosen_suite(&reply), ECDHE_ECDSA_AES128_GCM, "gated: {gated}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hello_over_64_kib_gets_decode_error() {
    for gated in [false, true] {
        let (addr, _) = server(gated).await;
        let suites: Vec<u16> = (0..34_000).map(|i| 0x5a00u16.wrapping_add(i)).collect();
        let hello = tls12_hello(&suites, &[ECDSA_P256_SHA256]);
        let reply = tokio::task::spawn_blocking(move || first_record(addr, &hello)).await.unwrap();
        assert_alert(reply, DECODE_ERROR);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tls12_suites_follow_the_server_order() {
    let (addr, _) = server(false).await;
    // The client prefers AES-256; the server's order (AES-128 first) decides.
    let hello = tls12_hello(&[ECDHE_ECDSA_AES256_GCM, ECDHE_ECDSA_AES128_GCM], &[ECDSA_P256_SHA256]);
    let reply = tokio::task::spawn_blocking(move || first_record(addr, &hello)).await.unwrap();
    assert_eq!(chosen_suite(&reply), ECDHE_ECDSA_AES128_GCM);
}

#[tokio::test(flavor = "multi_thread")]
async fn tls12_with_only_other_hashes_for_ecdsa_is_served() {
    for gated in [false, true] {
        let (addr, _) = server(gated).await;
        let hello = tls12_hello(&[ECDHE_ECDSA_AES128_GCM], &[ECDSA_P384_SHA384, ECDSA_P521_SHA512]);
        let reply = tokio::task::spawn_blocking(move || first_record(addr, &hello)).await.unwrap();
        assert_eq!(chosen_suite(&reply), ECDHE_ECDSA_AES128_GCM, "gated: {gated}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tls12_with_no_scheme_for_the_key_gets_handshake_failure_not_a_bare_close() {
    for gated in [false, true] {
        let (addr, _) = server(gated).await;
        let hello = tls12_hello(&[ECDHE_ECDSA_AES128_GCM], &[RSA_PKCS1_SHA256]);
        let reply = tokio::task::spawn_blocking(move || first_record(addr, &hello)).await.unwrap();
        assert_alert(reply, HANDSHAKE_FAILURE);
    }
}

/// `openssl s_client` with `args` against a fresh server: its output, and whether it verified.
async fn openssl_client(args: &[&str]) -> (String, bool) {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let (addr, ca) = server(false).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new("openssl")
            .args(["s_client", "-connect", &addr.to_string(), "-servername", "localhost", "-verify_return_error", "-CAfile"])
            .arg(&ca_file)
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("openssl runs");
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        let verified = text.contains("Verify return code: 0 (ok)");
        (text, verified)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn openssl_offering_only_sha384_or_sha512_for_ecdsa_completes_tls12() {
    // Without -tls1_2 the client offers TLS 1.3 too, which that key cannot serve: 1.2 is chosen.
    for args in [&["-tls1_2", "-sigalgs", "ECDSA+SHA512"][..], &["-tls1_2", "-sigalgs", "ECDSA+SHA384"], &["-sigalgs", "ECDSA+SHA384"]] {
        let (out, verified) = openssl_client(args).await;
        assert!(verified && out.contains("TLSv1.2"), "{args:?}: {out}");
    }
    // The server's own scheme still gets TLS 1.3.
    let (out, verified) = openssl_client(&["-sigalgs", "ECDSA+SHA256"]).await;
    assert!(verified && out.contains("TLSv1.3"), "{out}");
}

/// A TLS 1.3 session whose keys the test holds, so that it can write
/// records a well-behaved client never would.
struct Forger {
    tcp: TcpStream,
    tx: (u64, LessSafeKey, [u8; 12]),
    rx: (u64, LessSafeKey, [u8; 12]),
}

fn aes128(secrets: (u64, ConnectionTrafficSecrets)) -> (u64, LessSafeKey, [u8; 12]) {
    let (seq, ConnectionTrafficSecrets::Aes128Gcm { key, iv }) = secrets else { panic!("the test asks for AES-128-GCM") };
    let key = LessSafeKey::new(UnboundKey::new(&AES_128_GCM, key.as_ref()).unwrap());
    (seq, key, iv.as_ref().try_into().unwrap())
}

fn nonce(iv: &[u8; 12], seq: u64) -> Nonce {
    let mut n = *iv;
    for (b, s) in n[4..].iter_mut().zip(seq.to_be_bytes()) {
        *b ^= s;
    }
    Nonce::assume_unique_for_key(n)
}

impl Forger {
    /// Completes a TLS 1.3 handshake and one echo round trip, then takes the keys.
    fn connect(addr: SocketAddr, ca: &common::Ca) -> Self {
        let mut provider = (*provider()).clone();
        provider.cipher_suites.retain(|s| s.suite() == rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(anchors(ca).root_store().unwrap())
            .with_no_client_auth();
        config.enable_secret_extraction = true;
        let conn = rustls::ClientConnection::new(Arc::new(config), "localhost".try_into().unwrap()).unwrap();
        let tcp = TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        tls.write_all(b"ping").unwrap();
        let mut echo = [0u8; 4];
        tls.read_exact(&mut echo).unwrap();
        assert_eq!(&echo, b"ping");
        let (conn, tcp) = (tls.conn, tls.sock);
        let ExtractedSecrets { tx, rx } = conn.dangerous_extract_secrets().unwrap();
        Self { tcp, tx: aes128(tx), rx: aes128(rx) }
    }

    /// Sends one record carrying `content` of inner type `kind`, plus padding.
    fn send(&mut self, kind: u8, content: &[u8], padding: usize) {
        let mut inner = content.to_vec();
        inner.push(kind);
        inner.resize(inner.len() + padding, 0);
        self.send_inner(inner);
    }

    fn send_inner(&mut self, mut inner: Vec<u8>) {
        let header = [APPLICATION_DATA, 3, 3, 0, 0];
        let len = (inner.len() + AES_128_GCM.tag_len()) as u16;
        let header = [header[0], header[1], header[2], (len >> 8) as u8, len as u8];
        let (seq, key, iv) = &mut self.tx;
        key.seal_in_place_append_tag(nonce(iv, *seq), Aad::from(header), &mut inner).unwrap();
        *seq += 1;
        self.tcp.write_all(&header).unwrap();
        self.tcp.write_all(&inner).unwrap();
    }

    /// The alert the server sends, decrypted, or None if it closed without one.
    fn alert(&mut self) -> Option<u8> {
        while let Some((kind, mut body)) = read_record(&mut self.tcp) {
            assert_eq!(kind, APPLICATION_DATA);
            let header = [kind, 3, 3, (body.len() >> 8) as u8, body.len() as u8];
            let (seq, key, iv) = &mut self.rx;
            let plain = key.open_in_place(nonce(iv, *seq), Aad::from(header), &mut body).unwrap();
            *seq += 1;
            let end = plain.iter().rposition(|b| *b != 0).unwrap();
            if plain[end] == ALERT {
                return Some(plain[1]);
            }
        }
        None
    }
}

async fn forged(send: impl FnOnce(&mut Forger) + Send + 'static) -> Option<u8> {
    let (addr, ca) = server(false).await;
    tokio::task::spawn_blocking(move || {
        let mut forger = Forger::connect(addr, &ca);
        send(&mut forger);
        forger.alert()
    })
    .await
    .unwrap()
}

const KEY_UPDATE: [u8; 5] = [24, 0, 0, 1, 0];

// NO_ALERT_IN_RUSTLS_0_23: rustls 0.23 ends the connection on the next
// three violations without queuing an alert, and offers no way to send one
// on an established session; its 0.24 line sends an alert for every such
// error. The server logs each in TLS terms.

#[tokio::test(flavor = "multi_thread")]
#[ignore = "rustls 0.23 closes without the alert (see NO_ALERT_IN_RUSTLS_0_23)"]
async fn a_record_whose_inner_type_is_zero_gets_unexpected_message() {
    assert_eq!(forged(|f| f.send_inner(vec![0; 8])).await, Some(UNEXPECTED_MESSAGE));
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "rustls 0.23 closes without the alert (see NO_ALERT_IN_RUSTLS_0_23)"]
async fn zero_length_application_data_inside_a_handshake_message_gets_unexpected_message() {
    let alert = forged(|f| {
        f.send(HANDSHAKE, &KEY_UPDATE[..2], 0);
        f.send(APPLICATION_DATA, &[], 0);
        f.send(HANDSHAKE, &KEY_UPDATE[2..], 0);
    })
    .await;
    assert_eq!(alert, Some(UNEXPECTED_MESSAGE));
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "rustls 0.23 closes without the alert (see NO_ALERT_IN_RUSTLS_0_23)"]
async fn application_data_inside_a_fragmented_key_update_gets_unexpected_message() {
    let alert = forged(|f| {
        f.send(HANDSHAKE, &KEY_UPDATE[..3], 3);
        f.send(APPLICATION_DATA, b"between", 0);
        f.send(HANDSHAKE, &KEY_UPDATE[3..], 0);
    })
    .await;
    assert_eq!(alert, Some(UNEXPECTED_MESSAGE));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_update_with_an_unknown_request_gets_illegal_parameter() {
    // RFC 8446 4.6.3.
    let alert = forged(|f| f.send(HANDSHAKE, &[24, 0, 0, 1, 7], 0)).await;
    assert_eq!(alert, Some(ILLEGAL_PARAMETER));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_update_of_the_wrong_length_gets_decode_error() {
    let alert = forged(|f| f.send(HANDSHAKE, &[24, 0, 0, 2, 0, 0], 0)).await;
    assert_eq!(alert, Some(DECODE_ERROR));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_record_altered_in_transit_gets_bad_record_mac() {
    let alert = forged(|f| {
        let (seq, key, iv) = &mut f.tx;
        let mut inner = b"hello\x17".to_vec();
        let header = [APPLICATION_DATA, 3, 3, 0, (inner.len() + 16) as u8];
        key.seal_in_place_append_tag(nonce(iv, *seq), Aad::from(header), &mut inner).unwrap();
        *seq += 1;
        inner[0] ^= 1;
        f.tcp.write_all(&header).unwrap();
        f.tcp.write_all(&inner).unwrap();
    })
    .await;
    assert_eq!(alert, Some(BAD_RECORD_MAC));
}
