//! `sealtls`: one binary, one subcommand per job.
mod acl;
mod allocator;
mod bench;
mod config;
mod endpoints;
mod identity;
mod keyd;
mod keyd_child;
mod limits;
mod notify;
mod offload;
mod pkcs11;
mod pki;
mod port_owner;
mod reload;
mod services;
mod signals;
mod stack_reload;
mod status;
mod tables;
mod tunnel;
mod up;
mod up_lock;

use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use sealtls_failure::Failure;

/// TLS endpoints whose dangerous parts are kept apart.
#[derive(Parser)]
#[command(name = "sealtls", version, about, propagate_version = true)]
struct Cli {
    /// Log as JSON lines instead of text.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a development CA and issue certificates.
    #[command(subcommand)]
    Pki(pki::PkiCommand),
    /// Describe certificates, chains and keys, with warnings in plain words.
    Inspect(pki::InspectArgs),
    /// Run a TLS echo / sink / handshake server.
    Serve(endpoints::ServeArgs),
    /// Connect to a TLS server, print what was negotiated, relay data.
    Connect(endpoints::ConnectArgs),
    /// Carry plain local connections over TLS to a server (a TLS client tunnel).
    Tunnel(tunnel::TunnelArgs),
    /// Stream a file through an echo or sink server and check it.
    Send(endpoints::SendArgs),
    /// Run the whole stack on loopback with a development PKI.
    Up(up::UpArgs),
    /// Run the echoctl_tls console (telnet 127.0.0.1 11123).
    Console(up::ConsoleArgs),
    /// Check a sealtls.toml.
    #[command(subcommand)]
    Config(config::ConfigCommand),
    /// Run the TLS offload daemon: outbound TLS for local programs over a Unix socket.
    Offload(offload::OffloadArgs),
    /// Connect to a TLS server through the offload daemon.
    OffloadClient(offload::OffloadClientArgs),
    /// Run the key-custody daemon: keys sealed to this machine (or on a PKCS#11 token) that sign for TLS servers.
    Keyd(keyd::KeydArgs),
    /// Install, list, generate and remove keys in keyd.
    #[command(subcommand)]
    Key(keyd::KeyCommand),
    /// Help with libsealtls_pkcs11.so, the PKCS#11 module whose keys live in keyd.
    #[command(subcommand)]
    Pkcs11(pkcs11::Pkcs11Command),
    /// Measure against openssl s_server (and haproxy, nginx, stunnel) in the same run.
    Bench(bench::BenchArgs),
    /// One client load of `bench proxy`, in its own process.
    #[command(hide = true)]
    BenchClient(bench::proxy::ClientArgs),
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Writes a command's report to standard output at once; a reader that
/// stops early (`| head`) is not an error.
pub fn print_report(text: &str) -> Result<(), Failure> {
    match std::io::Write::write_all(&mut std::io::stdout().lock(), text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(Failure::new(
            sealtls_failure::FailureClass::Config,
            format!("cannot write the report: {e}"),
            "check where standard output goes",
        )),
        _ => Ok(()),
    }
}

/// Prints a failure as two lines (what, fix) and turns it into its exit code.
pub fn report(failure: &Failure) -> ExitCode {
    eprintln!("error: {failure}");
    ExitCode::from(failure.class.exit_code() as u8)
}

/// The flags given on the command line to the subcommand, as `--name`
/// (defaults are not given): for a command that must say when one of them
/// has no effect.
fn given_flags(matches: &clap::ArgMatches) -> Vec<String> {
    let Some((name, sub)) = matches.subcommand() else { return Vec::new() };
    let command = Cli::command();
    let Some(flags) = command.find_subcommand(name) else { return Vec::new() };
    flags
        .get_arguments()
        .filter(|a| sub.value_source(a.get_id().as_str()) == Some(clap::parser::ValueSource::CommandLine))
        .filter_map(|a| Some(format!("--{}", a.get_long()?)))
        .collect()
}

fn main() -> ExitCode {
    // Before any thread starts: this takes the sockets systemd passed and clears their variables.
    sealtls_listen::systemd::take_from_env();
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let given = given_flags(&matches);
    init_logging(cli.log_json);
    sealtls_endpoint::signing::on_idle(allocator::thread_idles);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_park(allocator::thread_idles)
        .build()
        .expect("tokio runtime starts");
    // Commands that relay standard input may end while a read of it is still pending.
    let reads_stdin = matches!(cli.command, Command::Connect(_) | Command::OffloadClient(_));
    let result = runtime.block_on(async {
        match cli.command {
            Command::Pki(cmd) => pki::run(cmd),
            Command::Inspect(args) => pki::inspect(args),
            Command::Serve(args) => endpoints::serve(args, &given).await,
            Command::Connect(args) => endpoints::connect(args).await,
            Command::Send(args) => endpoints::send(args).await,
            Command::Tunnel(args) => tunnel::tunnel(args).await,
            Command::Up(args) => up::up(args).await,
            Command::Console(args) => up::console(args).await,
            Command::Config(cmd) => config::run(cmd),
            Command::Offload(args) => offload::offload(args).await,
            Command::OffloadClient(args) => offload::offload_client(args).await,
            Command::Keyd(args) => keyd::keyd(args).await,
            Command::Key(cmd) => keyd::key(cmd).await,
            Command::Pkcs11(cmd) => pkcs11::run(cmd),
            Command::Bench(args) => bench::run(args).await,
            Command::BenchClient(args) => bench::proxy::client(args).await,
        }
    });
    // A read of standard input still waiting (the peer closed first) must not hold the exit;
    // every other command waits for its blocking work (keyd's writes) as the runtime drops.
    if reads_stdin {
        runtime.shutdown_timeout(Duration::from_millis(500));
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => report(&failure),
    }
}
