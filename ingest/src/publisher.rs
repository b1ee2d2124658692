//! Getting each job to RabbitMQ, or onto local disk until RabbitMQ is back.
//!
//! An upload first tries a persistent publish with a publisher confirm, bounded by
//! `publish_timeout`. If the broker is away, slow or refuses, the job goes to the [`Journal`]
//! instead, and a background task publishes journaled jobs once a connection is up again.
//! Either way the job is durable before the upload is answered.
//!
//! A publish that times out keeps going ([`confirms`]): when its confirm comes late, its journal
//! entry is removed rather than published again. After `VMPIPE_PUBLISH_DEGRADED_AFTER` timeouts
//! in a row the publisher is degraded ([`degraded`]): uploads are journaled at once, and the
//! drain (bounded by the same timeout) or a probe finds out when confirms come in time again.
//! A job can still reach the queue twice (a crash between a late confirm and the entry's
//! removal, a connection lost with publishes in flight); the worker's upsert makes that
//! harmless.
//!
//! Confirms are pipelined: all uploads publish on one channel, each waiting only for its own
//! confirm, so many are in flight at once. (Holding jobs back to send them in groups saved
//! RabbitMQ some CPU per message but cost a third of the rate at 4 clients, as each upload then
//! also waited for the previous group's round trip.)

mod confirms;
mod connection;
mod degraded;
mod flight;
mod telemetry;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};
use vmpipe_common::VoicemailJob;
use vmpipe_common::amqp::{ConfirmChannel, job_properties};

use self::confirms::Confirms;
use self::degraded::ConfirmHealth;
use self::flight::{PublishFailure, joined};
use self::telemetry::{JOURNALED_TOTAL, JournalReason};
use crate::journal::{Journal, JournalError};

/// Where a job went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Enqueued {
    /// Confirmed by RabbitMQ.
    Published,
    /// Written to the local journal, to be published later.
    Journaled,
}

impl Enqueued {
    /// As logged (`enqueued` of the `voicemail stored` line).
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Enqueued::Published => "published",
            Enqueued::Journaled => "journaled",
        }
    }
}

/// What RabbitMQ looks like to uploads (for `/readyz`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BrokerState {
    /// Connected and confirming in time.
    Confirming,
    /// Connected, but not confirming in time: jobs are journaled at once.
    NotConfirming,
    /// Turned away for its credentials: jobs are journaled.
    CredentialsRefused,
    /// Not connected: jobs are journaled.
    Unreachable,
}

/// Why the journal could not be drained.
#[derive(Debug, thiserror::Error)]
enum DrainError {
    #[error(transparent)]
    Publish(#[from] PublishFailure),
    #[error(transparent)]
    Journal(#[from] JournalError),
}

/// Journaled jobs are published this many at a time.
const JOURNAL_GROUP: usize = 256;

/// How a drain went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Drained {
    /// Nothing to publish (or all of it awaiting its confirm already).
    Nothing,
    /// Published and confirmed in time.
    Published,
    /// Some confirms did not come in time: their entries wait for them.
    TimedOut,
}

/// The publishing channel of one connection.
#[derive(Clone)]
struct Link {
    channel: ConfirmChannel,
    /// Which connection (counted from 1).
    generation: u64,
}

/// Cheap to clone; shared by all request handlers.
#[derive(Clone)]
pub(crate) struct Publisher {
    inner: Arc<Inner>,
}

struct Inner {
    amqp_url: String,
    queue: String,
    publish_timeout: Duration,
    journal: Journal,
    /// The publishing channel while connected.
    link: watch::Sender<Option<Link>>,
    /// Connections made so far.
    generations: AtomicU64,
    /// Publishes awaiting their confirm.
    confirms: Confirms,
    /// Whether confirms come in time.
    health: ConfirmHealth,
    /// The connection whose probe is awaiting its confirm (0: none).
    probing: AtomicU64,
    /// Connection attempts made so far (startup waits for the first).
    attempts: watch::Sender<u64>,
    /// The last attempt was refused for its credentials.
    credentials_refused: std::sync::atomic::AtomicBool,
    /// Wakes the background task: a job was journaled, or a publish failed.
    wake: Notify,
    stop: Notify,
}

impl Publisher {
    /// Starts the background task that keeps a connection and drains the journal.
    pub(crate) fn start(
        amqp_url: String,
        queue: String,
        publish_timeout: Duration,
        degraded_after: u32,
        journal: Journal,
    ) -> (Self, JoinHandle<()>) {
        let queue = Self {
            inner: Arc::new(Inner {
                amqp_url,
                queue,
                publish_timeout,
                journal,
                link: watch::channel(None).0,
                generations: AtomicU64::new(0),
                confirms: Confirms::default(),
                health: ConfirmHealth::new(degraded_after),
                probing: AtomicU64::new(0),
                attempts: watch::channel(0).0,
                credentials_refused: Default::default(),
                wake: Notify::new(),
                stop: Notify::new(),
            }),
        };
        let task = tokio::spawn(queue.clone().maintain_connection());
        (queue, task)
    }

