//! The keyd client's Prometheus metrics: signature latency, errors by
//! custody error code, requests in flight.
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use crate::client::KeydError;

/// What a [`crate::KeydClient`] counts.
#[derive(Debug)]
pub struct KeylessMetrics {
    sign: Histogram,
    errors: Family<[(&'static str, &'static str); 1], Counter>,
    in_flight: Gauge,
}

impl Default for KeylessMetrics {
    fn default() -> Self {
        // 0.1 ms to about 3 s.
        Self { sign: Histogram::new(exponential_buckets(0.0001, 2.0, 16)), errors: Family::default(), in_flight: Gauge::default() }
    }
}

impl KeylessMetrics {
    /// Adds the metrics to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register_with_unit(
            "sealtls_keyless_sign_duration",
            "Time keyd took to answer a SIGN, as the keyless server waited for it",
            Unit::Seconds,
            self.sign.clone(),
        );
        registry.register(
            "sealtls_keyless_errors",
            "Calls to keyd that gave no answer, by custody error code (or unreachable, timeout)",
            self.errors.clone(),
        );
        registry.register("sealtls_keyless_requests_in_flight", "Requests sent to keyd and not yet answered", self.in_flight.clone());
    }

    /// Counts a call while it is under way; `sign` says whether to time it.
    pub(crate) fn start(&self, sign: bool) -> Call<'_> {
        self.in_flight.inc();
        Call { metrics: self, started: sign.then(Instant::now) }
    }
}

/// One call to keyd under way.
pub(crate) struct Call<'a> {
    metrics: &'a KeylessMetrics,
    started: Option<Instant>,
}

impl Call<'_> {
    /// Records how the call ended.
    pub(crate) fn end<T>(self, result: &Result<T, KeydError>) {
        match result {
            Ok(_) => {
                if let Some(started) = self.started {
                    self.metrics.sign.observe(started.elapsed().as_secs_f64());
                }
            }
            Err(e) => {
                let code = match e {
                    KeydError::Refused { code, .. } => code.name(),
                    KeydError::Unreachable { .. } => "unreachable",
                    KeydError::Timeout(..) => "timeout",
                    KeydError::Tls { .. } => "tls",
                    KeydError::Runtime => "runtime",
                };
                self.metrics.errors.get_or_create(&[("code", code)]).inc();
            }
        }
    }
}

impl Drop for Call<'_> {
    fn drop(&mut self) {
        self.metrics.in_flight.dec();
    }
}
