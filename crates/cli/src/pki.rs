//! `sealtls pki ...` and `sealtls inspect`.
use std::path::PathBuf;

use clap::{Args, Subcommand};
use sealtls_failure::{Failure, FailureClass};
use sealtls_pki::inspect::{inspect as inspect_inputs, Item};
use sealtls_pki::issue::{default_ca_name, init_ca, issue_leaf, sign_csr, KeyType, LeafKind, DEFAULT_LEAF_DAYS};

/// The longest validity `pki` gives, in days (a hundred years).
const MAX_DAYS: u32 = 36_500;
#[derive(Subcommand)]
pub enum PkiCommand {
    /// Create a CA: DIR/ca.pem and DIR/ca.key.
    Init {
        /// Directory for the CA files (created if missing).
        #[arg(long)]
        dir: PathBuf,
        /// Common name of the CA [default: "sealtls development CA" and six random
        /// hex digits, e.g. "sealtls development CA 3f9a1c", so that no two CAs look alike].
        #[arg(long)]
        cn: Option<String>,
        /// Key algorithm.
        #[arg(long, default_value = "ecdsa-p256")]
        key_type: KeyType,
        /// Validity in days, 1 to 36500.
        #[arg(long, default_value_t = 3650, value_parser = clap::value_parser!(u32).range(1..=MAX_DAYS as i64))]
        days: u32,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
    /// Issue a server or client certificate signed by the CA in DIR.
    Issue {
        /// server (serverAuth) or client (clientAuth).
        #[arg(value_parser = ["server", "client"])]
        kind: String,
        /// Directory holding ca.pem and ca.key; NAME.pem and NAME.key go there.
        #[arg(long)]
        dir: PathBuf,
        /// Certificate name: its CN and file name.
        #[arg(long)]
        name: String,
        /// Subject alternative names (DNS names or IP addresses); default NAME,
        /// plus 127.0.0.1 and ::1 for localhost.
        #[arg(long = "san")]
        sans: Vec<String>,
        /// Key algorithm.
        #[arg(long, default_value = "ecdsa-p256")]
        key_type: KeyType,
        /// Validity in days, 1 to 36500.
        #[arg(long, default_value_t = DEFAULT_LEAF_DAYS, value_parser = clap::value_parser!(u32).range(1..=MAX_DAYS as i64))]
        days: u32,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
    /// Sign a certificate signing request (e.g. from `sealtls key gen`) as a
    /// TLS server certificate, with the CA in DIR.
    ///
    /// The request's self-signature is checked. Names: --san if given, else the
    /// request's subjectAltName, else its CN. The certificate always gets a
    /// subjectAltName, serverAuth and CA:FALSE; OUT holds it followed by the CA.
    Sign {
        /// Directory holding ca.pem and ca.key (mode 0600).
        #[arg(long)]
        dir: PathBuf,
        /// The request: PKCS#10, PEM or DER.
        csr: PathBuf,
        /// Where to write the certificate (leaf, then the CA).
        #[arg(long)]
        out: PathBuf,
        /// Validity in days, 1 to 36500 (the same default as `pki issue`).
        #[arg(long, default_value_t = DEFAULT_LEAF_DAYS, value_parser = clap::value_parser!(u32).range(1..=MAX_DAYS as i64))]
        days: u32,
        /// Subject alternative names (DNS names or IP addresses), replacing
        /// the request's; default the request's subjectAltName, else its CN.
        #[arg(long = "san")]
        sans: Vec<String>,
        /// Replace OUT if it exists.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Args)]
pub struct InspectArgs {
    /// Certificate, chain or key files (PEM or DER).
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Print JSON for scripts.
    #[arg(long)]
    json: bool,
}

pub fn run(cmd: PkiCommand) -> Result<(), Failure> {
    let issued = match cmd {
        PkiCommand::Init { dir, cn, key_type, days, force } => {
            let cn = cn.unwrap_or_else(default_ca_name);
            let issued = init_ca(&dir, &cn, key_type, days, force).map_err(issue_failure)?;
            println!("created the CA \"{cn}\"");
            issued
        }
        PkiCommand::Issue { kind, dir, name, sans, key_type, days, force } => {
            let kind = if kind == "server" { LeafKind::Server } else { LeafKind::Client };
            issue_leaf(&dir, kind, &name, &sans, key_type, days, force).map_err(issue_failure)?
        }
        PkiCommand::Sign { dir, csr, out, days, sans, force } => {
            let (bytes, _) = sealtls_pki::load::read_limited(&csr).map_err(Failure::config)?;
            let signed = sign_csr(&dir, &bytes, &csr.display().to_string(), &sans, days, &out, force).map_err(issue_failure)?;
            println!(
                "wrote {} (server certificate for {}, names from {}, valid {days} days; then the CA)",
                signed.cert_path.display(),
                signed.sans.join(", "),
                signed.sans_from
            );
            return Ok(());
        }
    };
    println!("wrote {} and {} (mode 0600)", issued.cert_path.display(), issued.key_path.display());
    Ok(())
}

/// A bad name or SAN on the command line is a usage error (2); the rest
/// concern files (3).
fn issue_failure(e: sealtls_pki::issue::IssueError) -> Failure {
    let usage = matches!(e, sealtls_pki::issue::IssueError::InvalidInput { .. });
    let failure = Failure::config(e);
    match usage {
        true => Failure::new(FailureClass::Usage, failure.what, failure.fix),
        false => failure,
    }
}

pub fn inspect(args: InspectArgs) -> Result<(), Failure> {
    use std::os::unix::fs::PermissionsExt;
    let mut inputs = Vec::new();
    let mut exposed = Vec::new();
    for path in &args.files {
        let (bytes, meta) = sealtls_pki::load::read_limited(path).map_err(Failure::config)?;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            exposed.push((path.display().to_string(), mode));
        }
        inputs.push((path.display().to_string(), bytes));
    }
    let mut items = inspect_inputs(&inputs);
    // Inspect reads any file, but says what the other commands would refuse.
    for item in &mut items {
        if let Item::PrivateKey { source, warnings, .. } = item {
            if let Some((_, mode)) = exposed.iter().find(|(s, _)| s == source) {
                warnings.push(format!(
                    "group or others may reach this key file (mode {mode:04o}): sealtls refuses to load it; fix it with `chmod 600 {source}`"
                ));
            }
        }
    }
    let mut out = String::new();
    if args.json {
        out = serde_json::to_string_pretty(&items).expect("items serialise") + "\n";
    } else {
        for item in &items {
            print_item(&mut out, item);
        }
    }
    crate::print_report(&out)?;
    match items.iter().any(|i| matches!(i, Item::Error { .. })) {
        true => Err(Failure::new(FailureClass::Config, "some inputs could not be read as certificates or keys", "see the errors above")),
        false => Ok(()),
    }
}

fn print_item(out: &mut String, item: &Item) {
    use std::fmt::Write;
    match item {
        Item::Certificate { source, index, facts, warnings } => {
            let _ = writeln!(out, "{source} #{index}: certificate");
            let rows = [
                ("subject", facts.subject.clone()),
                ("issuer", facts.issuer.clone()),
                ("serial", facts.serial.clone()),
                ("version", facts.version.to_string()),
                ("SANs", if facts.has_san_extension { facts.sans.join(", ") } else { "(none)".into() }),
                ("key", facts.key.clone()),
                ("signature", facts.signature_algorithm.clone()),
                ("EKU", facts.extended_key_usage.as_ref().map_or("(none)".into(), |e| e.join(", "))),
                ("basicConstraints", facts.basic_constraints.clone().unwrap_or_else(|| "(none)".into())),
                ("keyUsage", facts.key_usage.clone().unwrap_or_else(|| "(none)".into())),
                ("valid", format!("{} to {} ({} days left)", facts.not_before, facts.not_after, facts.days_left)),
                ("SHA-256", facts.sha256.clone()),
            ];
            print_rows(out, &rows, warnings);
        }
        Item::PrivateKey { source, facts, matches, warnings } => {
            let _ = writeln!(out, "{source}: private key");
            let rows = [
                ("key", facts.key.clone()),
                ("encoding", facts.encoding.to_owned()),
                ("matches", matches.clone().unwrap_or_else(|| "(no certificate given)".into())),
            ];
            print_rows(out, &rows, warnings);
        }
        Item::Error { source, error } => {
            let _ = writeln!(out, "{source}: error: {error}");
        }
    }
}

fn print_rows(out: &mut String, rows: &[(&str, String)], warnings: &[String]) {
    use std::fmt::Write;
    for (k, v) in rows {
        let _ = writeln!(out, "  {k:<17} {v}");
    }
    for w in warnings {
        let _ = writeln!(out, "  WARNING: {w}");
    }
}
