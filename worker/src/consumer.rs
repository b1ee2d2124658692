//! Consuming jobs: at-least-once, acked only after the row is committed.
//!
//! Each delivery runs in its own task (a panic there cannot stop the consumer). The number in
//! flight is bounded by the channel's prefetch. A job that can never succeed goes to the
//! dead-letter queue with the reason; one that failed for a passing reason (database away) is
//! retried with backoff while it stays unacked, so a crash or shutdown hands it back to
//! RabbitMQ.

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, message::Delivery};
use sqlx::PgPool;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, error, info, info_span, warn};
use vmpipe_common::backoff::Backoff;
use vmpipe_common::job::{JOB_SCHEMA_VERSION, is_credentials_probe};
use vmpipe_common::{FsStore, Settings, StorageKey, VoicemailJob, amqp};

use crate::db::{self, DbError};
use crate::index::{self, VoicemailRow};
use crate::probe;

/// Why a job did not complete.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Retrying cannot help: dead-letter it.
    #[error("{0}")]
    Permanent(String),
    /// May work next time (the file could not be read, say): redelivered, and dead-lettered
    /// once it has been delivered `VMPIPE_MAX_DELIVERIES` times.
    #[error("{0}")]
    Retry(String),
    /// Shutdown came while the job waited to retry: give it back to RabbitMQ.
    #[error("interrupted by shutdown")]
    Interrupted,
}

#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    #[error(transparent)]
    Amqp(#[from] lapin::Error),
    #[error("RabbitMQ ended the consumer")]
    ConsumerEnded,
    #[error("RabbitMQ refused the dead letter")]
    DeadLetterNacked,
}

/// What every job needs.
pub struct Context {
    pub settings: Settings,
    pub pool: PgPool,
    pub store: FsStore,
    pub health: Arc<Health>,
    /// Writes the rows, batched (and queues a transcription per hook with each new voicemail).
    pub index: crate::batch::IndexWriter,
    /// Whether there are hooks (then the hook runner is told of new rows).
    pub has_hooks: bool,
    /// Tells the hook runner that rows were queued.
    pub hook_wake: Arc<tokio::sync::Notify>,
    /// Jobs in progress, watched by the hook runner.
    pub activity: Arc<Activity>,
}

/// Jobs in progress. Hook runs start once indexing has been quiet for a moment (or after a
/// bounded wait), so that a storm of voicemails is indexed at full speed and transcribed after.
#[derive(Debug)]
pub struct Activity {
    in_flight: std::sync::atomic::AtomicUsize,
    /// When `in_flight` last fell to 0 (at start: a moment later, for the consumer to connect and
    /// pick up any backlog first).
    quiet_since: std::sync::Mutex<tokio::time::Instant>,
    idle: tokio::sync::Notify,
}

impl Default for Activity {
    fn default() -> Self {
        Self {
            in_flight: Default::default(),
            quiet_since: std::sync::Mutex::new(
                tokio::time::Instant::now() + std::time::Duration::from_secs(1),
            ),
            idle: Default::default(),
        }
    }
}

impl Activity {
    fn begin(&self) -> ActiveJob<'_> {
        self.in_flight
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        ActiveJob(self)
    }

    /// Waits until no job has been in progress for `quiet`, or `at_most`.
    pub async fn wait_quiet(&self, quiet: std::time::Duration, at_most: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + at_most;
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            let wake_at = if self.in_flight.load(std::sync::atomic::Ordering::SeqCst) == 0 {
                let quiet_from = *self.quiet_since.lock().expect("not poisoned") + quiet;
                if quiet_from <= tokio::time::Instant::now() {
                    return;
                }
                quiet_from.min(deadline)
            } else {
                deadline
            };
            tokio::select! {
                _ = idle => {}
                _ = tokio::time::sleep_until(wake_at) => {
                    if wake_at == deadline {
                        return;
                    }
                }
            }
        }
    }
}

