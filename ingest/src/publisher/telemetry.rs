//! The names of ingest's publisher metrics: jobs that waited in the journal for the broker
//! (one per voicemail, by why) and late confirms. They are declared, with their HELP texts, in `vmpipe_common::metrics::INGEST`.

/// Why a job was journaled (the `reason` of `vmpipe_jobs_journaled_total`).
#[derive(Clone, Copy, Debug)]
pub(super) enum JournalReason {
    /// No connection to RabbitMQ.
    Disconnected,
    /// Its confirm did not come within the publish timeout.
    Timeout,
    /// The publisher was degraded (RabbitMQ connected but not confirming in time).
    Degraded,
}

impl JournalReason {
    #[cfg(test)]
    const ALL: [Self; 3] = [Self::Disconnected, Self::Timeout, Self::Degraded];

    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::Disconnected => "disconnected",
            Self::Timeout => "timeout",
            Self::Degraded => "degraded",
        }
    }
}

pub(super) const JOURNALED_TOTAL: &str = "vmpipe_jobs_journaled_total";
pub(super) const LATE_CONFIRMS_TOTAL: &str = "vmpipe_publish_late_confirms_total";

#[cfg(test)]
mod tests {
    use super::*;

    /// Every reason is exported at 0 from the start, because it is declared with the metric.
    #[test]
    fn every_reason_is_declared() {
        let metric = vmpipe_common::metrics::INGEST
            .iter()
            .find(|m| m.name == JOURNALED_TOTAL)
            .expect("declared");
        for reason in JournalReason::ALL {
            assert!(
                metric.series.contains(&&[("reason", reason.as_str())][..]),
                "{reason:?}"
            );
        }
        assert!(
            vmpipe_common::metrics::INGEST
                .iter()
                .any(|m| m.name == LATE_CONFIRMS_TOTAL)
        );
    }
}
