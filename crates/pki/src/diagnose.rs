//! Explains why a peer's certificate was refused: one line saying what is
//! wrong, one line saying how to fix it.
use std::fmt;

use rustls::CertificateError;
use rustls_pki_types::CertificateDer;
use serde::Serialize;

use crate::inspect::CertFacts;

/// What the certificate was checked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    /// A server's certificate, checked by a client.
    ServerAuth,
    /// A client's certificate, checked by a server.
    ClientAuth,
}

impl Purpose {
    fn eku(self) -> &'static str {
        match self {
            Self::ServerAuth => "serverAuth",
            Self::ClientAuth => "clientAuth",
        }
    }
    fn role(self) -> &'static str {
        match self {
            Self::ServerAuth => "server",
            Self::ClientAuth => "client",
        }
    }
    fn trust_flag(self) -> &'static str {
        match self {
            Self::ServerAuth => "the client's --ca",
            Self::ClientAuth => "the server's --ca",
        }
    }
}

/// The classified problem, with the details the explanation needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum Problem {
    /// Issued by a CA that is not trusted.
    UntrustedIssuer {
        /// The issuer named in the certificate.
        issuer: String,
        /// Subjects of the trusted CAs.
        trusted: Vec<String>,
        /// A trusted CA has the same name but a different key.
        same_name_other_key: bool,
    },
    /// The host name is not among the certificate's names.
    NameMismatch {
        /// The name we connected to.
        expected: String,
        /// The names the certificate holds.
        presented: Vec<String>,
    },
    /// The certificate has no subjectAltName at all.
    NoSan {
        /// The name we connected to.
        expected: String,
        /// Its common name, which clients ignore.
        common_name: Option<String>,
    },
    /// A CA certificate (CA:TRUE) used as the peer's own certificate.
    CaAsLeaf,
    /// X.509 version 1: no extensions.
    Version1,
    /// Extended key usage does not allow this purpose.
    WrongEku {
        /// What was needed.
        needed: &'static str,
        /// What the certificate allows.
        has: Vec<String>,
    },
    /// Past its notAfter.
    Expired {
        /// notAfter, RFC 3339.
        not_after: String,
        /// How many days ago.
        days_ago: i64,
    },
    /// Before its notBefore.
    NotYetValid {
        /// notBefore, RFC 3339.
        not_before: String,
    },
    /// A signature in the chain does not verify.
    BadSignature,
    /// Revoked by its CA.
    Revoked,
    /// The certificate does not parse.
    Malformed,
    /// Something else the verifier reported.
    Other {
        /// The verifier's words.
        detail: String,
    },
}

/// A refused certificate, explained.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Diagnosis {
    /// Which side's certificate.
    pub purpose: Purpose,
    /// Subject of the refused certificate.
    pub subject: String,
    /// The classified problem.
    #[serde(flatten)]
    pub problem: Problem,
}

fn join(names: &[String]) -> String {
    if names.is_empty() {
        "(none)".to_owned()
    } else {
        names.join(", ")
    }
}

/// A list of trusted CA names short enough for one line: a system trust
/// store holds well over a hundred.
fn summarize(names: &[String]) -> String {
    const SHOWN: usize = 3;
    if names.len() <= SHOWN {
        return join(names);
    }
    format!("{} CAs were tried, among them {} and {} more", names.len(), names[..SHOWN].join(", "), names.len() - SHOWN)
}