    /// Waits (at most `limit`) for the first connection attempt to succeed or fail, so that
    /// uploads right after startup are not journaled just because the connection was not up
    /// yet.
    pub(crate) async fn first_attempt(&self, limit: Duration) {
        let mut attempts = self.inner.attempts.subscribe();
        let _ = tokio::time::timeout(limit, attempts.wait_for(|n| *n > 0)).await;
    }

    /// Makes `job` (whose JSON is `payload`) durable: confirmed by RabbitMQ, or else written to
    /// the journal. Degraded, it is journaled without trying.
    pub(crate) async fn enqueue(
        &self,
        job: &VoicemailJob,
        payload: Vec<u8>,
    ) -> Result<Enqueued, JournalError> {
        let link = self.inner.link.borrow().clone();
        let Some(link) = link else {
            return self
                .journal(job, payload, JournalReason::Disconnected)
                .await;
        };
        if self.inner.health.is_degraded() {
            return self.journal(job, payload, JournalReason::Degraded).await;
        }
        let payload = Arc::new(payload);
        let entry = self.inner.journal.entry(job.job_id);
        let (flight, mut task) = self.launch(&link, entry, payload.clone(), job_properties(job));
        let failure = match tokio::time::timeout(self.inner.publish_timeout, &mut task).await {
            Ok(outcome) => {
                self.inner.confirms.finish(&flight);
                match joined(outcome) {
                    Ok(()) => {
                        self.inner.health.confirmed();
                        metrics::counter!("vmpipe_jobs_published_total", "via" => "confirm")
                            .increment(1);
                        return Ok(Enqueued::Published);
                    }
                    Err(e) => e,
                }
            }
            Err(_) => {
                metrics::counter!("vmpipe_publish_failures_total").increment(1);
                warn!(job_id = %job.job_id, timeout_ms = self.inner.publish_timeout.as_millis() as u64,
                    "no confirm in time; journaling the job (its confirm may still come)");
                self.inner.health.timed_out();
                let payload = Arc::try_unwrap(payload).unwrap_or_else(|p| p.as_ref().clone());
                let journaled = self.journal(job, payload, JournalReason::Timeout).await;
                if journaled.is_err() {
                    // No entry to tie the confirm to: the upload fails, KAZOO retries.
                    self.inner.confirms.finish(&flight);
                } else if self.inner.confirms.detach(&flight) == Some(true) {
                    // Confirmed while the entry was being written.
                    self.late_ack(flight.entry().clone()).await;
                }
                return journaled;
            }
        };
        metrics::counter!("vmpipe_publish_failures_total").increment(1);
        warn!(job_id = %job.job_id, error = %failure, "publish failed; journaling the job");
        let payload = Arc::try_unwrap(payload).unwrap_or_else(|p| p.as_ref().clone());
        self.journal(job, payload, JournalReason::Failed).await
    }

    /// Writes `job` to the journal, and wakes the drain.
    async fn journal(
        &self,
        job: &VoicemailJob,
        payload: Vec<u8>,
        reason: JournalReason,
    ) -> Result<Enqueued, JournalError> {
        self.inner.journal.write(job.job_id, payload).await?;
        metrics::counter!(JOURNALED_TOTAL, "reason" => reason.as_str()).increment(1);
        self.inner.wake.notify_one();
        Ok(Enqueued::Journaled)
    }

