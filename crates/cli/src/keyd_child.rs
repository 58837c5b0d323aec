//! keyd as a child process of `sealtls up`: this binary started as
//! `sealtls keyd`, waited for until its socket answers PING, restarted when
//! it dies (at most [`MAX_RESTARTS`] within [`RESTART_WINDOW`]), and
//! stopped with SIGTERM, then SIGKILL after [`GRACE`]. Its output goes to
//! `up`'s standard error, each line prefixed with `keyd: `.
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sealtls_custody_proto::{Request, Response};
use sealtls_failure::{Failure, FailureClass};
use sealtls_keyless::{KeydClient, KeydEndpoint};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{oneshot, watch};
use tracing::{error, info, warn};

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

/// What keyd is started with.
#[derive(Clone)]
pub struct KeydSpec {
    pub data_dir: PathBuf,
    pub device_key: PathBuf,
    pub socket: PathBuf,
    /// keyd's `--authorize` grant file, if any.
    pub authorize: Option<PathBuf>,
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

impl KeydSpec {
    fn command(&self) -> Result<Command, Failure> {
        let mut c = Command::new(this_program()?);
        c.arg("keyd").arg("--data-dir").arg(&self.data_dir).arg("--device-key").arg(&self.device_key).arg("--socket").arg(&self.socket);
        if let Some(grants) = &self.authorize {
            c.arg("--authorize").arg(grants);
        }
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
        let client = KeydClient::new(KeydEndpoint::Unix(self.socket.clone()), 1, Duration::from_secs(2));
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                // Let the last lines of its output arrive.
                tokio::time::sleep(Duration::from_millis(200)).await;
                return Err(not_up(format!("keyd exited ({status}) before answering on {}", self.socket.display()), &tail));
            }
            if let Ok(Response::Pong(_)) = client.call(&Request::Ping(b"sealtls up".to_vec())).await {
                info!(pid = child.id().unwrap_or(0), socket = %self.socket.display(), "keyd is up");
                return Ok(Running { child });
            }
            if Instant::now() > deadline {
                terminate(&mut child).await;
                return Err(not_up(
                    format!("keyd did not answer PING on {} within {} s", self.socket.display(), READY_TIMEOUT.as_secs()),
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
