//! Getting each journaled job to RabbitMQ.
//!
//! An upload's job is appended to the [`Journal`] (group commit: one `fdatasync` for all the
//! uploads waiting at that moment), and the upload is answered once it is on disk. The
//! publisher's background task ([`connection`]) keeps a connection, and streams the journal to
//! RabbitMQ ([`stream`]): persistent messages with up to [`stream::WINDOW`] confirms in
//! flight on one channel, each record trimmed from the journal once confirmed. So the upload
//! does not wait for the broker's round trip, and the broker confirms in bulk, which costs it
//! a fraction of the CPU of one message at a time.
//!
//! A confirm that does not come within `publish_timeout` of its job's append counts that job
//! as waiting for the broker (`vmpipe_jobs_journaled_total{reason="timeout"}`). After
//! `VMPIPE_PUBLISH_DEGRADED_AFTER` of them in a row the publisher is degraded ([`degraded`]):
//! `/readyz` and the metrics say so until a confirm comes in time again (a probe finds out
//! when there is nothing else in flight). A job can reach the queue twice (a connection lost
//! with confirms in flight, a crash before a confirm is recorded); the worker's upsert makes
//! that harmless.

mod connection;
mod degraded;
mod stream;
mod telemetry;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use vmpipe_common::VoicemailJob;
use vmpipe_common::amqp::ConfirmChannel;

use self::degraded::ConfirmHealth;
use self::telemetry::{JOURNALED_TOTAL, JournalReason};
use crate::journal::{Journal, JournalError, Record, now_ms};

/// What an upload waits for before its 201.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CommitPoint {
    /// Its job in the journal on disk: the voicemail's own disk (or shared file system), so
    /// the job is as durable, and as reachable by another ingest, as the voicemail itself.
    Journal,
    /// Its job confirmed by RabbitMQ, or else in the journal for `publish_timeout`: for a
    /// bucket, which outlives any one ingest's disk.
    Confirm,
}

/// Where a job went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Enqueued {
    /// Confirmed by RabbitMQ before the upload was answered.
    Published,
    /// In the journal, on its way to RabbitMQ.
    Journaled,
    /// In the journal while RabbitMQ is away or not confirming: published once it is back.
    Held,
}

impl Enqueued {
    /// As logged (`enqueued` of the `voicemail stored` line).
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Enqueued::Published => "published",
            Enqueued::Journaled => "journaled",
            Enqueued::Held => "held",
        }
    }
}

/// What RabbitMQ looks like to uploads (for `/readyz`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BrokerState {
    /// Connected and confirming in time.
    Confirming,
    /// Connected, but not confirming in time: jobs wait in the journal.
    NotConfirming,
    /// Turned away for its credentials: jobs wait in the journal.
    CredentialsRefused,
    /// Not connected: jobs wait in the journal.
    Unreachable,
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
    /// At most one group of jobs is sent per this long.
    linger: Duration,
    journal: Journal,
    /// The publishing channel while connected.
    link: watch::Sender<Option<Link>>,
    /// Connections made so far.
    generations: AtomicU64,
    /// Whether confirms come in time.
    health: ConfirmHealth,
    /// The connection whose probe is awaiting its confirm (0: none).
    probing: AtomicU64,
    /// Connection attempts made so far (startup waits for the first).
    attempts: watch::Sender<u64>,
    /// The last attempt was refused for its credentials.
    credentials_refused: AtomicBool,
    stop: CancellationToken,
    commit: CommitPoint,
    /// Uploads waiting for their job's confirm ([`CommitPoint::Confirm`]), by job id.
    waiters: std::sync::Mutex<std::collections::HashMap<uuid::Uuid, oneshot::Sender<()>>>,
    /// When this process started (Unix ms): jobs journaled before are an earlier run's.
    started_ms: u64,
    /// By segment, how far jobs have been counted late (so that none is counted twice).
    counted_late: std::sync::Mutex<std::collections::HashMap<crate::journal::SegmentId, u64>>,
}

