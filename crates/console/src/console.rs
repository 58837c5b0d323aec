//! The console server: a line shell per TCP session, in the style of
//! BitVisor's telnet debug shell.
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sealtls_endpoint::{ClientAuthMode, TlsVersions};
use sealtls_failure::{Failure, FailureClass};
use sealtls_pki::inspect::CertFacts;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tracing::{info, warn};
use zeroize::Zeroizing;

use crate::client_link::{hex_of, target_of, ClientLink, LinkEvent};
use crate::command::{parse_echoctl, parse_top, EchoCommand, Malformed, TopCommand, DEFAULT_MESSAGE, TOP_HELP, USAGE};
use crate::lines::{Input, LineReader};
use crate::servers::{EchoServers, ServerSpec};

/// The longest line accepted (BitVisor's is 100; `client send` text needs more).
pub const MAX_LINE: usize = 1024;
/// Received data shown per event; the rest is counted, not printed.
const SHOW_RECEIVED: usize = 4096;
/// A session writes nothing for this long only when its peer stopped reading.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a session may take to give the token.
const TOKEN_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause before closing a session that gave a wrong token, against guessing.
const WRONG_TOKEN_PAUSE: Duration = Duration::from_secs(1);

/// Console limits and access.
#[derive(Clone)]
pub struct ConsoleOptions {
    /// When set, a session must type this before anything else.
    pub token: Option<Arc<Zeroizing<String>>>,
    /// Sessions beyond this are told to come back later.
    pub max_sessions: usize,
    /// A session idle this long is closed.
    pub idle: Duration,
    /// Address `server start` binds (the console's own address family).
    pub server_ip: IpAddr,
}

impl Default for ConsoleOptions {
    fn default() -> Self {
        Self { token: None, max_sessions: 128, idle: Duration::from_secs(15 * 60), server_ip: IpAddr::from([127, 0, 0, 1]) }
    }
}

/// Refuses a listen address that is not loopback unless remote access is
/// allowed, and remote access without a token.
pub fn check_listen(addr: SocketAddr, allow_remote: bool, has_token: bool) -> Result<(), Failure> {
    if addr.ip().is_loopback() {
        return Ok(());
    }
    if !allow_remote {
        return Err(Failure::new(
            FailureClass::Usage,
            format!("the console would listen on {addr}, which is not loopback: anyone who reaches it can start servers"),
            "listen on 127.0.0.1 (the default), or pass --allow-remote with --token-file FILE",
        ));
    }
    if !has_token {
        return Err(Failure::new(
            FailureClass::Usage,
            format!("--allow-remote on {addr} needs a token"),
            "pass --token-file FILE (a file with one line, mode 0600)",
        ));
    }
    Ok(())
}

/// The console service.
pub struct Console {
    servers: Arc<EchoServers>,
    options: ConsoleOptions,
    next_id: AtomicU64,
}

/// Which prompt a session is at.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shell {
    Token,
    Top,
    Echoctl,
}

impl Shell {
    fn prompt(self) -> &'static str {
        match self {
            Self::Token => "token: ",
            Self::Top => "> ",
            Self::Echoctl => "echoctl_tls> ",
        }
    }
}

/// What the session does after a line.
enum Flow {
    Continue,
    /// Close the session, for the reason logged.
    Close(&'static str),
}

/// Writes to the session's peer; CR LF line ends, as telnet expects.
struct Out {
    wr: OwnedWriteHalf,
}

impl Out {
    async fn raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match tokio::time::timeout(WRITE_TIMEOUT, self.wr.write_all(bytes)).await {
            Ok(r) => r,
            Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
        }
    }
    async fn text(&mut self, text: &str) -> std::io::Result<()> {
        self.raw(text.replace('\n', "\r\n").as_bytes()).await
    }
    async fn failure(&mut self, f: &Failure) -> std::io::Result<()> {
        self.text(&format!("error: {}\n  fix: {}\n", f.what, f.fix)).await
    }
}

/// One session's state.
struct Session {
    id: u64,
    peer: SocketAddr,
    shell: Shell,
    client: Option<ClientLink>,
}

