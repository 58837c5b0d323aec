//! `--allow-*` (which clients `serve` lets in) and `--verify-*` (which
//! servers `tunnel` accepts): identity rules over verified certificates.
use clap::Args;
use sealtls_endpoint::identity::{Rule, Rules};
use sealtls_failure::{Problem, Remedy};

fn cn(s: &str) -> Result<Rule, String> {
    Rule::cn(s).map_err(|e| e.with_fix())
}
fn dns(s: &str) -> Result<Rule, String> {
    Rule::dns(s).map_err(|e| e.with_fix())
}
fn uri(s: &str) -> Result<Rule, String> {
    Rule::uri(s).map_err(|e| e.with_fix())
}
fn spki(s: &str) -> Result<Rule, String> {
    Rule::spki_sha256(s).map_err(|e| e.with_fix())
}

/// The rule lists of a config table (`allow_cn = [...]`, `verify_uri = [...]`, ...),
/// parsed by the same constructors as the flags.
#[derive(Clone, Copy)]
pub struct RuleLists<'a> {
    /// Common names.
    pub cn: &'a [String],
    /// DNS subjectAltNames.
    pub dns: &'a [String],
    /// URI subjectAltName patterns.
    pub uri: &'a [String],
    /// SubjectPublicKeyInfo SHA-256 digests, in hex.
    pub spki_sha256: &'a [String],
}

/// A rule list entry that does not parse: which list (`cn`, `dns`, `uri`, `spki_sha256`), the entry, and why.
#[derive(Debug)]
pub struct BadRule {
    /// The list, without its `allow_`/`verify_` prefix.
    pub list: &'static str,
    /// The entry as written.
    pub value: String,
    /// What is wrong with it.
    pub problem: Problem,
}

type Parsed = (Vec<Rule>, Vec<Rule>, Vec<Rule>, Vec<Rule>);

impl RuleLists<'_> {
    fn parse(&self) -> Result<Parsed, BadRule> {
        fn each(list: &'static str, values: &[String], make: fn(&str) -> Result<Rule, Problem>) -> Result<Vec<Rule>, BadRule> {
            values.iter().map(|v| make(v).map_err(|problem| BadRule { list, value: v.clone(), problem })).collect()
        }
        Ok((
            each("cn", self.cn, Rule::cn)?,
            each("dns", self.dns, Rule::dns)?,
            each("uri", self.uri, Rule::uri)?,
            each("spki_sha256", self.spki_sha256, Rule::spki_sha256)?,
        ))
    }
}

/// Which client certificates a server lets in; several rules OR together.
#[derive(Args, Clone, Default)]
pub struct AllowFlags {
    /// Let in clients whose certificate has this common name (repeatable).
    #[arg(long, value_name = "NAME", value_parser = cn)]
    allow_cn: Vec<Rule>,
    /// Let in clients whose certificate has this DNS subjectAltName (repeatable).
    #[arg(long, value_name = "NAME", value_parser = dns)]
    allow_dns: Vec<Rule>,
    /// Let in clients with a URI subjectAltName matching this; `*` is one path segment, `**` any number (repeatable).
    #[arg(long, value_name = "URI", value_parser = uri)]
    allow_uri: Vec<Rule>,
    /// Let in clients whose public key (SubjectPublicKeyInfo) has this SHA-256, in hex (repeatable).
    #[arg(long, value_name = "HEX", value_parser = spki)]
    allow_spki_sha256: Vec<Rule>,
    /// Let in any client certificate the CA issued.
    #[arg(long)]
    allow_all: bool,
}

impl AllowFlags {
    /// The `allow_*` lists of a config table.
    pub fn from_lists(lists: RuleLists<'_>, allow_all: bool) -> Result<Self, BadRule> {
        let (allow_cn, allow_dns, allow_uri, allow_spki_sha256) = lists.parse()?;
        Ok(Self { allow_cn, allow_dns, allow_uri, allow_spki_sha256, allow_all })
    }

    /// The rules; empty when no flag was given.
    pub fn rules(&self) -> Rules {
        let all = self.allow_all.then_some(Rule::All);
        Rules::new(
            [&self.allow_cn, &self.allow_dns, &self.allow_uri, &self.allow_spki_sha256].into_iter().flatten().cloned().chain(all).collect(),
        )
    }
}

/// Which servers a client accepts beyond a verified chain; several rules OR together.
#[derive(Args, Clone, Default)]
pub struct VerifyFlags {
    /// Accept only a server whose certificate has this common name (repeatable).
    #[arg(long, value_name = "NAME", value_parser = cn)]
    verify_cn: Vec<Rule>,
    /// Accept only a server whose certificate has this DNS subjectAltName (repeatable).
    #[arg(long, value_name = "NAME", value_parser = dns)]
    verify_dns: Vec<Rule>,
    /// Accept only a server with a URI subjectAltName matching this; `*` is one path segment, `**` any number (repeatable).
    #[arg(long, value_name = "URI", value_parser = uri)]
    verify_uri: Vec<Rule>,
    /// Accept only a server whose public key has this SHA-256, in hex (repeatable).
    #[arg(long, value_name = "HEX", value_parser = spki)]
    verify_spki_sha256: Vec<Rule>,
}

impl VerifyFlags {
    /// The `verify_*` lists of a config table.
    pub fn from_lists(lists: RuleLists<'_>) -> Result<Self, BadRule> {
        let (verify_cn, verify_dns, verify_uri, verify_spki_sha256) = lists.parse()?;
        Ok(Self { verify_cn, verify_dns, verify_uri, verify_spki_sha256 })
    }

    /// The rules; empty when no flag was given.
    pub fn rules(&self) -> Rules {
        Rules::new([&self.verify_cn, &self.verify_dns, &self.verify_uri, &self.verify_spki_sha256].into_iter().flatten().cloned().collect())
    }
}
