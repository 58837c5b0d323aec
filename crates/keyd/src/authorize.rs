//! Who may use which key: grants from keyd's `--authorize` file, each
//! naming a caller (certificate CN, DNS or URI SAN, SPKI SHA-256, or a local
//! uid or gid) and the domains whose keys it may SIGN with and read CHAIN
//! and PUBLIC_KEY for.
//!
//! ```toml
//! [[grant]]
//! cn = "edge1"      # or dns, uri, spki_sha256, uid, gid
//! domains = ["a.example", "*.b.example"]
//! ```
//!
//! A grant's domain is a name or a one-label wildcard (`*.b.example` covers
//! `x.b.example` and the key installed as `*.b.example`, not `b.example`).
//! Keys are checked by the name they are installed under, so a wildcard
//! key needs a wildcard grant.
use std::fmt;
use std::path::Path;

use sealtls_custody_proto::normalize_domain;
use sealtls_failure::Problem;
use sealtls_pki::identity::{PeerIdentity, Rule};
use serde::Deserialize;

/// What the listener knows about a caller's identity.
#[derive(Clone, Debug, Default)]
pub enum Peer {
    /// A local process, from SO_PEERCRED.
    Local {
        /// Its effective user id.
        uid: u32,
        /// Its effective (primary) group id.
        gid: u32,
    },
    /// A TLS client, from its verified certificate.
    Certificate(Box<PeerIdentity>),
    /// Not known (the credentials could not be read, or an in-process caller).
    #[default]
    Unknown,
}

/// The identity a grant names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Grantee {
    /// TLS clients whose certificate the rule allows.
    Certificate(Rule),
    /// Local processes running as this user.
    Uid(u32),
    /// Local processes whose primary group is this one.
    Gid(u32),
}

impl Grantee {
    fn names(&self, peer: &Peer) -> bool {
        match (self, peer) {
            (Self::Certificate(rule), Peer::Certificate(id)) => rule.allows(id),
            (Self::Uid(want), Peer::Local { uid, .. }) => want == uid,
            (Self::Gid(want), Peer::Local { gid, .. }) => want == gid,
            _ => false,
        }
    }
}

impl fmt::Display for Grantee {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Certificate(rule) => rule.fmt(f),
            Self::Uid(uid) => write!(f, "uid={uid}"),
            Self::Gid(gid) => write!(f, "gid={gid}"),
        }
    }
}

/// One grant: a caller and the domains it may use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// Who.
    pub to: Grantee,
    /// Normalized names and one-label wildcards.
    pub domains: Vec<String>,
}

/// Whether the grant pattern `pattern` covers the installed name `name` (both normalized).
fn covers(pattern: &str, name: &str) -> bool {
    if pattern == name {
        return true;
    }
    match (pattern.strip_prefix("*."), name.split_once('.')) {
        (Some(parent), Some((label, rest))) => rest == parent && !label.is_empty() && label != "*",
        _ => false,
    }
}

impl Grant {
    /// Whether this grant lets `peer` use the key installed under `domain`.
    pub fn allows(&self, peer: &Peer, domain: &str) -> bool {
        self.to.names(peer) && self.domains.iter().any(|d| covers(d, domain))
    }
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.to, self.domains.join(" "))
    }
}

/// The grants of an `--authorize` file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grants {
    /// Where they came from, for logs.
    pub origin: String,
    /// The grants, in file order.
    pub grants: Vec<Grant>,
}

/// Why a caller may use a domain, or why not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// This grant allows it.
    Allowed(String),
    /// The grants naming the caller (none if empty) do not cover the domain.
    Refused(Vec<String>),
}

impl Grants {
    /// Whether `peer` may use the key installed under `domain` (normalized).
    pub fn decide(&self, peer: &Peer, domain: &str) -> Decision {
        if let Some(g) = self.grants.iter().find(|g| g.allows(peer, domain)) {
            return Decision::Allowed(g.to_string());
        }
        Decision::Refused(self.grants.iter().filter(|g| g.to.names(peer)).map(Grant::to_string).collect())
    }