impl Diagnosis {
    /// One line: what is wrong.
    pub fn what(&self) -> String {
        let role = self.purpose.role();
        let subj = &self.subject;
        match &self.problem {
            Problem::UntrustedIssuer { issuer, trusted, same_name_other_key: true } => format!(
                "the {role} certificate ({subj}) was issued by a CA named \"{issuer}\" that is not the trusted CA of the same name: \
                 its signature does not verify with the trusted key (trusted: {})",
                summarize(trusted)
            ),
            Problem::UntrustedIssuer { issuer, trusted, .. } => format!(
                "the {role} certificate ({subj}) was issued by \"{issuer}\", which is not a trusted CA (trusted: {})",
                summarize(trusted)
            ),
            Problem::NameMismatch { expected, presented } => {
                format!("the {role} certificate is not valid for \"{expected}\": it names {}", join(presented))
            }
            Problem::NoSan { expected, common_name } => format!(
                "the {role} certificate has no subjectAltName, so it is valid for no host name (\"{expected}\" was expected; \
                 its CN={} is ignored by modern clients)",
                common_name.as_deref().unwrap_or("(none)")
            ),
            Problem::CaAsLeaf => format!(
                "the {role} presented a CA certificate (basicConstraints CA:TRUE) as its own identity ({subj}); \
                 a CA certificate cannot identify a {role}"
            ),
            Problem::Version1 => format!(
                "the {role} certificate ({subj}) is X.509 version 1: it has no extensions (no subjectAltName, key usage or CA flag), \
                 which modern verifiers refuse"
            ),
            Problem::WrongEku { needed, has } => {
                format!("the {role} certificate's extended key usage ({}) does not allow {needed}", join(has))
            }
            Problem::Expired { not_after, days_ago } => {
                format!("the {role} certificate ({subj}) expired on {not_after}, {}", crate::inspect::days_ago(*days_ago))
            }
            Problem::NotYetValid { not_before } => {
                format!("the {role} certificate ({subj}) is not valid until {not_before}")
            }
            Problem::BadSignature => format!("a signature in the {role}'s certificate chain does not verify ({subj})"),
            Problem::Revoked => format!("the {role} certificate ({subj}) has been revoked by its CA"),
            Problem::Malformed => format!("the {role} sent a certificate that is not valid DER/X.509"),
            Problem::Other { detail } => format!("the {role} certificate ({subj}) was refused: {detail}"),
        }
    }

    /// One line: how to fix it.
    pub fn fix(&self) -> String {
        let role = self.purpose.role();
        let trust = self.purpose.trust_flag();
        let reissue = format!("sealtls pki issue {role} --dir DIR --name NAME");
        match &self.problem {
            Problem::UntrustedIssuer { issuer, same_name_other_key: true, .. } => format!(
                "two different CAs are both called \"{issuer}\": reissue the {role} certificate from the CA given in {trust}, \
                 or give {trust} the CA certificate that really signed it"
            ),
            Problem::UntrustedIssuer { issuer, .. } => format!(
                "give {trust} the certificate of \"{issuer}\" (or the chain up to a root), \
                 or reissue the {role} certificate from a CA that is already trusted"
            ),
            Problem::NameMismatch { presented, .. } => format!(
                "connect with a name the certificate holds (--server-name, one of: {}), or reissue it with the right name: \
                 `{reissue} --san HOST`",
                join(presented)
            ),
            Problem::NoSan { expected, .. } => format!(
                "reissue it with a subjectAltName: `{reissue} --san {expected}`, or with openssl add \
                 `subjectAltName = DNS:{expected}` and pass `-extfile FILE -extensions SECTION` to `openssl x509 -req`"
            ),
            Problem::CaAsLeaf => format!(
                "reissue the {role} certificate with `basicConstraints = CA:FALSE` (and pass the extensions with \
                 `-extfile FILE -extensions SECTION`), or use `{reissue}`"
            ),
            Problem::Version1 => format!(
                "OpenSSL makes version 1 certificates when `openssl x509 -req` gets no extensions: add `-extfile FILE -extensions SECTION` \
                 with subjectAltName and `basicConstraints = CA:FALSE`, or use `{reissue}`"
            ),
            Problem::WrongEku { needed, .. } => format!("reissue it with `extendedKeyUsage = {needed}`, e.g. `{reissue}`"),
            Problem::Expired { .. } => format!("renew it (`{reissue} --force`), and check that this machine's clock is right"),
            Problem::NotYetValid { .. } => "check the clocks of both machines, or reissue it with a start date in the past".to_owned(),
            Problem::BadSignature => {
                "the certificate was altered or its chain is mixed up: reissue it, and send the chain exactly as the CA issued it"
                    .to_owned()
            }
            Problem::Revoked => format!("get a new {role} certificate; this one must not be used any more"),
            Problem::Malformed => "re-export the certificate as PEM and check it with `sealtls inspect FILE`".to_owned(),
            Problem::Other { .. } => "check the certificate with `sealtls inspect FILE`".to_owned(),
        }
    }
}

impl fmt::Display for Diagnosis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}; fix: {}", self.what(), self.fix())
    }
}

