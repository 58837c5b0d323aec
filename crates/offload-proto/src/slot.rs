//! One client's connection, as TRENTOS TlsServer keeps it: a state machine
//! that answers each call with an OS_Error_t value and tells the runtime
//! what to start or stop ([`Action`]). The runtime reports back when a
//! started TCP connect or TLS handshake finishes.
use crate::code::Code;

/// The per-client states of TlsServer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// No connection.
    Disconnected,
    /// A TCP connect is under way.
    ConnectionWaiting,
    /// The TCP connect succeeded; the next `connect` call confirms it.
    ConnectionConfirmed,
    /// The TCP connect failed; the next `connect` call reports it.
    ConnectionError,
    /// TCP is up, no TLS session yet.
    Connected,
    /// A TLS handshake is under way.
    PendingHandshake,
    /// The TLS session is up: read and write are allowed.
    Handshaked,
}

/// What the runtime must do after a call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing.
    None,
    /// Open a TCP connection; report with [`Slot::connect_finished`].
    StartConnect {
        /// Host name or address, as given.
        host: String,
        /// Port, 1-65535.
        port: u16,
    },
    /// Start the TLS handshake; report with [`Slot::handshake_finished`].
    StartHandshake,
    /// Drop the connection (and any connect or handshake under way),
    /// sending close_notify first when `close_notify`.
    Close {
        /// Whether a TLS session is open and should be closed cleanly.
        close_notify: bool,
    },
    /// End the TLS session (close_notify) and open a fresh TCP connection to
    /// the same host and port, so that the next handshake starts anew.
    ResetSession,
}

/// One client's connection state.
#[derive(Debug)]
pub struct Slot {
    state: State,
    handshake_result: Option<Result<(), String>>,
    detail: Option<String>,
}

impl Default for Slot {
    fn default() -> Self {
        Self { state: State::Disconnected, handshake_result: None, detail: None }
    }
}

