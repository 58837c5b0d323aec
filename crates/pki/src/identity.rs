//! Which verified peers are let in: rules naming a certificate's common
//! name, DNS or URI subjectAltName, or public key, checked after the chain
//! has been verified. Several rules OR together.
//!
//! URI rules may use `*` for exactly one path segment and `**` for any
//! number of them (none included): `spiffe://example.org/ns/*/sa/**`.
//! Scheme and authority are compared exactly (ignoring case); wildcards never
//! match an empty segment, `.`, `..`, or one holding `?` or `#`.
use std::fmt;

use sealtls_failure::Problem;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// One rule: an identity a peer may have.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rule {
    /// A common name in the subject, exactly.
    Cn(String),
    /// A DNS subjectAltName, ignoring case.
    Dns(String),
    /// A URI subjectAltName matching the pattern.
    Uri(UriPattern),
    /// The SHA-256 of the certificate's SubjectPublicKeyInfo.
    SpkiSha256([u8; 32]),
    /// Any certificate the CA issued.
    All,
}

fn nonempty(kind: &str, s: &str) -> Result<String, Problem> {
    if s.is_empty() {
        return Err(Problem::new(format!("empty {kind}"), format!("give the {kind} to allow")));
    }
    Ok(s.to_owned())
}

impl Rule {
    /// A common-name rule.
    pub fn cn(name: &str) -> Result<Self, Problem> {
        nonempty("common name", name).map(Self::Cn)
    }

    /// A DNS-name rule (compared ignoring case).
    pub fn dns(name: &str) -> Result<Self, Problem> {
        nonempty("DNS name", name).map(|n| Self::Dns(n.to_ascii_lowercase()))
    }

    /// A URI rule, wildcards allowed in the path.
    pub fn uri(pattern: &str) -> Result<Self, Problem> {
        UriPattern::parse(pattern).map(Self::Uri)
    }

    /// A public-key rule from 64 hex digits, colons allowed between them.
    pub fn spki_sha256(hex: &str) -> Result<Self, Problem> {
        let digits: Vec<u8> = hex.bytes().filter(|b| *b != b':').collect();
        let bad = || {
            Problem::new(
                format!("`{hex}` is not a SHA-256 in hex"),
                "give 64 hex digits (colons allowed), e.g. from `openssl x509 -in F -pubkey -noout | openssl pkey -pubin -outform DER | sha256sum`",
            )
        };
        if digits.len() != 64 {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, pair) in digits.chunks(2).enumerate() {
            let text = std::str::from_utf8(pair).map_err(|_| bad())?;
            out[i] = u8::from_str_radix(text, 16).map_err(|_| bad())?;
        }
        Ok(Self::SpkiSha256(out))
    }

    /// Whether a peer with this identity has the identity the rule names.
    pub fn allows(&self, id: &PeerIdentity) -> bool {
        match self {
            Self::Cn(cn) => id.common_names.iter().any(|c| c == cn),
            Self::Dns(dns) => id.dns_names.iter().any(|d| d.eq_ignore_ascii_case(dns)),
            Self::Uri(pattern) => id.uris.iter().any(|u| pattern.matches(u)),
            Self::SpkiSha256(hash) => id.spki_sha256 == *hash,
            Self::All => true,
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cn(cn) => write!(f, "cn={cn}"),
            Self::Dns(dns) => write!(f, "dns={dns}"),
            Self::Uri(p) => write!(f, "uri={}", p.text),
            Self::SpkiSha256(h) => write!(f, "spki-sha256={}", hex(h)),
            Self::All => f.write_str("all"),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One segment of a URI pattern's path.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `*`: exactly one segment.
    One,
    /// `**`: any number of segments.
    Any,
}

/// A URI with `*` and `**` allowed as whole path segments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UriPattern {
    text: String,
    /// `scheme://authority`, lower case.
    prefix: String,
    path: Vec<Segment>,
}

/// `scheme://authority` (lower case) and the path's segments, if `uri` has that form.
fn split_uri(uri: &str) -> Option<(String, Vec<&str>)> {
    let (scheme, rest) = uri.split_once("://")?;
    if scheme.is_empty() || !scheme.bytes().all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b)) {
        return None;
    }
    let (authority, path) = match rest.split_once('/') {
        Some((a, p)) => (a, p.split('/').collect()),
        None => (rest, Vec::new()),
    };
    Some((format!("{scheme}://{authority}").to_ascii_lowercase(), path))
}

