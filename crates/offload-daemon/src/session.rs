//! One client of the daemon: its frames in, its answers out, its slot's
//! state machine and its outbound connection, all driven by one task, so a
//! slow or hostile client can only ever hold itself up.
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use sealtls_offload_proto::proto::{
    decode_request, encode_data, encode_read_response, split_bulk, Bulk, Op, Request, Response, BODY_OVERHEAD, READABLE, WRITABLE,
};
use sealtls_offload_proto::{Action, Code, Slot, State};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::shared::Shared;
use crate::upstream::{End, Target, Tls};

/// How long the last words to a departing client may take.
const GOODBYE_LIMIT: Duration = Duration::from_secs(1);
/// Bytes read from the client's socket at a time.
const READ_CHUNK: usize = 64 * 1024;

/// The outbound connection of a slot.
enum Link {
    None,
    /// TCP is up, no TLS yet.
    Tcp(TcpStream),
    /// The reconnect after a reset failed; the next handshake reports why.
    Failed(String),
    /// The TLS session.
    Tls(Box<Tls>),
}

/// What a connect or handshake under way delivers.
enum Outcome {
    Connected(Result<TcpStream, String>),
    Reconnected(Result<TcpStream, String>),
    Handshaked(Result<Tls, String>),
}

type Pending = Pin<Box<dyn Future<Output = Outcome> + Send>>;

/// A call held back until it can be answered (READ with wait, WAIT).
#[derive(Clone, Copy)]
enum Waiting {
    Read(usize),
    Events(u8),
}

/// Why a conversation ended.
enum Ending {
    /// The client closed its socket or it broke.
    ClientLeft,
    /// The daemon ends it; the client is told why.
    Goodbye(Code, String),
}

/// One admitted client.
pub(crate) struct Session {
    shared: Arc<Shared>,
    badge: u32,
    slot: Slot,
    target: Option<Target>,
    link: Link,
    pending: Option<Pending>,
    waiting: Option<Waiting>,
    /// Streaming: receive credit left, and whether the end was pushed.
    streaming: Option<usize>,
    end_pushed: bool,
    /// A breach of the protocol that ends the conversation.
    violation: Option<String>,
    rx: Vec<u8>,
    tx: Vec<u8>,
}

impl Session {
    pub(crate) fn new(shared: Arc<Shared>, badge: u32) -> Self {
        Self {
            shared,
            badge,
            slot: Slot::new(),
            target: None,
            link: Link::None,
            pending: None,
            waiting: None,
            streaming: None,
            end_pushed: false,
            violation: None,
            rx: Vec::with_capacity(READ_CHUNK),
            tx: Vec::new(),
        }
    }

    /// Greets the client and serves it until it leaves or `stop` turns true;
    /// then closes its outbound connection with close_notify.
    pub(crate) async fn run(mut self, stream: UnixStream, mut stop: watch::Receiver<bool>) {
        let (mut reader, mut writer) = stream.into_split();
        let welcome = Response::Welcome { code: Code::Success, badge: self.badge, buffer_size: self.shared.buffer_size as u32 };
        welcome.encode(&mut self.tx);
        match self.converse(&mut reader, &mut writer, &mut stop).await {
            Ending::ClientLeft => debug!(badge = self.badge, "client left"),
            Ending::Goodbye(code, reason) => {
                info!(badge = self.badge, code = code.name(), %reason, "closing the client's socket");
                let mut last = Vec::new();
                Response::Goodbye { code, reason }.encode(&mut last);
                let _ = tokio::time::timeout(GOODBYE_LIMIT, writer.write_all(&last)).await;
            }
        }
        self.close_link(true);
    }