/// Waits for the client's next event; never, without a client.
async fn link_event(client: &mut Option<ClientLink>) -> LinkEvent {
    match client {
        Some(link) => link.next_event().await,
        None => std::future::pending().await,
    }
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

/// Received bytes as console text: invalid UTF-8 and control characters
/// (other than newline and tab) shown as `.`, at most [`SHOW_RECEIVED`] bytes.
fn printable(data: &[u8]) -> String {
    let shown = &data[..data.len().min(SHOW_RECEIVED)];
    let mut text: String =
        String::from_utf8_lossy(shown).chars().map(|c| if c.is_control() && c != '\n' && c != '\t' { '.' } else { c }).collect();
    if data.len() > shown.len() {
        text.push_str(&format!("\n... ({} more bytes)", data.len() - shown.len()));
    }
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text
}

/// An interface name must exist on this machine.
fn check_netif(netif: &Option<String>) -> Result<(), Failure> {
    match netif {
        Some(name) if name.contains('/') || !std::path::Path::new("/sys/class/net").join(name).exists() => Err(Failure::new(
            FailureClass::Usage,
            format!("no network interface named `{}` on this machine", name.chars().take(40).collect::<String>()),
            "see `ip link` for the names, or leave netif out",
        )),
        _ => Ok(()),
    }
}

impl Console {
    /// A console driving `servers`.
    pub fn new(servers: Arc<EchoServers>, options: ConsoleOptions) -> Arc<Self> {
        Arc::new(Self { servers, options, next_id: AtomicU64::new(1) })
    }

    /// Serves sessions until `shutdown` completes; then tells open sessions
    /// and closes them. Servers started from the console keep running: stop
    /// them with [`EchoServers::stop_all`].
    pub async fn run(self: Arc<Self>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let slots = Arc::new(Semaphore::new(self.options.max_sessions));
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut sessions = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                _ = &mut shutdown => break,
                a = listener.accept() => a,
            };
            let (tcp, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "console accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                let max = self.options.max_sessions;
                warn!(%peer, max, "console session refused: too many sessions");
                tokio::spawn(async move {
                    let mut tcp = tcp;
                    let msg = format!("error: too many console sessions ({max} open)\r\n  fix: close one, or try again later\r\n");
                    let _ = tokio::time::timeout(Duration::from_secs(1), tcp.write_all(msg.as_bytes())).await;
                });
                continue;
            };
            let console = self.clone();
            let stop = stop_rx.clone();
            sessions.spawn(async move {
                console.session(tcp, peer, stop).await;
                drop(permit);
            });
            while sessions.try_join_next().is_some() {}
        }
        drop(listener);
        let _ = stop_tx.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(3), async { while sessions.join_next().await.is_some() {} }).await;
        sessions.shutdown().await;
    }

    async fn session(&self, tcp: TcpStream, peer: SocketAddr, mut stop: watch::Receiver<bool>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        info!(session = id, %peer, "console session opened");
        let (mut rd, wr) = tcp.into_split();
        let mut out = Out { wr };
        let mut lines = LineReader::new(MAX_LINE);
        let shell = if self.options.token.is_some() { Shell::Token } else { Shell::Top };
        let mut s = Session { id, peer, shell, client: None };
        let mut buf = vec![0u8; 4096];
        let why = 'session: {
            if out.raw(s.shell.prompt().as_bytes()).await.is_err() {
                break 'session "write failed";
            }
            loop {
                let idle = if s.shell == Shell::Token { TOKEN_TIMEOUT } else { self.options.idle };
                tokio::select! {
                    read = tokio::time::timeout(idle, rd.read(&mut buf)) => {
                        let n = match read {
                            Ok(Ok(0)) => break 'session "closed by peer",
                            Ok(Ok(n)) => n,
                            Ok(Err(_)) => break 'session "read failed",
                            Err(_) => {
                                let _ = out.text("\nidle for too long; closing.\n").await;
                                break 'session "idle";
                            }
                        };
                        lines.push(&buf[..n]);
                        let replies = lines.take_replies();
                        if !replies.is_empty() && out.raw(&replies).await.is_err() {
                            break 'session "write failed";
                        }
                        while let Some(input) = lines.next_input() {
                            match self.input(&mut s, &mut out, input).await {
                                Ok(Flow::Continue) => {}
                                Ok(Flow::Close(why)) => break 'session why,
                                Err(_) => break 'session "write failed",
                            }
                            if out.raw(s.shell.prompt().as_bytes()).await.is_err() {
                                break 'session "write failed";
                            }
                        }
                    }
                    event = link_event(&mut s.client) => {
                        if self.link_event(&mut s, &mut out, event).await.is_err() {
                            break 'session "write failed";
                        }
                    }
                    _ = stopped(&mut stop) => {
                        let _ = out.text("\nsealtls is stopping; session closed.\n").await;
                        break 'session "console stopped";
                    }
                }
            }
        };
        if let Some(link) = s.client.take() {
            link.close().await;
        }
        info!(session = id, %peer, reason = why, "console session closed");
    }

    async fn link_event(&self, s: &mut Session, out: &mut Out, event: LinkEvent) -> std::io::Result<()> {
        match event {
            LinkEvent::Received(data) => {
                let target = s.client.as_ref().map_or("", |l| l.target.as_str());
                let text = String::from_utf8_lossy(&data[..data.len().min(200)]).trim_end().escape_debug().to_string();
                info!(session = s.id, server = %target, bytes = data.len(), text = %text, "Received.");
                out.text(&format!("\nReceived.\n{}", printable(&data))).await?;
            }
            LinkEvent::Closed(why) => {
                let link = s.client.take();
                let target = link.as_ref().map_or(String::new(), |l| l.target.clone());
                match why {
                    None => out.text(&format!("\nthe server {target} closed the connection.\n")).await?,
                    Some(f) => {
                        out.text("\n").await?;
                        out.failure(&f).await?;
                    }
                }
                info!(session = s.id, server = %target, "client connection closed by the server");
            }
        }
        out.raw(s.shell.prompt().as_bytes()).await
    }

    async fn input(&self, s: &mut Session, out: &mut Out, input: Input) -> std::io::Result<Flow> {
        let line = match input {
            Input::Line(line) => line,
            Input::TooLong => {
                out.text(&format!("error: line longer than {MAX_LINE} bytes; ignored\n")).await?;
                return Ok(Flow::Continue);
            }
            Input::NotText => {
                out.text("error: the line holds control bytes or is not UTF-8; ignored\n").await?;
                return Ok(Flow::Continue);
            }
        };
        match s.shell {
            Shell::Token => self.token(s, out, &line).await,
            Shell::Top => self.top(s, out, &line).await,
            Shell::Echoctl => self.echoctl(s, out, &line).await,
        }
    }

    async fn token(&self, s: &mut Session, out: &mut Out, line: &str) -> std::io::Result<Flow> {
        let expected = self.options.token.as_ref().expect("token shell only with a token");
        // Digests of equal length: the comparison time says nothing about the token.
        let digest = |t: &[u8]| aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, t);
        let (given, wanted) = (digest(line.trim().as_bytes()), digest(expected.as_bytes()));
        if aws_lc_rs::constant_time::verify_slices_are_equal(given.as_ref(), wanted.as_ref()).is_ok() {
            s.shell = Shell::Top;
            return Ok(Flow::Continue);
        }
        warn!(session = s.id, peer = %s.peer, "console session gave a wrong token");
        tokio::time::sleep(WRONG_TOKEN_PAUSE).await;
        out.text("wrong token; closing.\n").await?;
        Ok(Flow::Close("wrong token"))
    }

    async fn top(&self, s: &mut Session, out: &mut Out, line: &str) -> std::io::Result<Flow> {
        match parse_top(line) {
            TopCommand::Empty => {}
            TopCommand::EchoctlTls => s.shell = Shell::Echoctl,
            TopCommand::Help => out.text(TOP_HELP).await?,
            TopCommand::Quit => return Ok(Flow::Close("quit")),
            TopCommand::Unknown(word) => {
                let word: String = word.chars().take(40).collect();
                out.text(&format!("unknown command `{word}`; type help\n")).await?;
            }
        }
        Ok(Flow::Continue)
    }

    async fn echoctl(&self, s: &mut Session, out: &mut Out, line: &str) -> std::io::Result<Flow> {
        let command = match parse_echoctl(line) {
            Ok(c) => c,
            Err(Malformed(why)) => {
                out.text(&format!("{why}\n{USAGE}")).await?;
                return Ok(Flow::Continue);
            }
        };
        info!(session = s.id, command = %line.trim(), "console command");
        let result = match command {
            EchoCommand::Leave => {
                s.shell = Shell::Top;
                return Ok(Flow::Continue);
            }
            EchoCommand::Quit => return Ok(Flow::Close("quit")),
            EchoCommand::Help => return out.text(USAGE).await.map(|_| Flow::Continue),
            EchoCommand::Status => Ok(Some(self.status(s))),
            EchoCommand::ServerStart { port, netif } => self.server_start(s, out, port, netif).await,
            EchoCommand::ServerStop(port) => self.servers.stop(port).await.map(|a| Some(format!("Stopped the TLS server on {a}.\n"))),
            EchoCommand::ServerList => Ok(Some(self.server_list())),
            EchoCommand::ClientConnect { ip, port, netif } => self.client_connect(s, out, ip, port, netif).await,
            EchoCommand::ClientSend(text) => self.client_send(s, text).await,
            EchoCommand::ClientClose => match s.client.take() {
                Some(link) => {
                    let target = link.target.clone();
                    link.close().await;
                    Ok(Some(format!("Closed the connection to {target}.\n")))
                }
                None => {
                    Err(Failure::new(FailureClass::Usage, "no client connection is open", "connect first: client connect <ipaddr> <port>"))
                }
            },
        };
        match result {
            Ok(text) => {
                if let Some(text) = text {
                    out.text(&text).await?;
                }
                out.text("Done.\n").await?;
            }
            Err(f) => {
                warn!(session = s.id, command = %line.trim(), reason = %f.what, "console command failed");
                out.failure(&f).await?;
            }
        }
        Ok(Flow::Continue)
    }

    async fn server_start(&self, s: &Session, out: &mut Out, port: u16, netif: Option<String>) -> Result<Option<String>, Failure> {
        check_netif(&netif)?;
        out.text(&format!("Starting TLS server (Port: {port})...\n"))
            .await
            .map_err(|e| Failure::new(FailureClass::Network, e.to_string(), "reconnect"))?;
        let spec = ServerSpec {
            addr: SocketAddr::new(self.options.server_ip, port),
            client_auth: ClientAuthMode::Optional,
            versions: TlsVersions::Any,
            started_by: format!("console session {} ({})", s.id, s.peer),
        };
        let addr = self.servers.start(spec).await?;
        let mut text = format!("Listening on {addr} (TLS 1.2 and 1.3, client certificate optional).\n");
        if let Some(name) = netif {
            text.push_str(&format!("note: netif {name}: the server listens on {}, the console's address\n", addr.ip()));
        }
        Ok(Some(text))
    }

    fn server_list(&self) -> String {
        let servers = self.servers.list();
        if servers.is_empty() {
            return "no echo servers run.\n".to_owned();
        }
        let mut text = String::new();
        for st in servers {
            text.push_str(&format!(
                "{:<22} tls {:<4} client certs {:<9} open {} (accepted {}, handshakes {}, failed {})  bytes in {} out {}  started by {}\n",
                st.addr,
                st.versions,
                format!("{:?}", st.client_auth).to_lowercase(),
                st.open,
                st.accepted,
                st.handshakes,
                st.failed,
                st.bytes_in,
                st.bytes_out,
                st.started_by
            ));
        }
        text
    }

    fn status(&self, s: &Session) -> String {
        let mut text = String::from("servers:\n");
        for line in self.server_list().lines() {
            text.push_str(&format!("  {line}\n"));
        }
        text.push_str("client:\n");
        match &s.client {
            Some(link) => text.push_str(&format!(
                "  {} {} {} server {}  sent {} bytes, received {} bytes\n",
                link.target,
                link.session.info.version,
                link.session.info.suite,
                link.session.info.peer_subject(),
                link.sent,
                link.received
            )),
            None => text.push_str("  not connected\n"),
        }
        text.push_str("TLS versions: each server's are listed above; the client offers 1.3 and 1.2\n");
        text
    }

    async fn client_connect(
        &self,
        s: &mut Session,
        out: &mut Out,
        ip: IpAddr,
        port: u16,
        netif: Option<String>,
    ) -> Result<Option<String>, Failure> {
        check_netif(&netif)?;
        let io = |e: std::io::Error| Failure::new(FailureClass::Network, e.to_string(), "reconnect to the console");
        if let Some(old) = s.client.take() {
            out.text(&format!("Closing the connection to {}.\n", old.target)).await.map_err(io)?;
            old.close().await;
        }
        let settings = self.servers.material().client_settings()?;
        out.text(&format!("Connecting to TLS server at {} ({})\n", target_of(ip, port), hex_of(ip))).await.map_err(io)?;
        let link = ClientLink::open(ip, port, &settings).await?;
        let info = &link.session.info;
        let mut text = format!("Connected: {} {} {}; server {}\n", info.version, info.suite, info.group, info.peer_subject());
        text.push_str(&format!("verification: {}\n", link.session.verification));
        if settings.legacy_v1_leaf {
            let facts = link.peer_leaf.as_ref().and_then(|c| CertFacts::from_der(c).ok());
            let problems = facts.map(|f| f.warnings(true)).unwrap_or_default();
            text.push_str("warning: legacy_v1_leaf = true: only the signature chain to ca_cert and the validity period were checked\n");
            for p in &problems {
                text.push_str(&format!("warning: this certificate would be refused without legacy_v1_leaf: {p}\n"));
            }
            warn!(session = s.id, server = %link.target, problems = problems.len(), "server certificate accepted under legacy_v1_leaf");
        }
        info!(session = s.id, server = %link.target, version = %info.version, suite = %info.suite, "client connected");
        s.client = Some(link);
        Ok(Some(text))
    }

    async fn client_send(&self, s: &mut Session, text: Option<String>) -> Result<Option<String>, Failure> {
        let Some(link) = s.client.as_mut() else {
            return Err(Failure::new(FailureClass::Usage, "no client connection is open", "connect first: client connect <ipaddr> <port>"));
        };
        let message = text.map_or_else(|| DEFAULT_MESSAGE.to_owned(), |t| format!("{t}\n"));
        if let Err(f) = link.send(message.as_bytes()).await {
            s.client = None;
            return Err(f);
        }
        info!(session = s.id, server = %link.target, bytes = message.len(), "client sent");
        Ok(Some(format!("Sent {} bytes to {}.\n", message.len(), link.target)))
    }
}
