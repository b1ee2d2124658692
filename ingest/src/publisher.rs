//! Getting each job to RabbitMQ, or onto local disk until RabbitMQ is back.
//!
//! An upload first tries a persistent publish with a publisher confirm, bounded by
//! `publish_timeout`. If the broker is away, slow or refuses, the job goes to the [`Journal`]
//! instead, and a background task publishes journaled jobs once a connection is up again.
//! Either way the job is durable before the upload is answered. A job can reach the queue more
//! than once (a confirm that arrives after the timeout); the worker's upsert makes that harmless.
//!
//! Confirms are pipelined: all uploads publish on one channel, each waiting only for its own
//! confirm, so many are in flight at once. (Holding jobs back to send them in groups saved
//! RabbitMQ some CPU per message but cost a third of the rate at 4 clients, as each upload then
//! also waited for the previous group's round trip.)

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use lapin::Connection;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};
use vmpipe_common::VoicemailJob;
use vmpipe_common::amqp::{self, ConfirmChannel, job_properties, publish_confirmed};
use vmpipe_common::backoff::Backoff;

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

/// Why the journal could not be drained.
#[derive(Debug, thiserror::Error)]
enum DrainError {
    #[error(transparent)]
    Publish(#[from] amqp::PublishError),
    #[error(transparent)]
    Journal(#[from] JournalError),
}

/// Journaled jobs are published this many at a time.
const JOURNAL_GROUP: usize = 256;

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
    channel: watch::Sender<Option<ConfirmChannel>>,
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
        journal: Journal,
    ) -> (Self, JoinHandle<()>) {
        let queue = Self {
            inner: Arc::new(Inner {
                amqp_url,
                queue,
                publish_timeout,
                journal,
                channel: watch::channel(None).0,
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
    /// the journal.
    pub(crate) async fn enqueue(
        &self,
        job: &VoicemailJob,
        payload: Vec<u8>,
    ) -> Result<Enqueued, JournalError> {
        let channel = self.inner.channel.borrow().clone();
        if let Some(channel) = channel {
            let publish =
                publish_confirmed(&channel, &self.inner.queue, &payload, job_properties(job));
            match tokio::time::timeout(self.inner.publish_timeout, publish).await {
                Ok(Ok(())) => {
                    metrics::counter!("vmpipe_jobs_published_total", "via" => "confirm")
                        .increment(1);
                    return Ok(Enqueued::Published);
                }
                Ok(Err(e)) => {
                    metrics::counter!("vmpipe_publish_failures_total").increment(1);
                    warn!(job_id = %job.job_id, error = %e, "publish failed; journaling the job");
                }
                Err(_) => {
                    metrics::counter!("vmpipe_publish_failures_total").increment(1);
                    warn!(job_id = %job.job_id,
                        timeout_ms = self.inner.publish_timeout.as_millis() as u64,
                        "no confirm in time; journaling the job");
                }
            }
        }
        self.inner.journal.write(job.job_id, payload).await?;
        self.inner.wake.notify_one();
        Ok(Enqueued::Journaled)
    }

    /// Whether a confirmed publish is currently possible.
    /// Whether RabbitMQ refused the credentials at the last attempt.
    pub(crate) fn credentials_refused(&self) -> bool {
        self.inner
            .credentials_refused
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn is_connected(&self) -> bool {
        self.inner
            .channel
            .borrow()
            .as_ref()
            .is_some_and(|c| c.status().connected())
    }

    /// Stops the background task (journaled jobs stay on disk for the next start).
    pub(crate) fn stop(&self) {
        self.inner.stop.notify_one();
    }

    async fn maintain_connection(self) {
        let mut backoff = Backoff::default();
        loop {
            let attempt = self.connect().await;
            let refused = attempt.as_ref().is_err_and(amqp::refused_credentials);
            self.inner
                .credentials_refused
                .store(refused, std::sync::atomic::Ordering::Relaxed);
            self.inner.attempts.send_modify(|n| *n += 1);
            let stopped = match attempt {
                Ok((connection, channel)) => {
                    info!(queue = %self.inner.queue, "connected to RabbitMQ");
                    backoff.reset();
                    self.inner.channel.send_replace(Some(channel.clone()));
                    let stopped = self.serve(&connection, &channel).await;
                    self.inner.channel.send_replace(None);
                    // A broken connection may never answer a close: do not wait on it.
                    let _ = tokio::time::timeout(
                        Duration::from_secs(2),
                        connection.close(200, "ingest stopping".into()),
                    )
                    .await;
                    stopped
                }
                Err(e) if refused => {
                    error!(error = %e, "RabbitMQ refused the credentials in VMPIPE_AMQP_URL; \
                        uploads are journaled until they are fixed");
                    false
                }
                Err(e) => {
                    warn!(error = %e, "RabbitMQ unreachable; uploads are journaled until it is back");
                    false
                }
            };
            if stopped {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff.next_delay()) => {}
                _ = self.inner.stop.notified() => return,
            }
        }
    }

    async fn connect(&self) -> Result<(Connection, ConfirmChannel), lapin::Error> {
        let connection = amqp::connect(&self.inner.amqp_url, "vmpipe-ingest").await?;
        let channel = ConfirmChannel::open(&connection).await?;
        amqp::declare_queues(&channel, &self.inner.queue).await?;
        Ok((connection, channel))
    }

    /// Drains the journal while the connection lives. Returns true when asked to stop.
    async fn serve(&self, connection: &Connection, channel: &ConfirmChannel) -> bool {
        loop {
            if !connection.status().connected() || !channel.status().connected() {
                warn!("lost the RabbitMQ connection");
                return false;
            }
            if let Err(e) = self.drain_journal(channel).await {
                warn!(error = %e, "could not publish journaled jobs");
                return false;
            }
            tokio::select! {
                _ = self.inner.wake.notified() => {}
                // Also notices a connection that died while idle.
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = self.inner.stop.notified() => return true,
            }
        }
    }

    async fn drain_journal(&self, channel: &ConfirmChannel) -> Result<(), DrainError> {
        let journal = &self.inner.journal;
        let entries = journal.pending().await?;
        if entries.is_empty() {
            return Ok(());
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
            let published = join_all(readable.into_iter().map(
                |(entry, properties, payload)| async move {
                    (
                        entry,
                        publish_confirmed(channel, &self.inner.queue, &payload, properties).await,
                    )
                },
            ))
            .await;
            let mut confirmed = Vec::with_capacity(published.len());
            let mut failure = None;
            for (entry, result) in published {
                match result {
                    Ok(()) => confirmed.push(entry.clone()),
                    Err(e) => failure = Some(DrainError::from(e)),
                }
            }
            let count = confirmed.len() as u64;
            journal.remove(confirmed).await?;
            metrics::counter!("vmpipe_jobs_published_total", "via" => "journal").increment(count);
            debug!(jobs = count, "journaled jobs published");
            if let Some(e) = failure {
                return Err(e);
            }
        }
        Ok(())
    }
}
