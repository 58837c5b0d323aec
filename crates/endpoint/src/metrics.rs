//! The TLS server's Prometheus metrics: handshakes by result, handshake
//! duration, open sessions, bytes and identity-rule refusals, per listener.
//! One [`ServerMetrics`] is registered once per process; each server gets a
//! [`ListenerMetrics`] naming its listener.
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use crate::explain::FailureClass;
use crate::session::SessionInfo;

/// A handshake's outcome: for `ok` what was negotiated, for `failed` why.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Handshake {
    listener: String,
    result: &'static str,
    version: String,
    cipher_suite: String,
    group: String,
    failure: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Listener {
    listener: String,
}

/// Why a handshake failed, as the `failure` label says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// Refused by an identity rule (`access_denied`).
    AccessDenied,
    /// The server name was refused before the handshake (the gate).
    ServerName,
    /// Not finished within the handshake timeout.
    Timeout,
    /// Any other failure, by the class `explain` gave it.
    Class(FailureClass),
}

impl HandshakeFailure {
    fn label(self) -> &'static str {
        match self {
            Self::AccessDenied => "access_denied",
            Self::ServerName => "server_name",
            Self::Timeout => "timeout",
            Self::Class(c) => match c {
                FailureClass::Usage => "usage",
                FailureClass::Config => "config",
                FailureClass::Network => "network",
                FailureClass::PeerNotTrusted => "peer_not_trusted",
                FailureClass::Rejected => "rejected",
                FailureClass::Protocol => "protocol",
                FailureClass::DataMismatch => "data_mismatch",
            },
        }
    }
}

fn duration_histogram() -> Histogram {
    // 0.5 ms to about 16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// The metric families of every TLS server in the process.
#[derive(Debug)]
pub struct ServerMetrics {
    handshakes: Family<Handshake, Counter>,
    duration: Family<Listener, Histogram, fn() -> Histogram>,
    open: Family<Listener, Gauge>,
    bytes_in: Family<Listener, Counter>,
    bytes_out: Family<Listener, Counter>,
    access_denied: Family<Listener, Counter>,
}

impl Default for ServerMetrics {
    fn default() -> Self {
        Self {
            handshakes: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
            open: Family::default(),
            bytes_in: Family::default(),
            bytes_out: Family::default(),
            access_denied: Family::default(),
        }
    }
}

impl ServerMetrics {
    /// New families, registered nowhere yet.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Adds the families to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "sealtls_tls_handshakes",
            "TLS handshakes by result: ok (with version, cipher_suite, group) or failed (with failure)",
            self.handshakes.clone(),
        );
        registry.register_with_unit(
            "sealtls_tls_handshake_duration",
            "Time from accepting a connection to a completed handshake",
            Unit::Seconds,
            self.duration.clone(),
        );
        registry.register("sealtls_tls_connections_open", "TLS sessions open now (handshake done, not yet closed)", self.open.clone());
        registry.register_with_unit("sealtls_tls_received", "Application bytes received", Unit::Bytes, self.bytes_in.clone());
        registry.register_with_unit("sealtls_tls_sent", "Application bytes sent", Unit::Bytes, self.bytes_out.clone());
        registry.register(
            "sealtls_tls_access_denied",
            "Client certificates refused by an --allow rule (alert access_denied)",
            self.access_denied.clone(),
        );
    }

    /// The metrics of one listener, labelled `listener="NAME"`.
    pub fn listener(self: &Arc<Self>, name: impl Into<String>) -> ListenerMetrics {
        let name = name.into();
        let label = Listener { listener: name.clone() };
        ListenerMetrics {
            duration: self.duration.get_or_create_owned(&label),
            open: self.open.get_or_create_owned(&label),
            bytes_in: self.bytes_in.get_or_create_owned(&label),
            bytes_out: self.bytes_out.get_or_create_owned(&label),
            access_denied: self.access_denied.get_or_create_owned(&label),
            families: self.clone(),
            name,
        }
    }
}

/// One listener's metrics, for its server.
#[derive(Clone, Debug)]
pub struct ListenerMetrics {
    families: Arc<ServerMetrics>,
    name: String,
    duration: Histogram,
    open: Gauge,
    bytes_in: Counter,
    bytes_out: Counter,
    access_denied: Counter,
}

impl Default for ListenerMetrics {
    /// Metrics that no registry shows (a server started without a status listener).
    fn default() -> Self {
        ServerMetrics::new().listener("")
    }
}

impl ListenerMetrics {
    /// A completed handshake and what it took.
    pub fn handshake_ok(&self, info: &SessionInfo, took: std::time::Duration) {
        let labels = Handshake {
            listener: self.name.clone(),
            result: "ok",
            version: info.version.clone(),
            cipher_suite: info.suite.clone(),
            group: info.group.clone(),
            failure: "",
        };
        self.families.handshakes.get_or_create(&labels).inc();
        self.duration.observe(took.as_secs_f64());
    }

    /// A failed handshake.
    pub fn handshake_failed(&self, why: HandshakeFailure) {
        if why == HandshakeFailure::AccessDenied {
            self.access_denied.inc();
        }
        let labels = Handshake {
            listener: self.name.clone(),
            result: "failed",
            version: String::new(),
            cipher_suite: String::new(),
            group: String::new(),
            failure: why.label(),
        };
        self.families.handshakes.get_or_create(&labels).inc();
    }

    /// A session opened; the guard counts it until dropped.
    pub fn session(&self) -> OpenSession {
        self.open.inc();
        OpenSession(self.open.clone())
    }

    /// Application bytes a session moved: `received` from its TLS peer, `sent` to it.
    pub fn moved(&self, received: u64, sent: u64) {
        self.bytes_in.inc_by(received);
        self.bytes_out.inc_by(sent);
    }
}

/// Counts one open session in the gauge while it lives.
pub struct OpenSession(Gauge);

impl Drop for OpenSession {
    fn drop(&mut self) {
        self.0.dec();
    }
}
