//! ingest's publisher metrics: jobs journaled (one per voicemail, by why), late confirms, and
//! their HELP texts, every series present at 0 from the start.

/// Why a job was journaled (the `reason` of `vmpipe_jobs_journaled_total`).
#[derive(Clone, Copy, Debug)]
pub(super) enum JournalReason {
    /// No connection to RabbitMQ.
    Disconnected,
    /// The publish was not confirmed in time.
    Timeout,
    /// The publish failed (a nack, a channel error).
    Failed,
    /// The publisher is degraded: not even tried.
    Degraded,
}

impl JournalReason {
    pub(super) const ALL: [Self; 4] = [
        Self::Disconnected,
        Self::Timeout,
        Self::Failed,
        Self::Degraded,
    ];

    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::Disconnected => "disconnected",
            Self::Timeout => "timeout",
            Self::Failed => "failed",
            Self::Degraded => "degraded",
        }
    }
}

pub(super) const JOURNALED_TOTAL: &str = "vmpipe_jobs_journaled_total";
pub(super) const LATE_CONFIRMS_TOTAL: &str = "vmpipe_publish_late_confirms_total";

/// HELP texts, and every series at 0 from the start.
pub(super) fn describe_metrics() {
    metrics::describe_counter!(
        JOURNALED_TOTAL,
        "Jobs written to the local journal instead of being confirmed by RabbitMQ at upload \
         time, by reason (disconnected, timeout, failed, degraded); one per voicemail"
    );
    for reason in JournalReason::ALL {
        metrics::counter!(JOURNALED_TOTAL, "reason" => reason.as_str()).increment(0);
    }
    metrics::describe_counter!(
        LATE_CONFIRMS_TOTAL,
        "Journaled jobs whose publish RabbitMQ confirmed after the publish timeout: their \
         journal entry was removed instead of being published again"
    );
    metrics::counter!(LATE_CONFIRMS_TOTAL).increment(0);
    metrics::describe_gauge!(
        super::degraded::DEGRADED_GAUGE,
        "1 while RabbitMQ is connected but not confirming in time \
         (VMPIPE_PUBLISH_DEGRADED_AFTER timeouts in a row): uploads are journaled at once"
    );
}
