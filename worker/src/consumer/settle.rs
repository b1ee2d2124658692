//! What to tell RabbitMQ about a delivery: a pure decision from the job's outcome, how many
//! times the message has been delivered, and the limit (`VMPIPE_MAX_DELIVERIES`).

use std::time::Duration;

use vmpipe_common::backoff::Backoff;

use crate::error::JobError;

/// What became of a delivery.
#[derive(Debug)]
pub(super) enum Outcome {
    /// The row is committed.
    Indexed,
    /// The job failed this time.
    Failed(JobError),
    /// Not processed: every earlier delivery ended without an ack (the worker was killed while
    /// processing it, over and over), and this one is past the limit.
    NeverCompleted,
    /// Stopped because the delivery's channel is gone: nothing can be settled, and RabbitMQ
    /// delivers it again.
    ChannelLost,
}

/// How a delivery is settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Settlement {
    /// Done: ack it.
    Ack,
    /// Hand it back now (shutdown): it does not count as a failure.
    Requeue,
    /// Hand it back after a wait, to be delivered again.
    RetryAfter(Duration),
    /// Move it to the dead-letter queue with this reason, then ack it.
    DeadLetter(String),
    /// Nothing: its channel is gone (RabbitMQ delivers it again).
    LetGo,
}

impl Settlement {
    /// The `outcome` label of `vmpipe_jobs_total`.
    pub(super) fn metric_label(&self) -> &'static str {
        match self {
            Settlement::Ack => "indexed",
            Settlement::Requeue => "requeued",
            Settlement::RetryAfter(_) => "retried",
            Settlement::DeadLetter(_) => "dead_lettered",
            Settlement::LetGo => "abandoned",
        }
    }
}

/// Whether a delivery (the `deliveries`-th, counting from 1) is processed at all.
pub(super) fn should_process(deliveries: u64, max: u64) -> bool {
    deliveries <= max
}

/// Settles the `deliveries`-th delivery (counting from 1) of a job allowed `max` deliveries.
pub(super) fn settle(outcome: &Outcome, deliveries: u64, max: u64) -> Settlement {
    match outcome {
        Outcome::Indexed => Settlement::Ack,
        Outcome::ChannelLost => Settlement::LetGo,
        Outcome::Failed(JobError::Interrupted) => Settlement::Requeue,
        Outcome::Failed(JobError::Retry(_)) if deliveries < max => {
            Settlement::RetryAfter(Backoff::after_attempts(deliveries))
        }
        Outcome::Failed(error) if deliveries >= max => {
            Settlement::DeadLetter(format!("failed {deliveries} times; last error: {error}"))
        }
        Outcome::Failed(error) => Settlement::DeadLetter(error.to_string()),
        Outcome::NeverCompleted => Settlement::DeadLetter(format!(
            "delivered {deliveries} times without completing (the worker stopped while processing it each time)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retry() -> Outcome {
        Outcome::Failed(JobError::retry_because("file unreadable"))
    }

    fn abort() -> Outcome {
        Outcome::Failed(JobError::abort_because("not a vmpipe job"))
    }

    #[test]
    fn success_is_acked_and_shutdown_requeued() {
        assert_eq!(settle(&Outcome::Indexed, 1, 5), Settlement::Ack);
        assert_eq!(settle(&Outcome::Indexed, 5, 5), Settlement::Ack);
        let interrupted = Outcome::Failed(JobError::Interrupted);
        assert_eq!(settle(&interrupted, 5, 5), Settlement::Requeue);
    }

    #[test]
    fn passing_failures_are_retried_with_backoff_until_the_limit() {
        assert_eq!(
            settle(&retry(), 1, 5),
            Settlement::RetryAfter(Duration::from_millis(500))
        );
        assert_eq!(
            settle(&retry(), 4, 5),
            Settlement::RetryAfter(Duration::from_secs(4))
        );
        assert_eq!(
            settle(&retry(), 5, 5),
            Settlement::DeadLetter("failed 5 times; last error: file unreadable".into())
        );
    }

    #[test]
    fn aborts_are_dead_lettered_at_once() {
        assert_eq!(
            settle(&abort(), 1, 5),
            Settlement::DeadLetter("not a vmpipe job".into())
        );
        assert_eq!(
            settle(&abort(), 1, 1),
            Settlement::DeadLetter("failed 1 times; last error: not a vmpipe job".into())
        );
    }

    #[test]
    fn a_job_that_keeps_killing_the_worker_stops_looping() {
        assert!(should_process(5, 5));
        assert!(!should_process(6, 5));
        let Settlement::DeadLetter(reason) = settle(&Outcome::NeverCompleted, 6, 5) else {
            panic!("dead-lettered")
        };
        assert!(
            reason.starts_with("delivered 6 times without completing"),
            "{reason}"
        );
    }

    #[test]
    fn a_job_whose_channel_is_gone_is_let_go_whatever_its_count() {
        assert_eq!(settle(&Outcome::ChannelLost, 1, 5), Settlement::LetGo);
        assert_eq!(settle(&Outcome::ChannelLost, 9, 5), Settlement::LetGo);
        assert_eq!(Settlement::LetGo.metric_label(), "abandoned");
    }

    #[test]
    fn labels_match_the_metric() {
        assert_eq!(settle(&Outcome::Indexed, 1, 5).metric_label(), "indexed");
        assert_eq!(settle(&retry(), 1, 5).metric_label(), "retried");
        assert_eq!(settle(&abort(), 1, 5).metric_label(), "dead_lettered");
    }
}
