//! The offload daemon's Prometheus metrics: slots in use, and operations
//! answered by TlsServer return code.
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use sealtls_offload_proto::proto::Op;
use sealtls_offload_proto::Code;

/// What the daemon counts.
#[derive(Debug, Default)]
pub struct OffloadMetrics {
    slots: Gauge,
    operations: Family<[(&'static str, &'static str); 2], Counter>,
}

impl OffloadMetrics {
    /// Adds the metrics to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register("sealtls_offload_slots_in_use", "Client slots (badges) taken now", self.slots.clone());
        registry.register(
            "sealtls_offload_operations",
            "TlsServer calls answered, by operation and return code (OS_SUCCESS, OS_ERROR_WOULD_BLOCK, ...)",
            self.operations.clone(),
        );
    }

    /// A client took a slot; the guard gives it back when dropped.
    pub(crate) fn slot(&self) -> SlotInUse {
        self.slots.inc();
        SlotInUse(self.slots.clone())
    }

    /// An operation answered with `code`.
    pub(crate) fn answered(&self, op: Op, code: Code) {
        let op = match op {
            Op::Connect => "connect",
            Op::Disconnect => "disconnect",
            Op::Handshake => "handshake",
            Op::Write => "write",
            Op::Read => "read",
            Op::Reset => "reset",
            Op::Detail => "detail",
            Op::Wait => "wait",
            Op::Session => "session",
            Op::Stream => "stream",
            Op::Send => "send",
            Op::Credit => "credit",
        };
        self.operations.get_or_create(&[("operation", op), ("code", code.name())]).inc();
    }
}

/// One slot in use, counted while it lives.
pub(crate) struct SlotInUse(Gauge);

impl Drop for SlotInUse {
    fn drop(&mut self) {
        self.0.dec();
    }
}