/// Whether `cert` carries a valid signature by `issuer`'s key.
fn signed_by(cert: &CertificateDer<'_>, issuer: &CertificateDer<'_>) -> bool {
    let (Ok((_, c)), Ok((_, i))) = (x509_parser::parse_x509_certificate(cert), x509_parser::parse_x509_certificate(issuer)) else {
        return false;
    };
    c.verify_signature(Some(i.public_key())).is_ok()
}

/// Explains a refused certificate chain.
///
/// `chain` is what the peer sent (leaf first), `anchors` the trusted CA
/// certificates, `name` the host name expected (servers only), and `reported`
/// the verifier's own error, which takes precedence where it is specific.
pub fn diagnose(
    chain: &[CertificateDer<'_>],
    anchors: &[CertificateDer<'_>],
    name: Option<&str>,
    purpose: Purpose,
    reported: &CertificateError,
) -> Diagnosis {
    let Some(leaf_der) = chain.first() else {
        return Diagnosis { purpose, subject: "(no certificate)".into(), problem: Problem::Malformed };
    };
    let Ok(leaf) = CertFacts::from_der(leaf_der) else {
        return Diagnosis { purpose, subject: "(unparseable)".into(), problem: Problem::Malformed };
    };
    let problem = classify(&leaf, chain, anchors, name, purpose, reported);
    Diagnosis { purpose, subject: leaf.subject.clone(), problem }
}

fn classify(
    leaf: &CertFacts,
    chain: &[CertificateDer<'_>],
    anchors: &[CertificateDer<'_>],
    name: Option<&str>,
    purpose: Purpose,
    reported: &CertificateError,
) -> Problem {
    use CertificateError as E;
    match reported {
        E::UnknownIssuer => untrusted(leaf, chain, anchors),
        E::NotValidForName | E::NotValidForNameContext { .. } => name_problem(leaf, name),
        E::Expired | E::ExpiredContext { .. } => expired(leaf),
        E::NotValidYet | E::NotValidYetContext { .. } => Problem::NotYetValid { not_before: leaf.not_before.clone() },
        E::InvalidPurpose | E::InvalidPurposeContext { .. } => wrong_eku(leaf, purpose),
        E::Revoked => Problem::Revoked,
        E::BadEncoding => Problem::Malformed,
        E::BadSignature => match untrusted(leaf, chain, anchors) {
            p @ Problem::UntrustedIssuer { same_name_other_key: true, .. } => p,
            _ => Problem::BadSignature,
        },
        // webpki's structural refusals (version 1, CA as end entity, ...)
        // reach us as `Other`; the certificate itself says which one.
        other => structural(leaf, name, purpose).unwrap_or_else(|| Problem::Other { detail: other_text(other) }),
    }
}

fn other_text(e: &CertificateError) -> String {
    match e {
        CertificateError::Other(inner) => inner.to_string(),
        e => format!("{e:?}"),
    }
}

/// Problems visible in the leaf alone, most fundamental first.
fn structural(leaf: &CertFacts, name: Option<&str>, purpose: Purpose) -> Option<Problem> {
    if leaf.version == 1 {
        return Some(Problem::Version1);
    }
    if leaf.is_ca {
        return Some(Problem::CaAsLeaf);
    }
    if !leaf.eku_allows(purpose.eku()) {
        return Some(wrong_eku(leaf, purpose));
    }
    if name.is_some() && !leaf.has_san_extension {
        return Some(name_problem(leaf, name));
    }
    None
}

fn untrusted(leaf: &CertFacts, chain: &[CertificateDer<'_>], anchors: &[CertificateDer<'_>]) -> Problem {
    let anchor_facts: Vec<(CertFacts, &CertificateDer<'_>)> =
        anchors.iter().filter_map(|a| CertFacts::from_der(a).ok().map(|f| (f, a))).collect();
    // Walk the presented chain to its top, then compare that issuer to the anchors.
    let top_index = chain.len() - 1;
    let top = chain.get(top_index).and_then(|c| CertFacts::from_der(c).ok());
    let issuer = top.as_ref().map_or(leaf.issuer.clone(), |t| t.issuer.clone());
    let same_name_other_key = anchor_facts.iter().any(|(f, der)| f.subject == issuer && !signed_by(&chain[top_index], der));
    Problem::UntrustedIssuer { issuer, trusted: anchor_facts.into_iter().map(|(f, _)| f.subject).collect(), same_name_other_key }
}

fn name_problem(leaf: &CertFacts, name: Option<&str>) -> Problem {
    let expected = name.unwrap_or("(no name)").to_owned();
    if leaf.has_san_extension {
        Problem::NameMismatch { expected, presented: leaf.sans.clone() }
    } else {
        Problem::NoSan { expected, common_name: leaf.common_name().map(str::to_owned) }
    }
}

fn expired(leaf: &CertFacts) -> Problem {
    Problem::Expired { not_after: leaf.not_after.clone(), days_ago: -leaf.days_left }
}

fn wrong_eku(leaf: &CertFacts, purpose: Purpose) -> Problem {
    Problem::WrongEku { needed: purpose.eku(), has: leaf.extended_key_usage.clone().unwrap_or_default() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};

    fn ca(cn: &str) -> (CertificateDer<'static>, KeyPair) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        (p.self_signed(&key).unwrap().der().clone(), key)
    }

    fn leaf(ca: &(CertificateDer<'static>, KeyPair), sans: &[&str], eku: ExtendedKeyUsagePurpose) -> CertificateDer<'static> {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        p.extended_key_usages = vec![eku];
        let issuer = Issuer::from_ca_cert_der(&ca.0, &ca.1).unwrap();
        p.signed_by(&key, &issuer).unwrap().der().clone()
    }

    #[test]
    fn same_name_ca_with_other_key_is_spotted() {
        let good = ca("My Test CA");
        let bad = ca("My Test CA");
        let cert = leaf(&bad, &["localhost"], ExtendedKeyUsagePurpose::ServerAuth);
        let d = diagnose(&[cert], std::slice::from_ref(&good.0), Some("localhost"), Purpose::ServerAuth, &CertificateError::UnknownIssuer);
        assert!(matches!(d.problem, Problem::UntrustedIssuer { same_name_other_key: true, .. }), "{d:?}");
        assert!(d.fix().contains("two different CAs"));
    }

    #[test]
    fn unrelated_ca_is_untrusted_issuer() {
        let good = ca("Good CA");
        let other = ca("Other CA");
        let cert = leaf(&other, &["localhost"], ExtendedKeyUsagePurpose::ClientAuth);
        let d = diagnose(&[cert], std::slice::from_ref(&good.0), None, Purpose::ClientAuth, &CertificateError::UnknownIssuer);
        match &d.problem {
            Problem::UntrustedIssuer { issuer, trusted, same_name_other_key: false } => {
                assert_eq!(issuer, "CN=Other CA");
                assert_eq!(trusted, &vec!["CN=Good CA".to_owned()]);
            }
            p => panic!("unexpected {p:?}"),
        }
        assert!(d.what().contains("client certificate"));
    }

    #[test]
    fn name_mismatch_lists_names_and_no_san_says_so() {
        let good = ca("CA");
        let cert = leaf(&good, &["example.org"], ExtendedKeyUsagePurpose::ServerAuth);
        let d = diagnose(&[cert], &[], Some("localhost"), Purpose::ServerAuth, &CertificateError::NotValidForName);
        assert_eq!(d.problem, Problem::NameMismatch { expected: "localhost".into(), presented: vec!["DNS:example.org".into()] });
        let cert = leaf(&good, &[], ExtendedKeyUsagePurpose::ServerAuth);
        let d = diagnose(&[cert], &[], Some("localhost"), Purpose::ServerAuth, &CertificateError::NotValidForName);
        assert!(matches!(d.problem, Problem::NoSan { .. }));
    }

    #[test]
    fn ca_used_as_leaf_is_found_from_other_error() {
        let good = ca("CA");
        let other = rustls::OtherError(std::sync::Arc::new(std::io::Error::other("CaUsedAsEndEntity")));
        let d = diagnose(std::slice::from_ref(&good.0), &[], Some("x"), Purpose::ServerAuth, &CertificateError::Other(other));
        assert_eq!(d.problem, Problem::CaAsLeaf);
    }

    #[test]
    fn wrong_eku_names_what_is_needed() {
        let good = ca("CA");
        let cert = leaf(&good, &["localhost"], ExtendedKeyUsagePurpose::ClientAuth);
        let d = diagnose(&[cert], &[], Some("localhost"), Purpose::ServerAuth, &CertificateError::InvalidPurpose);
        assert_eq!(d.problem, Problem::WrongEku { needed: "serverAuth", has: vec!["clientAuth".into()] });
    }
}