    async fn converse(&mut self, reader: &mut OwnedReadHalf, writer: &mut OwnedWriteHalf, stop: &mut watch::Receiver<bool>) -> Ending {
        let max_body = self.shared.buffer_size + BODY_OVERHEAD;
        loop {
            if let Some(ending) = self.take_requests(max_body) {
                return ending;
            }
            self.answer_wait_if_ready();
            self.push_stream();
            if !self.tx.is_empty() {
                let limit = self.shared.answer_timeout;
                match tokio::time::timeout(limit, writer.write_all(&self.tx)).await {
                    Ok(Ok(())) => self.tx.clear(),
                    Ok(Err(_)) => return Ending::ClientLeft,
                    Err(_) => return Ending::Goodbye(Code::Aborted, format!("answers left unread for {} s", limit.as_secs_f32())),
                }
            }
            self.rx.reserve(READ_CHUNK);
            let has_pending = self.pending.is_some();
            let has_session = matches!(self.link, Link::Tls(_));
            tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => return Ending::Goodbye(Code::Aborted, "the offload daemon is shutting down".into()),
                outcome = poll_pending(&mut self.pending), if has_pending => {
                    self.pending = None;
                    self.finish(outcome);
                }
                () = poll_link(&mut self.link), if has_session => {}
                read = reader.read_buf(&mut self.rx) => match read {
                    Ok(0) | Err(_) => return Ending::ClientLeft,
                    Ok(_) => {}
                },
            }
        }
    }

    /// Handles every complete request received so far, in order.
    fn take_requests(&mut self, max_body: usize) -> Option<Ending> {
        let rx = std::mem::take(&mut self.rx);
        let mut used = 0;
        let ending = loop {
            if let Some((Bulk::Send(data), n)) = split_bulk(&rx[used..], max_body) {
                // The data path: from the socket buffer straight into the queue.
                used += n;
                self.send(data);
            } else {
                match decode_request(&rx[used..], max_body) {
                    Ok(Some((request, n))) => {
                        used += n;
                        // CREDIT has no answer, so it leaves waits alone.
                        if !matches!(request, Request::Credit(_)) {
                            self.interrupt_wait();
                        }
                        self.handle(request);
                    }
                    Ok(None) => break None,
                    Err(e) => {
                        break Some(Ending::Goodbye(Code::InvalidParameter, format!("bad frame: {e}; the daemon closes the connection")))
                    }
                }
            }
            if let Some(why) = self.violation.take() {
                break Some(Ending::Goodbye(Code::InvalidParameter, format!("{why}; the daemon closes the connection")));
            }
        };
        self.rx = rx;
        self.rx.drain(..used);
        ending
    }

    fn respond(&mut self, response: Response) {
        match &response {
            Response::Status { op, code } | Response::Text { op, code, .. } => self.shared.metrics.answered(*op, *code),
            Response::Written { code, .. } => self.shared.metrics.answered(Op::Write, *code),
            Response::Streaming { code, .. } => self.shared.metrics.answered(Op::Stream, *code),
            _ => {}
        }
        response.encode(&mut self.tx);
    }

    fn handle(&mut self, request: Request) {
        match request {
            Request::Connect { host, port } => {
                let (code, action) = self.slot.connect(&host, port);
                self.apply(action);
                if code == Code::NetworkConnShutdown {
                    warn!(badge = self.badge, host, port, why = self.slot.detail().unwrap_or(""), "connect failed");
                }
                self.respond(Response::Status { op: Op::Connect, code });
            }
            Request::Disconnect => {
                let (code, action) = self.slot.disconnect();
                self.apply(action);
                self.respond(Response::Status { op: Op::Disconnect, code });
            }
            Request::Handshake => {
                let (code, action) = self.slot.handshake();
                self.apply(action);
                self.respond(Response::Status { op: Op::Handshake, code });
            }
            Request::Reset => {
                let (code, action) = self.slot.reset();
                self.apply(action);
                self.respond(Response::Status { op: Op::Reset, code });
            }
            Request::Write(data) => {
                let (code, taken) = self.write(&data);
                self.respond(Response::Written { code, taken: taken as u32 });
            }
            Request::Read { size, wait } => {
                if let Err(code) = self.slot.check_transfer(size as usize, self.shared.buffer_size) {
                    self.shared.metrics.answered(Op::Read, code);
                    encode_read_response(&mut self.tx, code, &[]);
                } else if !self.try_read(size as usize) {
                    if wait {
                        self.waiting = Some(Waiting::Read(size as usize));
                    } else {
                        self.shared.metrics.answered(Op::Read, Code::WouldBlock);
                        encode_read_response(&mut self.tx, Code::WouldBlock, &[]);
                    }
                }
            }
            Request::Wait { interest } => {
                if self.ready(interest) {
                    self.respond(Response::Status { op: Op::Wait, code: Code::Success });
                } else {
                    self.waiting = Some(Waiting::Events(interest));
                }
            }
            Request::Detail => {
                let text = self.slot.detail().unwrap_or_default().to_owned();
                self.respond(Response::Text { op: Op::Detail, code: Code::Success, text });
            }
            Request::Stream { window } => {
                let send_window = self.shared.queue_size() as u32;
                let code = match (&self.link, self.slot.state()) {
                    (Link::Tls(_), State::Handshaked) => {
                        self.streaming = Some(window as usize);
                        Code::Success
                    }
                    _ => Code::InvalidState,
                };
                let send_window = if code == Code::Success { send_window } else { 0 };
                self.respond(Response::Streaming { code, send_window });
            }
            Request::Send(data) => self.send(&data),
            Request::Credit(n) => {
                if let Some(credit) = self.streaming.as_mut() {
                    *credit = credit.saturating_add(n as usize);
                }
            }
            Request::Session => {
                let response = match (&self.link, self.slot.state()) {
                    (Link::Tls(tls), State::Handshaked) => {
                        Response::Text { op: Op::Session, code: Code::Success, text: tls.session.clone() }
                    }
                    _ => Response::Text { op: Op::Session, code: Code::InvalidState, text: String::new() },
                };
                self.respond(response);
            }
        }
    }

    /// Does what the state machine asked for.
    fn apply(&mut self, action: Action) {
        let dialer = self.shared.dialer.clone();
        match action {
            Action::None => {}
            Action::StartConnect { host, port } => {
                let target = Target { host, port };
                self.target = Some(target.clone());
                self.pending = Some(Box::pin(async move { Outcome::Connected(dialer.connect(&target).await) }));
            }
            Action::StartHandshake => {
                let Some(target) = self.target.clone() else {
                    self.slot.handshake_finished(Err("no connection to hand shake over".into()));
                    return;
                };
                match std::mem::replace(&mut self.link, Link::None) {
                    Link::Tcp(tcp) => {
                        self.pending = Some(Box::pin(async move { Outcome::Handshaked(dialer.handshake(tcp, &target).await) }))
                    }
                    Link::Failed(why) => self.slot.handshake_finished(Err(why)),
                    _ => match self.pending.take() {
                        // The reconnect after a reset is still under way: hand shake once it is done.
                        Some(reconnect) => {
                            self.pending = Some(Box::pin(async move {
                                match reconnect.await {
                                    Outcome::Reconnected(Ok(tcp)) => Outcome::Handshaked(dialer.handshake(tcp, &target).await),
                                    Outcome::Reconnected(Err(why)) => Outcome::Handshaked(Err(why)),
                                    other => other,
                                }
                            }))
                        }
                        None => self.slot.handshake_finished(Err("no connection to hand shake over".into())),
                    },
                }
            }
            Action::Close { close_notify } => {
                self.pending = None;
                self.close_link(close_notify);
            }
            Action::ResetSession => {
                self.close_link(true);
                if let Some(target) = self.target.clone() {
                    self.pending = Some(Box::pin(async move { Outcome::Reconnected(dialer.connect(&target).await) }));
                }
            }
        }
    }

    /// Takes the result of a connect or handshake.
    fn finish(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Connected(Ok(tcp)) => {
                self.link = Link::Tcp(tcp);
                self.slot.connect_finished(Ok(()));
            }
            Outcome::Connected(Err(why)) => self.slot.connect_finished(Err(why)),
            Outcome::Reconnected(result) => self.link = result.map_or_else(Link::Failed, Link::Tcp),
            Outcome::Handshaked(Ok(tls)) => {
                info!(badge = self.badge, session = %tls.session, "handshake done");
                self.link = Link::Tls(Box::new(tls));
                self.slot.handshake_finished(Ok(()));
            }
            Outcome::Handshaked(Err(why)) => {
                warn!(badge = self.badge, %why, "handshake failed");
                self.slot.handshake_finished(Err(why));
            }
        }
    }

    /// The session's end, if it ended: CONNECTION_CLOSED after close_notify,
    /// NETWORK_CONN_SHUTDOWN (and DISCONNECTED) after a break.
    fn ended(&mut self) -> Option<Code> {
        let Link::Tls(tls) = &self.link else { return Some(Code::InvalidState) };
        match &tls.end {
            None => None,
            Some(End::Closed) => Some(Code::ConnectionClosed),
            Some(End::Broken(why)) => {
                let (code, action) = self.slot.transfer_failed(why.clone());
                self.apply(action);
                Some(code)
            }
        }
    }

    fn write(&mut self, data: &[u8]) -> (Code, usize) {
        if let Err(code) = self.slot.check_transfer(data.len(), self.shared.buffer_size) {
            return (code, 0);
        }
        if let Some(code) = self.ended() {
            return (code, 0);
        }
        let capacity = self.shared.queue_size();
        let Link::Tls(tls) = &mut self.link else { return (Code::InvalidState, 0) };
        match tls.queues(capacity).1.push(data) {
            0 => (Code::WouldBlock, 0),
            n => (Code::Success, n),
        }
    }

    /// SEND: queue the bytes. The client keeps within the send window, so
    /// they always fit; after the session ended they are dropped (the
    /// client learns of the end from the pushed DATA frame).
    fn send(&mut self, data: &[u8]) {
        if self.streaming.is_none() {
            self.violation = Some("SEND before STREAM".into());
            return;
        }
        if data.is_empty() || data.len() > self.shared.buffer_size {
            self.violation = Some(format!("SEND of {} bytes (1 to {} allowed)", data.len(), self.shared.buffer_size));
            return;
        }
        let capacity = self.shared.queue_size();
        if let Link::Tls(tls) = &mut self.link {
            if tls.end.is_none() && tls.queues(capacity).1.push(data) < data.len() {
                self.violation = Some("SEND beyond the send window".into());
            }
        }
    }

    /// Streaming: pushes received data within the credit, gives back send
    /// window, and reports the end of the session once.
    fn push_stream(&mut self) {
        let Some(mut credit) = self.streaming else { return };
        let (capacity, buffer) = (self.shared.queue_size(), self.shared.buffer_size);
        let Link::Tls(tls) = &mut self.link else { return };
        // Given back in quarters of the window: enough to keep the client
        // sending, without a frame (and a wake-up) per TLS record.
        if tls.drained >= capacity / 4 {
            Response::Sent(tls.drained as u32).encode(&mut self.tx);
            tls.drained = 0;
        }
        let inbound = tls.queues(capacity).0;
        while credit > 0 && !inbound.is_empty() {
            let n = credit.min(buffer).min(inbound.data().len());
            encode_data(&mut self.tx, Code::Success, &inbound.data()[..n]);
            inbound.consume(n);
            credit -= n;
        }
        let drained = inbound.is_empty();
        self.streaming = Some(credit);
        if drained && tls.end.is_some() && !self.end_pushed {
            self.end_pushed = true;
            let code = self.ended().unwrap_or(Code::ConnectionClosed);
            encode_data(&mut self.tx, code, &[]);
        }
    }

    /// Answers a READ of at most `size` bytes if it can be answered now.
    fn try_read(&mut self, size: usize) -> bool {
        let capacity = self.shared.queue_size();
        if let Link::Tls(tls) = &mut self.link {
            let inbound = tls.queues(capacity).0;
            if !inbound.is_empty() {
                let n = size.min(inbound.data().len());
                self.shared.metrics.answered(Op::Read, Code::Success);
                encode_read_response(&mut self.tx, Code::Success, &inbound.data()[..n]);
                inbound.consume(n);
                return true;
            }
        }
        match self.ended() {
            Some(code) => {
                self.shared.metrics.answered(Op::Read, code);
                encode_read_response(&mut self.tx, code, &[]);
                true
            }
            None => false,
        }
    }

    /// Whether a WAIT with `interest` can be answered.
    fn ready(&self, interest: u8) -> bool {
        match self.slot.state() {
            State::ConnectionWaiting | State::PendingHandshake => self.pending.is_none(),
            State::Handshaked => match &self.link {
                Link::Tls(tls) => {
                    tls.end.is_some() || (interest & READABLE != 0 && tls.readable()) || (interest & WRITABLE != 0 && tls.writable())
                }
                _ => true,
            },
            _ => true,
        }
    }

    fn answer_wait_if_ready(&mut self) {
        let waiting = self.waiting;
        match waiting {
            Some(Waiting::Read(size)) if self.try_read(size) => self.waiting = None,
            Some(Waiting::Events(interest)) if self.ready(interest) => {
                self.waiting = None;
                self.respond(Response::Status { op: Op::Wait, code: Code::Success });
            }
            _ => {}
        }
    }

    /// A new request ends a wait: it is answered now, WOULD_BLOCK if nothing happened.
    fn interrupt_wait(&mut self) {
        self.answer_wait_if_ready();
        match self.waiting.take() {
            Some(Waiting::Read(_)) => {
                self.shared.metrics.answered(Op::Read, Code::WouldBlock);
                encode_read_response(&mut self.tx, Code::WouldBlock, &[])
            }
            Some(Waiting::Events(_)) => self.respond(Response::Status { op: Op::Wait, code: Code::WouldBlock }),
            None => {}
        }
    }

    fn close_link(&mut self, close_notify: bool) {
        self.streaming = None;
        self.end_pushed = false;
        if let Link::Tls(tls) = std::mem::replace(&mut self.link, Link::None) {
            tls.close(close_notify);
        }
    }
}

async fn poll_pending(pending: &mut Option<Pending>) -> Outcome {
    match pending {
        Some(future) => future.as_mut().await,
        None => std::future::pending().await,
    }
}

async fn poll_link(link: &mut Link) {
    match link {
        Link::Tls(tls) => std::future::poll_fn(|cx| tls.poll_io(cx)).await,
        _ => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests;
