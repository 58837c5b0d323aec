//! keyd's Prometheus metrics: requests by operation and result, signature
//! latency by key family, connections by caller class, authorization
//! refusals; and, computed at scrape time from the custody table, the keys
//! held, each domain's certificate expiry and the kind of store.
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use sealtls_custody_proto::{Op, Response};

use crate::custody::Custody;

type Labels<const N: usize> = [(&'static str, &'static str); N];
/// Signature times by key family.
type SignTimes = Family<[(&'static str, String); 1], Histogram, fn() -> Histogram>;

fn sign_histogram() -> Histogram {
    // 20 µs (ECDSA in memory) to about 0.6 s (RSA 4096 on a token).
    Histogram::new(exponential_buckets(0.00002, 2.0, 16))
}

/// What keyd counts as it answers.
#[derive(Debug)]
pub struct KeydMetrics {
    requests: Family<Labels<2>, Counter>,
    sign: SignTimes,
    connections: Family<Labels<1>, Counter>,
    refusals: Counter,
}

impl Default for KeydMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            sign: Family::new_with_constructor(sign_histogram),
            connections: Family::default(),
            refusals: Counter::default(),
        }
    }
}

impl KeydMetrics {
    /// One request answered.
    pub(crate) fn answered(&self, op: Op, response: &Response) {
        let result = match response {
            Response::Error { code, .. } => code.name(),
            _ => "ok",
        };
        if result == sealtls_custody_proto::ErrorCode::Forbidden.name() {
            self.refusals.inc();
        }
        self.requests.get_or_create(&[("operation", op.name()), ("result", result)]).inc();
    }

    /// One signature made with a key of `family` ("ECDSA P-256", "RSA 2048").
    pub(crate) fn signed(&self, family: &str, took: Duration) {
        self.sign.get_or_create(&[("family", family.to_owned())]).observe(took.as_secs_f64());
    }

    /// A connection from an admin or an edge (a TLS server).
    pub(crate) fn connected(&self, admin: bool) {
        self.connections.get_or_create(&[("caller", if admin { "admin" } else { "edge" })]).inc();
    }
}

impl Custody {
    /// Adds keyd's metrics to `registry`.
    pub fn register(self: &Arc<Self>, registry: &mut Registry) {
        let m = self.metrics();
        registry.register("sealtls_keyd_requests", "Requests answered, by operation and result (ok or the error code)", m.requests.clone());
        registry.register_with_unit("sealtls_keyd_sign_duration", "Time a signature took, by key family", Unit::Seconds, m.sign.clone());
        registry.register("sealtls_keyd_connections", "Connections accepted, by caller class (admin, edge)", m.connections.clone());
        registry.register(
            "sealtls_keyd_authorization_refusals",
            "Requests refused with FORBIDDEN (not an admin, or no --authorize grant)",
            m.refusals.clone(),
        );
        registry.register_collector(Box::new(Table(self.clone())));
    }
}

/// The gauges read from the custody table at scrape time.
struct Table(Arc<Custody>);

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("keyd table")
    }
}

impl Collector for Table {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let custody = &self.0;
        let (usable, unavailable) = custody.counts();
        let mut keys = encoder.encode_descriptor("sealtls_keyd_keys", "Keys held, by state", None, MetricType::Gauge)?;
        for (state, n) in [("usable", usable), ("unavailable", unavailable)] {
            ConstGauge::new(n as i64).encode(keys.encode_family(&[("state", state)])?)?;
        }
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
        let mut expiry = encoder.encode_descriptor(
            "sealtls_keyd_certificate_expiry_seconds",
            "Seconds until each domain's certificate expires (negative once expired)",
            None,
            MetricType::Gauge,
        )?;
        for (domain, not_after) in custody.expiries() {
            ConstGauge::new(not_after - now).encode(expiry.encode_family(&[("domain", domain)])?)?;
        }
        let mut store = encoder.encode_descriptor("sealtls_keyd_store_info", "The key store in use (value 1)", None, MetricType::Gauge)?;
        ConstGauge::new(1).encode(store.encode_family(&[("store", custody.store_kind())])?)?;
        Ok(())
    }
}
