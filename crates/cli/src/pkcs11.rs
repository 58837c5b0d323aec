//! `sealtls pkcs11 openssl-conf`: the OpenSSL configuration that loads the
//! pkcs11 engine (libp11) with libsealtls_pkcs11.so, for nginx and other
//! OpenSSL programs (docs/pkcs11.md).
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::{Args, Subcommand};
use sealtls_failure::{Failure, FailureClass};

#[derive(Subcommand)]
pub enum Pkcs11Command {
    /// Print an openssl.cnf that loads OpenSSL's pkcs11 engine with libsealtls_pkcs11.so.
    OpensslConf(OpensslConfArgs),
}

#[derive(Args)]
pub struct OpensslConfArgs {
    /// The module (default: libsealtls_pkcs11.so next to this binary, where cargo builds it).
    #[arg(long, value_name = "FILE")]
    pub module: Option<PathBuf>,
}

pub fn run(cmd: Pkcs11Command) -> Result<(), Failure> {
    match cmd {
        Pkcs11Command::OpensslConf(args) => {
            print!("{}", openssl_conf(&module(args.module)?)?);
            Ok(())
        }
    }
}

/// `given`, else the module next to this binary; it must exist.
pub fn module(given: Option<PathBuf>) -> Result<PathBuf, Failure> {
    let path = match given {
        Some(p) => p,
        None => std::env::current_exe()
            .map_err(|e| Failure::new(FailureClass::Config, format!("cannot find this binary: {e}"), "give --module"))?
            .with_file_name("libsealtls_pkcs11.so"),
    };
    existing(path, "the PKCS#11 module", "build it with `cargo build --release -p sealtls-pkcs11`, or name it with --module")
}

/// OpenSSL's pkcs11 engine (libp11), in the engines directory `openssl version -e` names.
fn engine() -> Result<PathBuf, Failure> {
    let out = Command::new("openssl")
        .args(["version", "-e"])
        .output()
        .map_err(|e| Failure::new(FailureClass::Config, format!("cannot run openssl: {e}"), "install openssl (apt-get install openssl)"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let path = Path::new(text.split('"').nth(1).unwrap_or_default()).join("pkcs11.so");
    existing(path, "OpenSSL's pkcs11 engine", "apt-get install libengine-pkcs11-openssl")
}

/// `path` made absolute (programs load it from their own directory; a
/// symbolic link is kept, so that a package upgrade behind it still works),
/// if it exists; else a failure naming `what` it is, and `fix`.
fn existing(path: PathBuf, what: &str, fix: &str) -> Result<PathBuf, Failure> {
    let missing = |why: String| Failure::new(FailureClass::Config, format!("{what} {} is missing{why}", path.display()), fix);
    let absolute = std::path::absolute(&path).map_err(|e| missing(format!(" ({e})")))?;
    match absolute.exists() {
        true => Ok(absolute),
        false => Err(missing(String::new())),
    }
}

/// The configuration: the engine loaded and initialized at start-up, with `module`.
pub fn openssl_conf(module: &Path) -> Result<String, Failure> {
    Ok(format!(
        "# Load with OPENSSL_CONF=FILE; keys then read as engine:pkcs11:pkcs11:token=sealtls;object=DOMAIN;type=private\n\
         openssl_conf = openssl_init\n[openssl_init]\nengines = engine_section\n[engine_section]\npkcs11 = pkcs11_section\n\
         [pkcs11_section]\nengine_id = pkcs11\ndynamic_path = {}\nMODULE_PATH = {}\ninit = 1\n",
        engine()?.display(),
        module.display()
    ))
}