impl UriPattern {
    /// Parses a pattern; wildcards must be whole path segments.
    pub fn parse(pattern: &str) -> Result<Self, Problem> {
        let fix = "write SCHEME://AUTHORITY/PATH with `*` (one segment) or `**` (any number) as whole path segments, e.g. spiffe://example.org/ns/*/sa/**";
        let (prefix, segments) =
            split_uri(pattern).ok_or_else(|| Problem::new(format!("`{pattern}` is not a URI of the form SCHEME://AUTHORITY/PATH"), fix))?;
        if prefix.contains('*') {
            return Err(Problem::new(format!("`{pattern}`: wildcards are allowed in the path only"), fix));
        }
        if pattern.contains(['?', '#']) {
            return Err(Problem::new(format!("`{pattern}`: a pattern cannot hold a query or fragment"), fix));
        }
        let path = segments
            .into_iter()
            .map(|s| match s {
                "*" => Ok(Segment::One),
                "**" => Ok(Segment::Any),
                s if s.contains('*') => Err(Problem::new(format!("`{pattern}`: `{s}` mixes a wildcard with other characters"), fix)),
                s => Ok(Segment::Literal(s.to_owned())),
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { text: pattern.to_owned(), prefix, path })
    }

    /// Whether `uri` matches.
    pub fn matches(&self, uri: &str) -> bool {
        let Some((prefix, segments)) = split_uri(uri) else { return false };
        prefix == self.prefix && path_matches(&self.path, &segments)
    }
}

/// What a wildcard may stand for.
fn wildcard_ok(segment: &str) -> bool {
    !matches!(segment, "" | "." | "..") && !segment.contains(['?', '#'])
}

/// Dynamic programming over (pattern, path) suffixes: linear memory, no backtracking blow-up.
fn path_matches(pattern: &[Segment], path: &[&str]) -> bool {
    let m = path.len();
    // next[j]: pattern[i + 1..] matches path[j..].
    let mut next = vec![false; m + 1];
    next[m] = true;
    for seg in pattern.iter().rev() {
        let mut cur = vec![false; m + 1];
        for j in (0..=m).rev() {
            cur[j] = match seg {
                Segment::Literal(l) => j < m && path[j] == l && next[j + 1],
                Segment::One => j < m && wildcard_ok(path[j]) && next[j + 1],
                Segment::Any => next[j] || (j < m && wildcard_ok(path[j]) && cur[j + 1]),
            };
        }
        next = cur;
    }
    next[0]
}

/// What a certificate says about its holder, for rules and for messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The subject, e.g. `CN=alice, O=Example`.
    pub subject: String,
    /// Every common name in the subject.
    pub common_names: Vec<String>,
    /// DNS subjectAltNames.
    pub dns_names: Vec<String>,
    /// URI subjectAltNames.
    pub uris: Vec<String>,
    /// SHA-256 of the SubjectPublicKeyInfo.
    pub spki_sha256: [u8; 32],
}

impl PeerIdentity {
    /// Reads a DER certificate.
    pub fn from_der(der: &[u8]) -> Result<Self, String> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| format!("the certificate does not parse: {e}"))?;
        let common_names = cert.subject().iter_common_name().filter_map(|a| a.as_str().ok().map(str::to_owned)).collect();
        let (mut dns_names, mut uris) = (Vec::new(), Vec::new());
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(d) => dns_names.push((*d).to_owned()),
                    GeneralName::URI(u) => uris.push((*u).to_owned()),
                    _ => {}
                }
            }
        }
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, cert.public_key().raw);
        let mut spki_sha256 = [0u8; 32];
        spki_sha256.copy_from_slice(digest.as_ref());
        Ok(Self { subject: cert.subject().to_string(), common_names, dns_names, uris, spki_sha256 })
    }
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let subject = if self.subject.is_empty() { "(empty)" } else { &self.subject };
        let sans: Vec<String> =
            self.dns_names.iter().map(|d| format!("DNS:{d}")).chain(self.uris.iter().map(|u| format!("URI:{u}"))).collect();
        write!(f, "subject {subject}, SANs [{}], SPKI sha256 {}", sans.join(", "), hex(&self.spki_sha256))
    }
}

