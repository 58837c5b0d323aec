//! keyd as a child process of `sealtls up`: this binary started as
//! `sealtls keyd`, waited for until its socket answers PING, restarted when
//! it dies (at most [`MAX_RESTARTS`] within [`RESTART_WINDOW`]), and
//! stopped with SIGTERM, then SIGKILL after [`GRACE`]. Its output goes to
//! `up`'s standard error, each line prefixed with `keyd: `.
use std::collections::VecDeque;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::ValueEnum;
use sealtls_custody_proto::{Request, Response};
use sealtls_failure::{Failure, FailureClass};
use sealtls_keyless::{KeydClient, KeydEndpoint};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{oneshot, watch};
use tracing::{error, info, warn};

use crate::keyd::{BackendKind, KeydArgs, SealKind};
use crate::services::stopped;

/// How long keyd has to answer PING after being started.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long keyd has to exit after SIGTERM before it is killed.
pub const GRACE: Duration = Duration::from_secs(5);
/// Restarts allowed within [`RESTART_WINDOW`] before `up` gives up.
pub const MAX_RESTARTS: usize = 5;
/// See [`MAX_RESTARTS`].
pub const RESTART_WINDOW: Duration = Duration::from_secs(60);
/// Lines of keyd's output kept to quote when it fails to come up.
const TAIL_LINES: usize = 20;
/// Set in keyd's environment to `up`'s pid: keyd then exits when `up` does.
const PARENT_ENV: &str = "SEALTLS_KEYD_PARENT";

/// What keyd is started with: its flags, as `sealtls keyd` takes them.
#[derive(Clone)]
pub struct KeydSpec {
    /// Every flag keyd is given; its socket is `args.socket()`.
    pub args: KeydArgs,
}

/// A keyd that answered PING.
pub struct Running {
    child: Child,
}

type Tail = Arc<Mutex<VecDeque<String>>>;

fn this_program() -> Result<PathBuf, Failure> {
    std::env::current_exe().map_err(|e| {
        Failure::new(FailureClass::Config, format!("cannot find this program to start keyd from: {e}"), "run sealtls from its file")
    })
}

/// Copies `from` line by line to standard error, prefixed with `keyd: `, keeping the last lines in `tail`.
fn forward(from: impl AsyncRead + Unpin + Send + 'static, tail: Tail) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(from).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            eprintln!("keyd: {line}");
            let mut t = tail.lock().expect("tail lock");
            if t.len() == TAIL_LINES {
                t.pop_front();
            }
            t.push_back(line);
        }
    });
}

fn not_up(what: String, tail: &Tail) -> Failure {
    let lines: Vec<String> = tail.lock().expect("tail lock").iter().map(|l| format!("  keyd: {l}")).collect();
    let what = if lines.is_empty() {
        format!("{what}; keyd wrote nothing on its standard error")
    } else {
        format!("{what}; keyd's standard error ended with:\n{}", lines.join("\n"))
    };
    Failure::new(FailureClass::Config, what, "fix what keyd reports, or run `sealtls keyd` with the same flags to see it alone")
}

/// A value-enum flag value as written on the command line.
fn flag_value(v: impl ValueEnum) -> String {
    v.to_possible_value().expect("every value has a name").get_name().to_owned()
}

impl KeydSpec {
    /// keyd's socket.
    pub fn socket(&self) -> PathBuf {
        self.args.socket()
    }

    /// The flags of `sealtls keyd` that give `args`.
    fn flags(&self) -> Vec<OsString> {
        let a = &self.args;
        let mut f: Vec<OsString> = Vec::new();
        let mut flag = |name: &str, value: OsString| f.extend([OsString::from(name), value]);
        flag("--data-dir", a.data_dir.clone().into());
        flag("--socket", a.socket().into());
        if let Some(device_key) = &a.device_key {
            flag("--device-key", device_key.clone().into());
        }
        if let Some(grants) = &a.authorize {
            flag("--authorize", grants.clone().into());
        }
        flag("--backend", flag_value(a.backend).into());
        match a.backend {
            BackendKind::SealedFile => {
                flag("--seal", flag_value(a.seal).into());
                if a.seal == SealKind::Tpm {
                    flag("--tpm", a.tpm.clone().into());
                    if !a.tpm_pcrs.is_empty() {
                        flag("--tpm-pcrs", a.tpm_pcrs.iter().map(u8::to_string).collect::<Vec<_>>().join(",").into());
                    }
                }
            }
            BackendKind::Pkcs11 => {
                flag("--module", a.module.clone().into());
                if let Some(token) = &a.token {
                    flag("--token", token.into());
                }
                if let Some(pin) = &a.pin_file {
                    flag("--pin-file", pin.clone().into());
                }
            }
        }
        flag("--max-connections", a.max_connections.to_string().into());
        flag("--max-in-flight", a.max_in_flight.to_string().into());
        flag("--frame-timeout", a.frame_timeout.to_string().into());
        flag("--first-byte-timeout", a.first_byte_timeout.to_string().into());
        if let Some(status) = &a.status.status {
            flag("--status", status.to_string().into());
            if a.status.unsafe_status {
                f.push("--unsafe-status".into());
            }
        }
        f
    }

