//! What every session of the daemon shares: the dialer and the limits.
//! The daemon makes it; sessions only read it.
use std::sync::Arc;
use std::time::Duration;

use crate::metrics::OffloadMetrics;
use crate::upstream::Dialer;

/// What every session shares.
pub(crate) struct Shared {
    pub dialer: Arc<Dialer>,
    pub buffer_size: usize,
    pub answer_timeout: Duration,
    pub metrics: Arc<OffloadMetrics>,
}

impl Shared {
    /// Plaintext each direction of a session may hold: a few buffers, so
    /// that the network and the client need not take turns.
    pub(crate) fn queue_size(&self) -> usize {
        4 * self.buffer_size
    }
}