/// Why a peer was not let in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch {
    /// The peer as its certificate describes it, or why it could not be read.
    pub identity: Result<Box<PeerIdentity>, String>,
    /// The rules it was checked against.
    pub rules: String,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.identity {
            Ok(id) => write!(f, "{id}: no rule allows it (allowed: {})", self.rules),
            Err(why) => write!(f, "{why}: no rule can allow it (allowed: {})", self.rules),
        }
    }
}

/// Rules that OR together. With none, nothing matches: a caller that means
/// "no restriction" leaves the check out (or uses [`Rule::All`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rules(Vec<Rule>);

impl Rules {
    /// These rules.
    pub fn new(rules: Vec<Rule>) -> Self {
        Self(rules)
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether every certificate is allowed.
    pub fn allows_all(&self) -> bool {
        self.0.contains(&Rule::All)
    }

    /// Lets `cert_der` (a verified leaf) in if any rule allows it.
    pub fn matches(&self, cert_der: &[u8]) -> Result<(), Mismatch> {
        if self.allows_all() {
            return Ok(());
        }
        let mismatch = |identity| Mismatch { identity, rules: self.to_string() };
        let id = PeerIdentity::from_der(cert_der).map_err(|e| mismatch(Err(e)))?;
        if self.0.iter().any(|r| r.allows(&id)) {
            Ok(())
        } else {
            Err(mismatch(Ok(Box::new(id))))
        }
    }
}

impl fmt::Display for Rules {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        let all: Vec<String> = self.0.iter().map(Rule::to_string).collect();
        f.write_str(&all.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rcgen::{CertificateParams, DnType, KeyPair, PublicKeyData, SanType};

    fn cert(cn: &str, sans: Vec<SanType>) -> (Vec<u8>, [u8; 32]) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.subject_alt_names = sans;
        let cert = params.self_signed(&key).unwrap();
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &key.subject_public_key_info());
        (cert.der().to_vec(), digest.as_ref().try_into().unwrap())
    }

    fn uri(pattern: &str, candidate: &str) -> bool {
        UriPattern::parse(pattern).unwrap().matches(candidate)
    }

    #[test]
    fn uri_wildcards() {
        let p = "spiffe://example.org/ns/*/sa/**";
        assert!(uri(p, "spiffe://example.org/ns/prod/sa/web"));
        assert!(uri(p, "spiffe://example.org/ns/prod/sa/web/v2"));
        assert!(uri(p, "spiffe://example.org/ns/prod/sa"), "** matches no segment too");
        assert!(uri(p, "SPIFFE://Example.ORG/ns/prod/sa/web"), "scheme and authority ignore case");
        assert!(!uri(p, "spiffe://example.org/ns/prod/dev/sa/web"), "* is one segment");
        assert!(!uri(p, "spiffe://example.org/ns/sa/web"), "* is not zero segments");
        assert!(!uri(p, "spiffe://example.org/ns//sa/web"), "* is not an empty segment");
        assert!(!uri(p, "spiffe://example.org/ns/../sa/web"), "* is not a dot segment");
        assert!(!uri(p, "spiffe://example.org/NS/prod/sa/web"), "the path keeps its case");
        assert!(!uri(p, "spiffe://example.com/ns/prod/sa/web"), "another trust domain");
        assert!(!uri(p, "spiffe://example.org.evil/ns/prod/sa/web"));
        assert!(!uri(p, "https://example.org/ns/prod/sa/web"));
        assert!(!uri(p, "spiffe://example.org/ns/prod/sa/web?x=1"), "** does not swallow a query");
        assert!(uri("spiffe://example.org/a/b", "spiffe://example.org/a/b"));
        assert!(!uri("spiffe://example.org/a/b", "spiffe://example.org/a/b/c"));
        assert!(!uri("spiffe://example.org/a/b", "spiffe://example.org/a"));
        assert!(uri("spiffe://example.org/**", "spiffe://example.org/x/y/z"));
        assert!(uri("spiffe://example.org/**/end", "spiffe://example.org/a/b/end"));
        assert!(uri("spiffe://example.org/**/end", "spiffe://example.org/end"));
        assert!(!uri("spiffe://example.org/**/end", "spiffe://example.org/a/end/x"));
        assert!(uri("spiffe://example.org/*/*", "spiffe://example.org/a/b"));
        assert!(!uri("spiffe://example.org/*/*", "spiffe://example.org/a"));
        assert!(!uri(p, "not a uri"));
    }