    /// What RabbitMQ looks like to uploads now.
    pub(crate) fn broker_state(&self) -> BrokerState {
        let connected = self
            .inner
            .link
            .borrow()
            .as_ref()
            .is_some_and(|l| l.channel.status().connected());
        if connected && self.inner.health.is_degraded() {
            BrokerState::NotConfirming
        } else if connected {
            BrokerState::Confirming
        } else if self.inner.credentials_refused.load(Ordering::Relaxed) {
            BrokerState::CredentialsRefused
        } else {
            BrokerState::Unreachable
        }
    }

    /// Stops the background task (journaled jobs stay on disk for the next start).
    pub(crate) fn stop(&self) {
        self.inner.stop.notify_one();
    }

    async fn drain_journal(&self, link: &Link) -> Result<Drained, DrainError> {
        let journal = &self.inner.journal;
        let confirms = &self.inner.confirms;
        let mut entries = journal.pending().await?;
        // Those awaiting a late confirm are not published again.
        entries.retain(|e| !confirms.in_flight(e, link.generation));
        if entries.is_empty() {
            return Ok(Drained::Nothing);
        }
        info!(jobs = entries.len(), "publishing journaled jobs");
        // In groups with their confirms in flight together: a round trip per job would make a
        // long outage's backlog take minutes to drain.
        for group in entries.chunks(JOURNAL_GROUP) {
            let payloads = journal.read(group).await?;
            let mut readable = Vec::with_capacity(group.len());
            let mut unreadable = Vec::new();
            for (entry, payload) in group.iter().zip(payloads) {
                match payload.map(|p| (VoicemailJob::from_json(&p), p)) {
                    Ok((Ok(job), payload)) => readable.push((entry, job_properties(&job), payload)),
                    // Published and removed by another instance sharing the journal.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    // A disk error, or a file that is not a job: set aside for inspection, so
                    // that it neither blocks the others nor comes back every second.
                    Err(e) => unreadable.push((entry.clone(), format!("cannot read it: {e}"))),
                    Ok((Err(e), _)) => unreadable.push((entry.clone(), format!("not a job: {e}"))),
                }
            }
            if !unreadable.is_empty() {
                journal.set_aside(unreadable).await;
            }
            let launched: Vec<_> = readable
                .into_iter()
                .map(|(entry, properties, payload)| {
                    self.launch(link, entry.clone(), Arc::new(payload), properties)
                })
                .collect();
            // The same bound as an upload's publish, for the whole group (sent together).
            let deadline = tokio::time::Instant::now() + self.inner.publish_timeout;
            let mut confirmed = Vec::with_capacity(launched.len());
            let mut late = 0;
            let mut failure = None;
            for (flight, mut task) in launched {
                match tokio::time::timeout_at(deadline, &mut task).await {
                    Ok(outcome) => {
                        confirms.finish(&flight);
                        match joined(outcome) {
                            Ok(()) => confirmed.push(flight.entry().clone()),
                            Err(e) => failure = Some(DrainError::from(e)),
                        }
                    }
                    // Left to its task: removed if acked late, published again if not.
                    Err(_) => match confirms.detach(&flight) {
                        Some(true) => confirmed.push(flight.entry().clone()),
                        Some(false) => {}
                        None => late += 1,
                    },
                }
            }
            let count = confirmed.len() as u64;
            journal.remove(confirmed).await?;
            metrics::counter!("vmpipe_jobs_published_total", "via" => "journal").increment(count);
            debug!(jobs = count, "journaled jobs published");
            if let Some(e) = failure {
                return Err(e);
            }
            if late > 0 {
                metrics::counter!("vmpipe_publish_failures_total").increment(1);
                warn!(
                    jobs = late,
                    timeout_ms = self.inner.publish_timeout.as_millis() as u64,
                    "journaled jobs not confirmed in time; they stay journaled until confirmed"
                );
                self.inner.health.timed_out();
                return Ok(Drained::TimedOut);
            }
            if count > 0 {
                self.inner.health.confirmed();
            }
        }
        Ok(Drained::Published)
    }
}
