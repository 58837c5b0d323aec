//! `--allow-*` (which clients `serve` lets in) and `--verify-*` (which
//! servers `tunnel` accepts): identity rules over verified certificates.
use clap::Args;
use sealtls_endpoint::identity::{Rule, Rules};
use sealtls_failure::Remedy;

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
    /// The rules; empty when no flag was given.
    pub fn rules(&self) -> Rules {
        Rules::new([&self.verify_cn, &self.verify_dns, &self.verify_uri, &self.verify_spki_sha256].into_iter().flatten().cloned().collect())
    }
}