struct ActiveJob<'a>(&'a Activity);

impl Drop for ActiveJob<'_> {
    fn drop(&mut self) {
        let activity = self.0;
        let mut quiet_since = activity.quiet_since.lock().expect("not poisoned");
        if activity
            .in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst)
            == 1
        {
            *quiet_since = tokio::time::Instant::now();
            activity.idle.notify_waiters();
        }
    }
}

/// What readiness reports: set by the consumer and by every database write.
#[derive(Debug, Default)]
pub struct Health {
    pub consuming: std::sync::atomic::AtomicBool,
    pub database_ok: std::sync::atomic::AtomicBool,
}

impl Health {
    fn set_consuming(&self, on: bool) {
        self.consuming
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    fn set_database_ok(&self, ok: bool) {
        self.database_ok
            .store(ok, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Consumes until `shutdown`, reconnecting to RabbitMQ with backoff when the connection drops.
pub async fn consume(context: Arc<Context>, shutdown: CancellationToken) {
    let mut delay = Backoff::default();
    loop {
        let result = consume_once(&context, &shutdown).await;
        context.health.set_consuming(false);
        match result {
            Ok(()) => return,
            Err(e) => warn!(error = %e, "RabbitMQ connection lost or refused; reconnecting"),
        }
        tokio::select! {
            _ = tokio::time::sleep(delay.next_delay()) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// One connection's worth of consuming. Returns Ok on shutdown (after in-flight jobs finish).
async fn consume_once(
    context: &Arc<Context>,
    shutdown: &CancellationToken,
) -> Result<(), ConsumeError> {
    let settings = &context.settings;
    let connection = amqp::connect(settings.amqp_url.expose(), "vmpipe-worker").await?;
    let channel = connection.create_channel().await?;
    amqp::declare_queues(&channel, &settings.queue).await?;
    channel
        .basic_qos(settings.worker_concurrency, BasicQosOptions::default())
        .await?;
    // Dead letters are published with confirms: a job is acked only once its dead letter is safe.
    let dead_letters = connection.create_channel().await?;
    dead_letters
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let mut consumer = channel
        .basic_consume(
            settings.queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    info!(queue = %settings.queue, concurrency = settings.worker_concurrency, "consuming jobs");
    context.health.set_consuming(true);

    let tasks = TaskTracker::new();
    let result = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            next = consumer.next() => match next {
                Some(Ok(delivery)) => {
                    let context = context.clone();
                    let dead_letters = dead_letters.clone();
                    let shutdown = shutdown.clone();
                    tasks.spawn(async move {
                        handle_delivery(&context, &dead_letters, delivery, &shutdown).await;
                    });
                }
                Some(Err(e)) => break Err(ConsumeError::Amqp(e)),
                None => break Err(ConsumeError::ConsumerEnded),
            }
        }
    };
    // Stop new deliveries, let the jobs in hand finish (their acks need the channel open).
    let _ = channel
        .basic_cancel(consumer.tag(), BasicCancelOptions::default())
        .await;
    tasks.close();
    tasks.wait().await;
    let _ = connection.close(200, "worker stopping".into()).await;
    result
}

async fn handle_delivery(
    context: &Context,
    dead_letters: &Channel,
    delivery: Delivery,
    shutdown: &CancellationToken,
) {
    let message_id = delivery
        .properties
        .message_id()
        .as_ref()
        .map(|id| id.to_string())
        .unwrap_or_default();
    let span = info_span!("job", job_id = %message_id, storage_key = tracing::field::Empty,
        request_id = tracing::field::Empty, redelivered = delivery.redelivered);
    async {
        let _active = context.activity.begin();
        let deliveries = delivery_count(&delivery) + 1;
        let max = u64::from(context.settings.max_deliveries);
        let outcome = if deliveries > max {
            // Every earlier delivery ended without an ack: the worker crashed or was killed
            // while processing it, over and over. Stop the loop.
            Err(JobError::Permanent(format!(
                "delivered {deliveries} times without completing (the worker stopped while processing it each time)"
            )))
        } else {
            process(context, &delivery.data, shutdown).await
        };
        let label = match &outcome {
            Ok(()) => "indexed",
            Err(JobError::Interrupted) => "requeued",
            Err(JobError::Retry(_)) if deliveries < max => "retried",
            Err(_) => "dead_lettered",
        };
        metrics::counter!("vmpipe_jobs_total", "outcome" => label).increment(1);
        let settled = match outcome {
            Ok(()) => delivery.ack(BasicAckOptions::default()).await,
            Err(JobError::Interrupted) => requeue(&delivery).await,
            Err(JobError::Retry(reason)) if deliveries < max => {
                let wait = Backoff::after_attempts(deliveries);
                warn!(%reason, deliveries, retry_in = ?wait, "job failed; it will be retried");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.cancelled() => {}
                }
                requeue(&delivery).await
            }
            Err(JobError::Retry(reason)) | Err(JobError::Permanent(reason)) => {
                let reason = if deliveries >= max && !reason.starts_with("delivered ") {
                    format!("failed {deliveries} times; last error: {reason}")
                } else {
                    reason
                };
                warn!(%reason, "job can never succeed; dead-lettering it");
                match dead_letter(
                    dead_letters,
                    &context.settings.dead_letter_queue(),
                    &delivery,
                    &reason,
                )
                .await
                {
                    Ok(()) => delivery.ack(BasicAckOptions::default()).await,
                    Err(e) => {
                        // The queue's own dead-letter route still keeps it (without the reason).
                        error!(error = %e, "could not publish the dead letter; rejecting instead");
                        delivery.nack(BasicNackOptions::default()).await
                    }
                }
            }
        };
        if let Err(e) = settled {
            // The channel is gone: RabbitMQ redelivers the job, and the upsert makes that harmless.
            warn!(error = %e, "could not settle the delivery; it will be redelivered");
        }
    }
    .instrument(span)
    .await
}

/// Earlier deliveries of this message, as RabbitMQ's quorum queues count them.
fn delivery_count(delivery: &Delivery) -> u64 {
    let count = delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-delivery-count").cloned());
    match count {
        Some(AMQPValue::LongLongInt(n)) => n.max(0) as u64,
        Some(AMQPValue::LongInt(n)) => n.max(0) as u64,
        Some(AMQPValue::ShortInt(n)) => n.max(0) as u64,
        Some(AMQPValue::LongUInt(n)) => u64::from(n),
        _ => u64::from(delivery.redelivered),
    }
}

async fn requeue(delivery: &Delivery) -> Result<bool, lapin::Error> {
    delivery
        .nack(BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await
}

/// Indexes one job. Passing failures are retried here, with backoff, until shutdown.
pub async fn process(
    context: &Context,
    data: &[u8],
    shutdown: &CancellationToken,
) -> Result<(), JobError> {
    let job = VoicemailJob::from_json(data)
        .map_err(|e| JobError::Permanent(format!("not a vmpipe job: {e}")))?;
    let span = tracing::Span::current();
    span.record("storage_key", job.storage_key.as_str());
    span.record("request_id", job.request_id.as_str());
    if job.schema_version > JOB_SCHEMA_VERSION {
        return Err(JobError::Permanent(format!(
            "job schema version {} is newer than this worker's {JOB_SCHEMA_VERSION}",
            job.schema_version
        )));
    }
    let key = StorageKey::parse(&job.storage_key)
        .map_err(|e| JobError::Permanent(format!("invalid storage key: {e}")))?;
    let path = context.store.path_of(&key);
    if !path.is_file() {
        return Err(JobError::Permanent(format!(
            "file missing: {}",
            path.display()
        )));
    }

    if is_credentials_probe(&job.attachment_name) {
        return retry_transient(&context.health, shutdown, || async {
            db::record_credential_probe(
                &context.pool,
                &job.storage_key,
                job.account_id.as_deref(),
                job.received_at,
            )
            .await
            .map_err(DbError::from)
        })
        .await;
    }

    let started = std::time::Instant::now();
    let hash = job.sha256.is_none();
    let (probed, sha256) = tokio::task::spawn_blocking(move || {
        let sha256 = hash.then(|| {
            index::sha256_file(&path).map_err(|e| format!("reading {}: {e}", path.display()))
        });
        // A panic while probing hostile audio is a probe error, not a dead worker.
        let probed = std::panic::catch_unwind(|| probe::probe_file(&path))
            .map_err(|panic| format!("probe crashed: {}", crate::panic_text(&panic)))
            .and_then(|probed| probed.map_err(|e| e.to_string()));
        (probed, sha256)
    })
    .await
    .map_err(|e| JobError::Retry(format!("probing stopped: {e}")))?;
    let probe_time = started.elapsed();
    metrics::histogram!("vmpipe_probe_duration_seconds").record(probe_time.as_secs_f64());
    let mut row = VoicemailRow::build(&job, &probed);
    if let Some(sha256) = sha256 {
        row.sha256 = sha256.map_err(JobError::Retry)?;
    }
    let written = retry_transient(&context.health, shutdown, || {
        context.index.upsert(row.clone())
    })
    .await?;
    if written && context.has_hooks {
        context.hook_wake.notify_one();
    }
    metrics::histogram!("vmpipe_index_duration_seconds").record(started.elapsed().as_secs_f64());
    // Age of the voicemail when its row was written: is the pipeline keeping up?
    let lag = (chrono::Utc::now() - job.received_at)
        .num_milliseconds()
        .max(0) as f64
        / 1000.0;
    metrics::histogram!("vmpipe_job_lag_seconds").record(lag);
    info!(
        duration_ms = row.duration_ms,
        probe_error = row.probe_error.as_deref(),
        probe_ms = probe_time.as_millis() as u64,
        written,
        "voicemail indexed"
    );
    Ok(())
}

/// Runs `operation` until it succeeds or fails for good, waiting longer after each passing
/// failure (database restarting, unreachable) instead of spinning.
async fn retry_transient<T, F, Fut>(
    health: &Health,
    shutdown: &CancellationToken,
    mut operation: F,
) -> Result<T, JobError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, DbError>>,
{
    let mut delay = Backoff::default();
    loop {
        match operation().await {
            Ok(value) => {
                health.set_database_ok(true);
                return Ok(value);
            }
            Err(e) if e.transient => {
                health.set_database_ok(false);
                let wait = delay.next_delay();
                warn!(error = %e, retry_in = ?wait, "database unavailable; will retry");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.cancelled() => return Err(JobError::Interrupted),
                }
            }
            Err(e) => {
                return Err(JobError::Permanent(format!(
                    "database refused the row: {e}"
                )));
            }
        }
    }
}

async fn dead_letter(
    channel: &Channel,
    queue: &str,
    delivery: &Delivery,
    reason: &str,
) -> Result<(), ConsumeError> {
    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
    headers.insert(
        "x-vmpipe-error".into(),
        AMQPValue::LongString(reason.into()),
    );
    headers.insert(
        "x-vmpipe-failed-at".into(),
        AMQPValue::LongString(chrono::Utc::now().to_rfc3339().into()),
    );
    let properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_headers(headers);
    let properties = match delivery.properties.message_id() {
        Some(id) => properties.with_message_id(id.clone()),
        None => properties,
    };
    let confirm = channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            &delivery.data,
            properties,
        )
        .await?
        .await?;
    match confirm {
        Confirmation::Nack(_) => Err(ConsumeError::DeadLetterNacked),
        _ => Ok(()),
    }
}