    fn command(&self) -> Result<Command, Failure> {
        let mut c = Command::new(this_program()?);
        c.arg("keyd").args(self.flags());
        // systemd's notifications are `up`'s to send, not keyd's.
        c.env_remove("NOTIFY_SOCKET");
        c.env(PARENT_ENV, std::process::id().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: Ctrl-C in a terminal reaches `up`, which stops keyd last.
            .process_group(0)
            .kill_on_drop(true);
        Ok(c)
    }

    /// Starts keyd and waits until its socket answers PING.
    pub async fn start(&self) -> Result<Running, Failure> {
        let mut child = self.command()?.spawn().map_err(|e| {
            Failure::new(FailureClass::Config, format!("cannot start keyd: {e}"), "check that the sealtls binary is still in place")
        })?;
        let tail: Tail = Arc::default();
        if let Some(out) = child.stdout.take() {
            forward(out, tail.clone());
        }
        if let Some(err) = child.stderr.take() {
            forward(err, tail.clone());
        }
        let client = KeydClient::new(KeydEndpoint::Unix(self.socket()), 1, Duration::from_secs(2));
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                // Let the last lines of its output arrive.
                tokio::time::sleep(Duration::from_millis(200)).await;
                return Err(not_up(format!("keyd exited ({status}) before answering on {}", self.socket().display()), &tail));
            }
            if let Ok(Response::Pong(_)) = client.call(&Request::Ping(b"sealtls up".to_vec())).await {
                info!(pid = child.id().unwrap_or(0), socket = %self.socket().display(), "keyd is up");
                return Ok(Running { child });
            }
            if Instant::now() > deadline {
                terminate(&mut child).await;
                return Err(not_up(
                    format!("keyd did not answer PING on {} within {} s", self.socket().display(), READY_TIMEOUT.as_secs()),
                    &tail,
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// SIGTERM, then SIGKILL if keyd is still there after [`GRACE`].
async fn terminate(child: &mut Child) {
    let Some(pid) = child.id().and_then(|p| rustix::process::Pid::from_raw(p as i32)) else { return };
    let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    match tokio::time::timeout(GRACE, child.wait()).await {
        Ok(_) => info!("keyd (child process) stopped"),
        Err(_) => {
            warn!(grace_secs = GRACE.as_secs(), "keyd did not stop after SIGTERM; killing it");
            let _ = child.kill().await;
        }
    }
}

/// The pid of the keyd child running now (0: none), kept by `supervise`.
pub type KeydPid = Arc<AtomicU32>;

impl Running {
    /// Its process id (0 once it has exited).
    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// Stops keyd (SIGTERM, then SIGKILL).
    pub async fn stop(mut self) {
        terminate(&mut self.child).await;
    }

    /// Keeps keyd running until `stop`: restarts it when it exits, and
    /// reports on `failed` when it died more than [`MAX_RESTARTS`] times
    /// within [`RESTART_WINDOW`] or could not be started again.
    /// `pid` always holds the running child's pid, for forwarding SIGHUP.
    pub async fn supervise(mut self, spec: KeydSpec, stop: watch::Receiver<bool>, failed: oneshot::Sender<Failure>, pid: KeydPid) {
        let mut restarts: VecDeque<Instant> = VecDeque::new();
        loop {
            pid.store(self.pid(), Ordering::Relaxed);
            let status = tokio::select! {
                () = stopped(stop.clone()) => {
                    terminate(&mut self.child).await;
                    return;
                }
                status = self.child.wait() => status,
            };
            let status = status.map_or_else(|e| format!("cannot be waited for: {e}"), |s| s.to_string());
            loop {
                if *stop.borrow() {
                    return;
                }
                let now = Instant::now();
                while restarts.front().is_some_and(|t| now.duration_since(*t) > RESTART_WINDOW) {
                    restarts.pop_front();
                }
                if restarts.len() >= MAX_RESTARTS {
                    error!(%status, restarts = restarts.len(), "keyd keeps dying; not restarting it again");
                    let _ = failed.send(Failure::new(
                        FailureClass::Config,
                        format!("keyd exited ({status}) after {MAX_RESTARTS} restarts within {} s", RESTART_WINDOW.as_secs()),
                        "see the keyd: lines above, fix the cause and start sealtls up again",
                    ));
                    return;
                }
                restarts.push_back(now);
                warn!(%status, restart = restarts.len(), "keyd exited; restarting it");
                match spec.start().await {
                    Ok(running) => {
                        self = running;
                        info!("keyd restarted");
                        break;
                    }
                    Err(f) => {
                        warn!(error = %f.what, "keyd did not come back");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        }
    }
}

/// Installs `domain`'s key and chain in keyd unless it has one. The key
/// file is read by a short-lived `sealtls key put` process, so that `up`,
/// which serves TLS, never holds the key keyd signs with.
pub async fn provision(socket: &Path, domain: &str, key: &Path, cert: &Path) -> Result<(), Failure> {
    let client = KeydClient::new(KeydEndpoint::Unix(socket.to_owned()), 1, Duration::from_secs(10));
    match client.call(&Request::Has(domain.into())).await {
        Ok(Response::Found(true)) => return Ok(()),
        Ok(Response::Found(false)) => {}
        Ok(r) => return Err(Failure::new(FailureClass::Protocol, format!("keyd answered HAS with {r:?}"), "report this as a bug")),
        Err(e) => return Err(crate::keyd::keyd_failure(e)),
    }
    let mut put = Command::new(this_program()?);
    put.arg("key").arg("put").arg(domain).arg(key).arg("--cert").arg(cert).arg("--keyd");
    put.arg(format!("unix:{}", socket.display())).stdin(Stdio::null()).kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), put.output())
        .await
        .map_err(|_| Failure::new(FailureClass::Network, "sealtls key put did not finish within 60 s", "see keyd's log"))?
        .map_err(|e| Failure::new(FailureClass::Config, format!("cannot run sealtls key put: {e}"), "check the sealtls binary"))?;
    if !out.status.success() {
        let text = String::from_utf8_lossy(&out.stderr);
        return Err(Failure::new(
            FailureClass::Config,
            format!("installing {domain}'s key in keyd failed ({}): {}", out.status, text.trim()),
            format!("check {} and {}", key.display(), cert.display()),
        ));
    }
    info!(domain, key = %key.display(), "development key installed in keyd");
    Ok(())
}

/// In keyd started by `up`: stop (as on SIGTERM) when `up` goes away, however it
/// ends. Its parent is checked every second: a parent-death signal would follow
/// the thread that started keyd, and `up`'s threads come and go.
pub fn exit_with_parent() {
    let Some(parent) = std::env::var(PARENT_ENV).ok().and_then(|p| p.parse::<i32>().ok()) else { return };
    let parent_alive = move || rustix::process::getppid().map(|p| p.as_raw_nonzero().get()) == Some(parent);
    if !parent_alive() {
        std::process::exit(0);
    }
    std::thread::spawn(move || {
        while parent_alive() {
            std::thread::sleep(Duration::from_secs(1));
        }
        // Nothing is logged: standard error was a pipe to `up`, and is broken now.
        let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::TERM);
    });
}

#[cfg(test)]
mod tests {
    use clap::{Args, FromArgMatches};

    use super::*;

    /// The flags `up` gives its keyd parse back into the same settings.
    #[test]
    fn keyd_flags_say_what_the_spec_holds() {
        let parse = |flags: Vec<OsString>| {
            let cmd = KeydArgs::augment_args(clap::Command::new("keyd").no_binary_name(true));
            KeydArgs::from_arg_matches(&cmd.get_matches_from(flags)).unwrap()
        };
        let mut args = parse(vec![]);
        args.data_dir = "d".into();
        args.seal = SealKind::Tpm;
        args.tpm = "swtpm:host=127.0.0.1,port=2321".into();
        args.tpm_pcrs = vec![0, 7];
        args.max_in_flight = 7;
        args.authorize = Some("grants.toml".into());
        let back = parse(KeydSpec { args: args.clone() }.flags());
        assert_eq!(back.socket(), PathBuf::from("d/keyd.sock"));
        assert_eq!((back.seal, &back.tpm, back.tpm_pcrs, back.max_in_flight), (SealKind::Tpm, &args.tpm, vec![0, 7], 7));
        assert_eq!(back.authorize, args.authorize);
        args.backend = BackendKind::Pkcs11;
        args.token = Some("t".into());
        args.pin_file = Some("pin".into());
        let back = parse(KeydSpec { args }.flags());
        assert_eq!((back.backend, back.token, back.pin_file), (BackendKind::Pkcs11, Some("t".into()), Some("pin".into())));
    }
}
