//! Whether RabbitMQ confirms in time: after `VMPIPE_PUBLISH_DEGRADED_AFTER` confirm timeouts
//! in a row the publisher is degraded (a hung broker: connected, silent) and uploads are
//! journaled at once instead of each waiting out the publish timeout. A publish confirmed in
//! time (the journal's drain, or a probe while there is nothing to drain), or a new connection,
//! ends it. The `vmpipe_publisher_degraded` gauge and `/readyz` say which.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use tracing::{info, warn};

/// `vmpipe_publisher_degraded`: 1 while uploads do not wait for confirms.
pub(super) const DEGRADED_GAUGE: &str = "vmpipe_publisher_degraded";

#[derive(Debug)]
pub(super) struct ConfirmHealth {
    /// Timeouts in a row that make the publisher degraded.
    after: u32,
    timeouts_in_a_row: AtomicU32,
    degraded: AtomicBool,
}

impl ConfirmHealth {
    pub(super) fn new(after: u32) -> Self {
        metrics::gauge!(DEGRADED_GAUGE).set(0.0);
        Self {
            after: after.max(1),
            timeouts_in_a_row: AtomicU32::new(0),
            degraded: AtomicBool::new(false),
        }
    }

    pub(super) fn is_degraded(&self) -> bool {
        self.degraded.load(Ordering::Relaxed)
    }

    /// A publish got no confirm within the publish timeout. Whether that made it degraded.
    pub(super) fn timed_out(&self) -> bool {
        let in_a_row = self
            .timeouts_in_a_row
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        if in_a_row >= self.after && !self.degraded.swap(true, Ordering::Relaxed) {
            metrics::gauge!(DEGRADED_GAUGE).set(1.0);
            warn!(
                timeouts_in_a_row = in_a_row,
                "RabbitMQ is connected but not confirming in time; uploads are journaled at once \
                 until it confirms again"
            );
            return true;
        }
        false
    }

    /// A publish was confirmed in time, or a connection was made: the broker answers.
    pub(super) fn confirmed(&self) {
        self.timeouts_in_a_row.store(0, Ordering::Relaxed);
        if self.degraded.swap(false, Ordering::Relaxed) {
            metrics::gauge!(DEGRADED_GAUGE).set(0.0);
            info!("RabbitMQ confirms in time again; uploads are published directly");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn degraded_after_n_timeouts_in_a_row_until_a_confirm() {
        let health = ConfirmHealth::new(3);
        assert!(!health.timed_out());
        assert!(!health.timed_out());
        health.confirmed();
        assert!(!health.timed_out());
        assert!(!health.timed_out());
        assert!(
            !health.is_degraded(),
            "a confirm in between starts the count again"
        );
        assert!(health.timed_out(), "the third in a row");
        assert!(health.is_degraded());
        assert!(!health.timed_out(), "already degraded");
        health.confirmed();
        assert!(!health.is_degraded());
    }
}
