//! What the process runs, as the status page and the health check see it:
//! each listener with callbacks that are read at request time.
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use rustls_pki_types::CertificateDer;
use serde::Serialize;
use serde_json::{json, Value};

use crate::certs::{Anchor, Certificate};

/// A health check under way: `Ok` or the reason it failed.
pub type Check<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

/// How long a keyd probe may take before the link counts as down.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// A keyd a listener depends on, and a cheap way to ask whether it answers.
pub trait KeydProbe: Send + Sync {
    /// Where keyd is (`unix:PATH`, `tls://HOST:PORT`).
    fn endpoint(&self) -> String;
    /// Asks keyd for a sign of life.
    fn check(&self) -> Check<'_>;
}

type Certificates = Box<dyn Fn() -> Vec<CertificateDer<'static>> + Send + Sync>;
type Counts = Box<dyn Fn() -> Vec<(&'static str, u64)> + Send + Sync>;

/// One listener of the process: its address and mode (echo, sink, handshake,
/// target ADDR, keyless, tunnel, offload, keyd) and what it can tell.
pub struct Listener {
    address: String,
    mode: String,
    certificates: Option<Certificates>,
    anchors: Vec<Anchor>,
    counts: Option<Counts>,
    keyd: Option<Arc<dyn KeydProbe>>,
    /// Why it stopped; `None` while it runs.
    stopped: Mutex<Option<String>>,
}

impl Listener {
    /// A listener on `address` in `mode`.
    pub fn new(address: impl std::fmt::Display, mode: impl Into<String>) -> Self {
        Self {
            address: address.to_string(),
            mode: mode.into(),
            certificates: None,
            anchors: Vec::new(),
            counts: None,
            keyd: None,
            stopped: Mutex::new(None),
        }
    }

    /// The leaf certificates it serves, read on every request (so a
    /// certificate replaced while running is shown as it is now).
    pub fn with_certificates(mut self, leaves: impl Fn() -> Vec<CertificateDer<'static>> + Send + Sync + 'static) -> Self {
        self.certificates = Some(Box::new(leaves));
        self
    }

    /// The CAs whose certificates it accepts.
    pub fn with_anchors(mut self, anchors: &[CertificateDer<'_>]) -> Self {
        self.anchors = anchors.iter().filter_map(|a| Anchor::of(a).ok()).collect();
        self
    }

    /// Counters shown on the status page, read on every request.
    pub fn with_counts(mut self, counts: impl Fn() -> Vec<(&'static str, u64)> + Send + Sync + 'static) -> Self {
        self.counts = Some(Box::new(counts));
        self
    }

    /// The keyd it signs through; the health check probes it.
    pub fn with_keyd(mut self, probe: Arc<dyn KeydProbe>) -> Self {
        self.keyd = Some(probe);
        self
    }

    fn certificates(&self) -> Vec<Certificate> {
        self.certificates.as_ref().map_or_else(Vec::new, |leaves| leaves().iter().filter_map(|c| Certificate::of(c).ok()).collect())
    }

    fn stopped(&self) -> Option<String> {
        self.stopped.lock().expect("stopped lock").clone()
    }

    /// Its keyd's endpoint and whether it answered now.
    async fn probe(&self) -> Option<(String, Result<(), String>)> {
        let keyd = self.keyd.as_ref()?;
        let result = match tokio::time::timeout(PROBE_TIMEOUT, keyd.check()).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {} s", PROBE_TIMEOUT.as_secs())),
        };
        Some((keyd.endpoint(), result))
    }
}

/// Marks its listener as stopped when dropped: held by the listener's task.
pub struct Running(Arc<Listener>);

impl Running {
    /// Marks the listener stopped now, with the reason.
    pub fn stop(&self, reason: impl Into<String>) {
        *self.0.stopped.lock().expect("stopped lock") = Some(reason.into());
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let mut stopped = self.0.stopped.lock().expect("stopped lock");
        stopped.get_or_insert_with(|| "stopped".to_owned());
    }
}

type Listeners = Arc<Mutex<Vec<Arc<Listener>>>>;

/// The process as the status listener shows it.
pub struct Status {
    version: &'static str,
    started: Instant,
    pub(crate) registry: Registry,
    listeners: Listeners,
}

impl Status {
    /// The status of a process of `version` whose metrics are in `registry`;
    /// adds the certificate expiry gauge to it.
    pub fn new(version: &'static str, mut registry: Registry) -> Arc<Self> {
        let listeners = Listeners::default();
        registry.register_collector(Box::new(ExpiryCollector(listeners.clone())));
        Arc::new(Self { version, started: Instant::now(), registry, listeners })
    }

    /// Adds a listener; it counts as up until the returned guard is dropped.
    pub fn add(&self, listener: Listener) -> Running {
        let listener = Arc::new(listener);
        self.listeners.lock().expect("listeners lock").push(listener.clone());
        Running(listener)
    }

    fn listeners(&self) -> Vec<Arc<Listener>> {
        self.listeners.lock().expect("listeners lock").clone()
    }

    /// The `/_status` document.
    pub(crate) async fn report(&self) -> Value {
        let mut listeners = Vec::new();
        let mut totals: BTreeMap<&'static str, u64> = BTreeMap::new();
        for l in self.listeners() {
            let counts: BTreeMap<&'static str, u64> = l.counts.as_ref().map_or_else(BTreeMap::new, |c| c().into_iter().collect());
            for (k, v) in &counts {
                *totals.entry(k).or_default() += v;
            }
            let keyd = l.probe().await.map(|(endpoint, result)| KeydLink::new(endpoint, result));
            let stopped = l.stopped();
            listeners.push(json!({
                "address": l.address,
                "mode": l.mode,
                "up": stopped.is_none(),
                "stopped": stopped,
                "certificates": l.certificates(),
                "trust_anchors": l.anchors,
                "keyd": keyd,
                "counts": counts,
            }));
        }
        json!({
            "version": self.version,
            "uptime_seconds": self.started.elapsed().as_secs(),
            "listeners": listeners,
            "counts": totals,
        })
    }

    /// Every reason the process is not healthy; empty when it is.
    pub(crate) async fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for l in self.listeners() {
            if let Some(why) = l.stopped() {
                problems.push(format!("{} ({}) is down: {why}", l.address, l.mode));
            }
            if let Some((endpoint, Err(why))) = l.probe().await {
                problems.push(format!("{} ({}): keyd at {endpoint} does not answer: {why}", l.address, l.mode));
            }
        }
        problems
    }
}

/// A keyd link on the status page.
#[derive(Serialize)]
struct KeydLink {
    endpoint: String,
    healthy: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    problem: Option<String>,
}

impl KeydLink {
    fn new(endpoint: String, result: Result<(), String>) -> Self {
        Self { endpoint, healthy: result.is_ok(), problem: result.err() }
    }
}

/// `sealtls_certificate_expiry_seconds`, computed at scrape time from the
/// listeners' certificate callbacks.
struct ExpiryCollector(Listeners);

impl std::fmt::Debug for ExpiryCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ExpiryCollector")
    }
}

impl Collector for ExpiryCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let listeners = self.0.lock().expect("listeners lock").clone();
        let mut metric = encoder.encode_descriptor(
            "sealtls_certificate_expiry_seconds",
            "Seconds until a served certificate expires (negative once expired)",
            None,
            MetricType::Gauge,
        )?;
        for l in listeners {
            for cert in l.certificates() {
                let labels = [("listener", l.address.clone()), ("subject", cert.subject), ("sha256", cert.sha256)];
                ConstGauge::new(cert.expires_in).encode(metric.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}