    /// Reads an `--authorize` file; one that group or others may write, or
    /// that belongs to another user than root or keyd's, is refused (whoever
    /// can change it can grant themselves any key).
    pub fn load(path: &Path) -> Result<Self, Problem> {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let cannot_read = |e: std::io::Error| {
            Problem::new(format!("{}: cannot read: {e}", path.display()), "give a readable TOML file of [[grant]] tables")
        };
        let meta = std::fs::metadata(path).map_err(cannot_read)?;
        let own = rustix::process::geteuid().as_raw();
        if meta.uid() != 0 && meta.uid() != own {
            return Err(Problem::new(
                format!("{}: it belongs to uid {}, who could grant themselves any key", path.display(), meta.uid()),
                format!("give it to root or to keyd's user: `chown {own} {}`", path.display()),
            ));
        }
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o022 != 0 {
            return Err(Problem::new(
                format!("{}: group or others may write it (mode {mode:04o}), and so grant themselves any key", path.display()),
                format!("fix it with `chmod go-w {}`", path.display()),
            ));
        }
        let text = std::fs::read_to_string(path).map_err(cannot_read)?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses the TOML of an `--authorize` file; `origin` names it in messages.
    pub fn parse(text: &str, origin: &str) -> Result<Self, Problem> {
        let raw: RawFile = toml::from_str(text).map_err(|e| Problem::new(format!("{origin}: {}", e.to_string().trim_end()), FORMAT_FIX))?;
        let grants = raw.grant.into_iter().enumerate().map(|(i, g)| g.check(origin, i + 1)).collect::<Result<_, _>>()?;
        Ok(Self { origin: origin.to_owned(), grants })
    }
}

const FORMAT_FIX: &str =
    "write [[grant]] tables, each with one of cn, dns, uri, spki_sha256, uid or gid and domains = [\"a.example\", \"*.b.example\"]";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    grant: Vec<RawGrant>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGrant {
    cn: Option<String>,
    dns: Option<String>,
    uri: Option<String>,
    spki_sha256: Option<String>,
    uid: Option<u32>,
    gid: Option<u32>,
    domains: Option<Vec<String>>,
}

impl RawGrant {
    fn check(self, origin: &str, n: usize) -> Result<Grant, Problem> {
        let at = |what: String, fix: &str| Problem::new(format!("{origin}: grant #{n}: {what}"), fix);
        let rule =
            |r: Result<Rule, Problem>| r.map(Grantee::Certificate).map_err(|p| at(p.what.clone(), p.fix.as_deref().unwrap_or(FORMAT_FIX)));
        let mut named = Vec::new();
        if let Some(cn) = &self.cn {
            named.push(rule(Rule::cn(cn))?);
        }
        if let Some(dns) = &self.dns {
            named.push(rule(Rule::dns(dns))?);
        }
        if let Some(uri) = &self.uri {
            named.push(rule(Rule::uri(uri))?);
        }
        if let Some(spki) = &self.spki_sha256 {
            named.push(rule(Rule::spki_sha256(spki))?);
        }
        named.extend(self.uid.map(Grantee::Uid));
        named.extend(self.gid.map(Grantee::Gid));
        let to = match named.len() {
            1 => named.remove(0),
            0 => return Err(at("names no caller".into(), "give one of cn, dns, uri, spki_sha256, uid or gid")),
            _ => {
                let all: Vec<String> = named.iter().map(Grantee::to_string).collect();
                return Err(at(
                    format!("names several callers ({})", all.join(", ")),
                    "give one identity per grant; repeat [[grant]] for more",
                ));
            }
        };
        let domains = match self.domains {
            Some(d) if !d.is_empty() => d,
            _ => {
                return Err(at(
                    format!("{to} has no domains"),
                    "list what it may sign for, e.g. domains = [\"a.example\", \"*.b.example\"]",
                ))
            }
        };
        let domains = domains
            .iter()
            .map(|d| {
                normalize_domain(d)
                    .map_err(|e| at(format!("domain {d:?}: {e}"), "give a domain name or a one-label wildcard such as *.b.example"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Grant { to, domains })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(uid: u32, gid: u32) -> Peer {
        Peer::Local { uid, gid }
    }

    fn cert(cn: &str, dns: &[&str]) -> Peer {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(dns.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        let der = params.self_signed(&key).unwrap().der().to_vec();
        Peer::Certificate(Box::new(PeerIdentity::from_der(&der).unwrap()))
    }

    const FILE: &str = r#"
[[grant]]
cn = "edge-a"
domains = ["a.example", "*.B.example."]

[[grant]]
uid = 1000
domains = ["a.example"]

[[grant]]
gid = 50
domains = ["c.example"]

[[grant]]
dns = "edge-d.internal"
domains = ["d.example"]
"#;

    #[test]
    fn wildcards_cover_one_label_and_their_own_name() {
        assert!(covers("a.example", "a.example"));
        assert!(!covers("a.example", "x.a.example"));
        assert!(covers("*.b.example", "x.b.example"));
        assert!(covers("*.b.example", "*.b.example"));
        assert!(!covers("*.b.example", "b.example"));
        assert!(!covers("*.b.example", "y.x.b.example"));
        assert!(!covers("*.b.example", "x.bb.example"));
        assert!(!covers("*.b.example", "*.x.b.example"));
    }

    #[test]
    fn grants_match_callers_by_certificate_uid_or_gid() {
        let g = Grants::parse(FILE, "authorize.toml").unwrap();
        assert_eq!(g.grants.len(), 4);
        assert_eq!(g.grants[0].domains, ["a.example", "*.b.example"]);
        let edge_a = cert("edge-a", &[]);
        assert_eq!(g.decide(&edge_a, "a.example"), Decision::Allowed("cn=edge-a: a.example *.b.example".into()));
        assert!(matches!(g.decide(&edge_a, "x.b.example"), Decision::Allowed(_)));
        assert_eq!(g.decide(&edge_a, "c.example"), Decision::Refused(vec!["cn=edge-a: a.example *.b.example".into()]));
        assert_eq!(g.decide(&cert("edge-b", &[]), "a.example"), Decision::Refused(vec![]));
        assert!(matches!(g.decide(&cert("x", &["edge-d.internal"]), "d.example"), Decision::Allowed(_)));
        assert!(matches!(g.decide(&local(1000, 1000), "a.example"), Decision::Allowed(_)));
        assert!(matches!(g.decide(&local(1000, 1000), "c.example"), Decision::Refused(_)));
        assert!(matches!(g.decide(&local(7, 50), "c.example"), Decision::Allowed(_)));
        assert!(matches!(g.decide(&local(1000, 50), "c.example"), Decision::Allowed(_)), "uid and gid grants add up");
        assert_eq!(g.decide(&Peer::Unknown, "a.example"), Decision::Refused(vec![]));
        // A uid grant never names a TLS client, nor a CN grant a local process.
        assert!(matches!(g.decide(&cert("1000", &[]), "a.example"), Decision::Refused(_)));
        assert!(Grants::parse("", "empty.toml").unwrap().grants.is_empty());
    }

    #[test]
    fn bad_files_are_refused_with_the_file_line_and_a_fix() {
        let refused = |text: &str| Grants::parse(text, "auth.toml").unwrap_err();
        let e = refused("[[grant]]\ncn = \"a\"\ndomain = [\"a.example\"]\n");
        assert!(e.what.starts_with("auth.toml: ") && e.what.contains("line 3") && e.what.contains("unknown field `domain`"), "{e:?}");
        assert!(e.fix.is_some());
        let e = refused("[grants]\n");
        assert!(e.what.contains("unknown field `grants`"), "{e:?}");
        let e = refused("[[grant]]\ndomains = [\"a.example\"]\n");
        assert!(e.what.contains("grant #1: names no caller") && e.fix.as_deref().unwrap_or_default().contains("uid"), "{e:?}");
        let e = refused("[[grant]]\ncn = \"a\"\n");
        assert!(e.what.contains("cn=a has no domains") && e.fix.as_deref().unwrap_or_default().contains("domains = ["), "{e:?}");
        let e = refused("[[grant]]\ncn = \"a\"\ndomains = []\n");
        assert!(e.what.contains("has no domains"), "{e:?}");
        let e = refused("[[grant]]\ncn = \"a\"\nuid = 0\ndomains = [\"a.example\"]\n");
        assert!(e.what.contains("several callers"), "{e:?}");
        let e = refused("[[grant]]\ncn = \"a\"\ndomains = [\"a.*.example\"]\n");
        assert!(e.what.contains("a.*.example") && e.fix.as_deref().unwrap_or_default().contains("*.b.example"), "{e:?}");
        let e = refused("[[grant]]\nspki_sha256 = \"00\"\ndomains = [\"a.example\"]\n");
        assert!(e.what.contains("grant #1") && e.fix.as_deref().unwrap_or_default().contains("64 hex digits"), "{e:?}");
        let e = refused("[[grant]]\nuid = -1\ndomains = [\"a.example\"]\n");
        assert!(e.what.starts_with("auth.toml: "), "{e:?}");
    }

    #[test]
    fn a_grant_file_others_may_write_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("grants.toml");
        std::fs::write(&path, "[[grant]]\nuid = 1000\ndomains = [\"a.example\"]\n").unwrap();
        // Another owner than root or keyd's user (when the test can make one: run as root).
        if rustix::process::geteuid().is_root() {
            std::os::unix::fs::chown(&path, Some(65534), None).unwrap();
            let p = Grants::load(&path).unwrap_err();
            assert!(p.what.contains("belongs to uid 65534") && p.fix.as_deref().is_some_and(|f| f.contains("chown 0")), "{p}");
            std::os::unix::fs::chown(&path, Some(0), None).unwrap();
        }
        for (mode, ok) in [(0o644, true), (0o600, true), (0o664, false), (0o646, false)] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            match Grants::load(&path) {
                Ok(_) => assert!(ok, "{mode:o} accepted"),
                Err(p) => {
                    assert!(!ok, "{mode:o}: {p}");
                    assert!(p.fix.as_deref().is_some_and(|f| f.contains("chmod go-w")), "{p}");
                }
            }
        }
    }
}