impl Publisher {
    /// Starts the background task that keeps a connection and streams the journal to it.
    pub(crate) fn start(
        amqp_url: String,
        queue: String,
        publish_timeout: Duration,
        degraded_after: u32,
        linger: Duration,
        commit: CommitPoint,
        journal: Journal,
    ) -> (Self, JoinHandle<()>) {
        // Uploads waiting for their confirm do not wait for a group to gather.
        let linger = match commit {
            CommitPoint::Journal => linger,
            CommitPoint::Confirm => Duration::ZERO,
        };
        let queue = Self {
            inner: Arc::new(Inner {
                amqp_url,
                queue,
                publish_timeout,
                linger,
                journal,
                link: watch::channel(None).0,
                generations: AtomicU64::new(0),
                health: ConfirmHealth::new(degraded_after),
                probing: AtomicU64::new(0),
                attempts: watch::channel(0).0,
                credentials_refused: Default::default(),
                stop: CancellationToken::new(),
                commit,
                waiters: Default::default(),
                started_ms: now_ms(),
                counted_late: Default::default(),
            }),
        };
        let task = tokio::spawn(queue.clone().maintain_connection());
        (queue, task)
    }

    /// Waits (at most `limit`) for the first connection attempt to succeed or fail, so that
    /// uploads right after startup are not counted as held just because the connection was
    /// not up yet.
    pub(crate) async fn first_attempt(&self, limit: Duration) {
        let mut attempts = self.inner.attempts.subscribe();
        let _ = tokio::time::timeout(limit, attempts.wait_for(|n| *n > 0)).await;
    }

    /// Makes `job` (whose JSON is `payload`) durable in the journal; the publisher takes it
    /// from there. While the broker is away or not confirming, the job counts as held.
    pub(crate) async fn enqueue(
        &self,
        job: &VoicemailJob,
        payload: Vec<u8>,
    ) -> Result<Enqueued, JournalError> {
        let held = match self.broker_state() {
            BrokerState::Confirming => None,
            BrokerState::NotConfirming => Some(JournalReason::Degraded),
            BrokerState::CredentialsRefused | BrokerState::Unreachable => {
                Some(JournalReason::Disconnected)
            }
        };
        let record = Record {
            held: held.is_some(),
            appended_ms: now_ms(),
            job_id: job.job_id,
            received_secs: job.received_at.timestamp().max(0) as u64,
            request_id: job.request_id.clone(),
            payload,
        };
        if self.inner.commit == CommitPoint::Confirm && held.is_none() {
            return self.append_and_wait(&record).await;
        }
        self.inner.journal.append(&record).await?;
        Ok(match held {
            Some(reason) => {
                metrics::counter!(JOURNALED_TOTAL, "reason" => reason.as_str()).increment(1);
                Enqueued::Held
            }
            None => Enqueued::Journaled,
        })
    }

    /// Appends `record` and waits (at most `publish_timeout`) for RabbitMQ to confirm it.
    async fn append_and_wait(&self, record: &Record) -> Result<Enqueued, JournalError> {
        let (confirmed, waiting) = oneshot::channel();
        let waiters = &self.inner.waiters;
        if let Ok(mut waiters) = waiters.lock() {
            waiters.insert(record.job_id, confirmed);
        }
        let forget = || {
            if let Ok(mut waiters) = waiters.lock() {
                waiters.remove(&record.job_id);
            }
        };
        if let Err(e) = self.inner.journal.append(record).await {
            forget();
            return Err(e);
        }
        match tokio::time::timeout(self.inner.publish_timeout, waiting).await {
            Ok(Ok(())) => Ok(Enqueued::Published),
            // Not in time (counted by the publisher): durable in the journal all the same.
            _ => {
                forget();
                Ok(Enqueued::Journaled)
            }
        }
    }

    /// Tells the upload waiting for `job_id`'s confirm, if one is.
    fn confirmed_to_upload(&self, job_id: uuid::Uuid) {
        if self.inner.commit == CommitPoint::Confirm
            && let Some(waiter) = self
                .inner
                .waiters
                .lock()
                .ok()
                .and_then(|mut w| w.remove(&job_id))
        {
            let _ = waiter.send(());
        }
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

    /// Stops the background task: the confirms in flight get a moment, what they confirm is
    /// recorded, and the rest stays in the journal for the next start.
    pub(crate) fn stop(&self) {
        self.inner.stop.cancel();
    }
}