    #[test]
    fn bad_uri_patterns_are_refused_with_a_fix() {
        for bad in ["example.org/a", "spiffe://*.example.org/a", "spiffe://example.org/a*", "spiffe://e/a?b", "://x/y", "spiffe://e/**x"] {
            let e = Rule::uri(bad).unwrap_err();
            assert!(e.fix.as_deref().unwrap_or_default().contains("`*`"), "{bad}: {e:?}");
        }
    }

    #[test]
    fn spki_hashes_parse_with_or_without_colons() {
        let hex64 = "00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF";
        let Rule::SpkiSha256(a) = Rule::spki_sha256(hex64).unwrap() else { panic!() };
        let colons: Vec<String> = hex64.as_bytes().chunks(2).map(|c| String::from_utf8(c.to_vec()).unwrap()).collect();
        assert_eq!(Rule::spki_sha256(&colons.join(":")).unwrap(), Rule::SpkiSha256(a));
        assert_eq!(a[15], 0xff);
        for bad in ["", "00", &hex64[1..], &format!("{}zz", &hex64[2..]), "é".repeat(32).as_str()] {
            assert!(Rule::spki_sha256(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rules_or_together_and_mismatches_name_the_peer() {
        let (der, spki) = cert(
            "alice",
            vec![
                SanType::DnsName("alice.example".try_into().unwrap()),
                SanType::URI("spiffe://example.org/ns/prod/sa/web".try_into().unwrap()),
            ],
        );
        let allowed = |rules: Vec<Rule>| Rules::new(rules).matches(&der);
        assert!(allowed(vec![Rule::cn("alice").unwrap()]).is_ok());
        assert!(allowed(vec![Rule::cn("bob").unwrap(), Rule::dns("ALICE.example").unwrap()]).is_ok());
        assert!(allowed(vec![Rule::uri("spiffe://example.org/ns/*/sa/**").unwrap()]).is_ok());
        assert!(allowed(vec![Rule::SpkiSha256(spki)]).is_ok());
        assert!(allowed(vec![Rule::All]).is_ok());
        assert!(allowed(vec![]).is_err(), "no rule allows nothing");
        let m = allowed(vec![Rule::cn("bob").unwrap(), Rule::cn("Alice").unwrap(), Rule::SpkiSha256([0; 32])]).unwrap_err();
        let text = m.to_string();
        assert!(text.contains("subject CN=alice"), "{text}");
        assert!(text.contains("DNS:alice.example") && text.contains("URI:spiffe://example.org/ns/prod/sa/web"), "{text}");
        assert!(text.contains(&hex(&spki)) && text.contains("no rule allows it (allowed: cn=bob, cn=Alice, spki-sha256=00"), "{text}");
        let m = Rules::new(vec![Rule::cn("a").unwrap()]).matches(b"junk").unwrap_err();
        assert!(m.identity.is_err() && m.to_string().contains("does not parse"), "{m}");
    }

    proptest! {
        #[test]
        fn arbitrary_certificates_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let rules = Rules::new(vec![Rule::cn("a").unwrap(), Rule::uri("spiffe://e/**/x").unwrap()]);
            let _ = rules.matches(&bytes);
        }

        #[test]
        fn arbitrary_patterns_and_uris_never_panic(pattern in "\\PC{0,40}", candidate in "\\PC{0,60}", segs in "(/(\\*\\*|\\*|a|\\.\\.)){0,12}") {
            if let Ok(p) = UriPattern::parse(&pattern) {
                let _ = p.matches(&candidate);
            }
            let p = UriPattern::parse(&format!("s://h{segs}")).unwrap();
            let _ = p.matches(&format!("s://h{}", candidate.replace('*', "")));
            let _ = Rule::spki_sha256(&candidate);
        }
    }
}