impl Slot {
    /// A slot with no connection.
    pub fn new() -> Self {
        Self::default()
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Why the last connect, handshake or transfer failed, in words.
    pub fn detail(&self) -> Option<&str> {
        self.detail.as_deref()
    }

    /// `connect(host, port)`: starts, polls and confirms a TCP connection.
    pub fn connect(&mut self, host: &str, port: u16) -> (Code, Action) {
        if host.is_empty() || port == 0 {
            return (Code::InvalidParameter, Action::None);
        }
        match self.state {
            State::Disconnected => {
                self.state = State::ConnectionWaiting;
                self.detail = None;
                (Code::WouldBlock, Action::StartConnect { host: host.to_owned(), port })
            }
            State::ConnectionWaiting => (Code::WouldBlock, Action::None),
            State::ConnectionConfirmed => {
                self.state = State::Connected;
                (Code::Success, Action::None)
            }
            State::ConnectionError => {
                self.state = State::Disconnected;
                (Code::NetworkConnShutdown, Action::None)
            }
            State::Connected | State::PendingHandshake | State::Handshaked => (Code::InvalidState, Action::None),
        }
    }

    /// The runtime's report on a TCP connect started by [`Action::StartConnect`].
    pub fn connect_finished(&mut self, result: Result<(), String>) {
        if self.state != State::ConnectionWaiting {
            return;
        }
        match result {
            Ok(()) => self.state = State::ConnectionConfirmed,
            Err(why) => {
                self.detail = Some(why);
                self.state = State::ConnectionError;
            }
        }
    }

    /// `disconnect()`: closes whatever is open.
    pub fn disconnect(&mut self) -> (Code, Action) {
        let close_notify = match self.state {
            State::Disconnected => return (Code::InvalidState, Action::None),
            State::Handshaked => true,
            _ => false,
        };
        self.state = State::Disconnected;
        self.handshake_result = None;
        (Code::Success, Action::Close { close_notify })
    }

    /// `handshake()`: starts and polls the TLS handshake. A failed handshake
    /// returns ABORTED (the reason is in [`Slot::detail`]) and closes the
    /// connection: the slot is DISCONNECTED and can connect again.
    pub fn handshake(&mut self) -> (Code, Action) {
        match self.state {
            State::Connected => {
                self.state = State::PendingHandshake;
                self.detail = None;
                (Code::WouldBlock, Action::StartHandshake)
            }
            State::PendingHandshake => match self.handshake_result.take() {
                None => (Code::WouldBlock, Action::None),
                Some(Ok(())) => {
                    self.state = State::Handshaked;
                    (Code::Success, Action::None)
                }
                Some(Err(why)) => {
                    self.detail = Some(why);
                    self.state = State::Disconnected;
                    (Code::Aborted, Action::Close { close_notify: false })
                }
            },
            State::Handshaked => (Code::OperationDenied, Action::None),
            _ => (Code::InvalidState, Action::None),
        }
    }

    /// The runtime's report on a handshake started by [`Action::StartHandshake`].
    pub fn handshake_finished(&mut self, result: Result<(), String>) {
        if self.state == State::PendingHandshake {
            self.handshake_result = Some(result);
        }
    }

    /// Whether `read` or `write` of `size` bytes may proceed, with a
    /// buffer (dataport) of `buffer` bytes.
    pub fn check_transfer(&self, size: usize, buffer: usize) -> Result<(), Code> {
        if self.state != State::Handshaked {
            return Err(Code::InvalidState);
        }
        if size == 0 || size > buffer {
            return Err(Code::InvalidParameter);
        }
        Ok(())
    }

    /// The runtime's report that the connection broke during a transfer:
    /// the slot is DISCONNECTED, the call returns NETWORK_CONN_SHUTDOWN.
    pub fn transfer_failed(&mut self, why: String) -> (Code, Action) {
        self.detail = Some(why);
        self.state = State::Disconnected;
        (Code::NetworkConnShutdown, Action::Close { close_notify: false })
    }

    /// `reset()`: ends the TLS session and goes back to CONNECTED.
    pub fn reset(&mut self) -> (Code, Action) {
        match self.state {
            State::PendingHandshake | State::Handshaked => {
                self.state = State::Connected;
                self.handshake_result = None;
                (Code::Success, Action::ResetSession)
            }
            _ => (Code::InvalidState, Action::None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Code::*;

    fn connected() -> Slot {
        let mut s = Slot::new();
        s.connect("example.test", 443);
        s.connect_finished(Ok(()));
        assert_eq!(s.connect("example.test", 443), (Success, Action::None));
        s
    }

    fn handshaked() -> Slot {
        let mut s = connected();
        s.handshake();
        s.handshake_finished(Ok(()));
        assert_eq!(s.handshake(), (Success, Action::None));
        s
    }

    #[test]
    fn connect_transitions() {
        let mut s = Slot::new();
        assert_eq!(s.connect("", 443), (InvalidParameter, Action::None));
        assert_eq!(s.connect("h", 0), (InvalidParameter, Action::None));
        assert_eq!(s.state(), State::Disconnected);
        assert_eq!(s.connect("h", 443), (WouldBlock, Action::StartConnect { host: "h".into(), port: 443 }));
        assert_eq!(s.state(), State::ConnectionWaiting);
        assert_eq!(s.connect("h", 443), (WouldBlock, Action::None));
        s.connect_finished(Ok(()));
        assert_eq!(s.state(), State::ConnectionConfirmed);
        assert_eq!(s.connect("h", 443), (Success, Action::None));
        assert_eq!(s.state(), State::Connected);
        assert_eq!(s.connect("h", 443), (InvalidState, Action::None));
    }

    #[test]
    fn failed_connect_is_reported_once_then_disconnected() {
        let mut s = Slot::new();
        s.connect("h", 1);
        s.connect_finished(Err("connection refused".into()));
        assert_eq!(s.state(), State::ConnectionError);
        assert_eq!(s.connect("h", 1), (NetworkConnShutdown, Action::None));
        assert_eq!(s.state(), State::Disconnected);
        assert_eq!(s.detail(), Some("connection refused"));
    }

    #[test]
    fn disconnect_transitions() {
        let mut s = Slot::new();
        assert_eq!(s.disconnect(), (InvalidState, Action::None));
        s.connect("h", 1);
        assert_eq!(s.disconnect(), (Success, Action::Close { close_notify: false }));
        // A connect finishing after the disconnect changes nothing.
        s.connect_finished(Ok(()));
        assert_eq!(s.state(), State::Disconnected);
        let mut s = connected();
        assert_eq!(s.disconnect(), (Success, Action::Close { close_notify: false }));
        let mut s = handshaked();
        assert_eq!(s.disconnect(), (Success, Action::Close { close_notify: true }));
        assert_eq!(s.disconnect(), (InvalidState, Action::None));
    }

    #[test]
    fn handshake_transitions() {
        let mut s = Slot::new();
        assert_eq!(s.handshake(), (InvalidState, Action::None));
        s.connect("h", 1);
        assert_eq!(s.handshake(), (InvalidState, Action::None));
        let mut s = connected();
        assert_eq!(s.handshake(), (WouldBlock, Action::StartHandshake));
        assert_eq!(s.state(), State::PendingHandshake);
        assert_eq!(s.handshake(), (WouldBlock, Action::None));
        s.handshake_finished(Ok(()));
        assert_eq!(s.handshake(), (Success, Action::None));
        assert_eq!(s.state(), State::Handshaked);
        assert_eq!(s.handshake(), (OperationDenied, Action::None));
    }

    #[test]
    fn failed_handshake_aborts_with_the_reason() {
        let mut s = connected();
        s.handshake();
        s.handshake_finished(Err("certificate signed by an untrusted CA".into()));
        assert_eq!(s.handshake(), (Aborted, Action::Close { close_notify: false }));
        assert_eq!(s.state(), State::Disconnected);
        assert_eq!(s.detail(), Some("certificate signed by an untrusted CA"));
    }

    #[test]
    fn transfers_need_a_session_and_a_sane_size() {
        assert_eq!(connected().check_transfer(13, 16384), Err(InvalidState));
        let mut s = handshaked();
        assert_eq!(s.check_transfer(0, 16384), Err(InvalidParameter));
        assert_eq!(s.check_transfer(16385, 16384), Err(InvalidParameter));
        assert_eq!(s.check_transfer(13, 16384), Ok(()));
        assert_eq!(s.transfer_failed("reset by peer".into()), (NetworkConnShutdown, Action::Close { close_notify: false }));
        assert_eq!(s.state(), State::Disconnected);
    }

    #[test]
    fn reset_transitions() {
        assert_eq!(Slot::new().reset(), (InvalidState, Action::None));
        assert_eq!(connected().reset(), (InvalidState, Action::None));
        let mut s = handshaked();
        assert_eq!(s.reset(), (Success, Action::ResetSession));
        assert_eq!(s.state(), State::Connected);
        let mut s = connected();
        s.handshake();
        assert_eq!(s.reset(), (Success, Action::ResetSession));
        // A handshake finishing after the reset is ignored.
        s.handshake_finished(Ok(()));
        assert_eq!(s.handshake(), (WouldBlock, Action::StartHandshake));
    }
}
