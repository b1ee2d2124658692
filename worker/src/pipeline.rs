//! One job, from its message to its row: parse and check the job, probe and hash the stored
//! file, upsert the row (batched with the others in flight), wake the hook runner. Passing
//! database failures are waited out here (until the database is back, for every job at once:
//! [`DatabaseWatch`]), and so are shortages of the worker's own resources; every other failure
//! is a [`JobError`] saying whether a redelivery can help. A job stops early at shutdown, or
//! when its delivery's channel is gone ([`Stop`]).

use std::path::Path;
use std::sync::Arc;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use vmpipe_common::backoff::Backoff;
use vmpipe_common::job::{
    CREDENTIALS_PROBE_LEN, JOB_SCHEMA_VERSION, RawJob, is_credentials_probe,
    is_credentials_probe_file,
};
use vmpipe_common::{Settings, Storage, StorageError, StorageKey};

use crate::activity::Activity;
use crate::audio::probe;
use crate::error::{JobError, ResultExt as _, is_local_shortage};
use crate::health::Health;
use crate::index::db::{self, DbError};
use crate::index::watch::{DatabaseWatch, PROBE_CAP};
use crate::index::{IndexWriter, VoicemailRow, clamp};

/// A job's first pause after a passing database failure (then doubling, at most the prober's
/// interval): only a failure the database keeps giving while it answers probes makes it grow.
const PAUSE_BASE: std::time::Duration = std::time::Duration::from_millis(100);

/// What every job needs.
pub(crate) struct Context {
    pub settings: Settings,
    pub pool: PgPool,
    pub store: Arc<dyn Storage>,
    pub health: Arc<Health>,
    /// Whether PostgreSQL answers; jobs wait on it together.
    pub database: Arc<DatabaseWatch>,
    /// Writes the rows, batched (and queues a transcription per hook with each new voicemail).
    pub index: IndexWriter,
    /// Whether there are hooks (then the hook runner is told of new rows).
    pub has_hooks: bool,
    /// Tells the hook runner that rows were queued.
    pub hook_wake: Arc<tokio::sync::Notify>,
    /// Jobs in progress, watched by the hook runner.
    pub activity: Arc<Activity>,
}

/// What ends a job early, with [`JobError::Interrupted`]: shutdown ends its waits (work in
/// progress finishes, and the job is handed back); the loss of its delivery's channel ends
/// waits and work alike (nothing done now could be acked, and RabbitMQ delivers the job again).
#[derive(Clone)]
pub(crate) struct Stop {
    pub shutdown: CancellationToken,
    pub channel_lost: CancellationToken,
}

impl Stop {
    /// Whether the delivery's channel is gone.
    pub(crate) fn channel_lost(&self) -> bool {
        self.channel_lost.is_cancelled()
    }

    /// Waits for `future` (a pause, a signal), unless the job must stop first.
    pub(crate) async fn wait<F: std::future::Future>(
        &self,
        future: F,
    ) -> Result<F::Output, JobError> {
        tokio::select! {
            biased;
            _ = self.shutdown.cancelled() => Err(JobError::Interrupted),
            _ = self.channel_lost.cancelled() => Err(JobError::Interrupted),
            output = future => Ok(output),
        }
    }

    /// Does `work`, unless the channel is lost first (at shutdown, work in progress finishes).
    async fn work<F: std::future::Future>(&self, work: F) -> Result<F::Output, JobError> {
        tokio::select! {
            biased;
            _ = self.channel_lost.cancelled() => Err(JobError::Interrupted),
            output = work => Ok(output),
        }
    }
}

/// Indexes one job. Passing failures are waited out here until `stop`.
pub(crate) async fn process(context: &Context, data: &[u8], stop: &Stop) -> Result<(), JobError> {
    let mut document_dropped = None;
    let job = RawJob::parse(data)
        .abort_with("not a vmpipe job")?
        .map_document(|raw| {
            let (document, dropped) = clamp::admit_document(raw, context.settings.max_document.0);
            document_dropped = dropped;
            document
        });
    let span = tracing::Span::current();
    span.record("storage_key", job.storage_key.as_str());
    span.record("request_id", job.request_id.as_str());
    if job.schema_version > JOB_SCHEMA_VERSION {
        return Err(JobError::abort_because(format!(
            "job schema version {} is newer than this worker's {JOB_SCHEMA_VERSION}",
            job.schema_version
        )));
    }
    let key = StorageKey::parse(&job.storage_key).abort_with("invalid storage key")?;
    let reading = || format!("reading {} from {}", key.as_str(), context.store.location());
    let Some(local) = waiting_out_shortages(stop, || context.store.local_copy(&key))
        .await?
        .map_err(storage_failure(reading()))?
    else {
        return Err(file_missing(&key, context.store.as_ref()));
    };

    if is_credentials_probe(&job.attachment_name)
        && local.size() == CREDENTIALS_PROBE_LEN
        && is_credentials_probe_file(
            &job.attachment_name,
            &waiting_out_shortages(stop, || tokio::fs::read(local.path()))
                .await?
                .retry_with(reading())?,
        )
    {
        return retry_transient(&context.database, stop, || async {
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
    let (probed, sha256) = waiting_out_shortages(stop, || {
        let file = local.path().to_path_buf();
        async move {
            tokio::task::spawn_blocking(move || {
                let sha256 = hash.then(|| sha256_file(&file)).transpose()?;
                Ok::<_, std::io::Error>((probe::probe_for_index(&file)?, sha256))
            })
            .await
            .map_err(std::io::Error::other)?
        }
    })
    .await?
    .retry_with(reading())?;
    // A temporary copy (from an object store) is deleted now.
    drop(local);
    let probe_time = started.elapsed();
    metrics::histogram!("vmpipe_probe_duration_seconds").record(probe_time.as_secs_f64());
    let mut row = VoicemailRow::build(&job, &probed);
    if let Some(sha256) = sha256 {
        row.sha256 = sha256;
    }
    row.dropped_metadata.extend(document_dropped);
    let written = retry_transient(&context.database, stop, || {
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

/// Runs `operation` (a database write) until it succeeds or fails for good. After a passing
/// failure (the database restarting, unreachable) the job waits until the database is back, a
/// signal every waiting job gets at once (see [`DatabaseWatch`]), and at least a short pause
/// of its own; while the database is known to be down, it does not even try.
async fn retry_transient<T, F, Fut>(
    database: &Arc<DatabaseWatch>,
    stop: &Stop,
    mut operation: F,
) -> Result<T, JobError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, DbError>>,
{
    let mut pause = Backoff::new(PAUSE_BASE, PROBE_CAP);
    let mut waited = false;
    loop {
        if !database.is_up() {
            stop.wait(database.back()).await?;
        }
        match stop.work(operation()).await? {
            Ok(value) => {
                database.report_up();
                return Ok(value);
            }
            Err(e) if e.is_transient() => {
                database.report_down(&e);
                if !waited {
                    warn!(error = %e, "database unavailable; the job waits for it");
                    waited = true;
                } else {
                    debug!(error = %e, "database unavailable again; the job waits for it");
                }
                let pause = pause.next_delay();
                stop.wait(async {
                    tokio::join!(tokio::time::sleep(pause), database.back());
                })
                .await?;
            }
            Err(e) => return Err(e).abort_with("database refused the row"),
        }
    }
}

fn file_missing(key: &StorageKey, store: &dyn Storage) -> JobError {
    JobError::abort_because(format!(
        "file missing: {} (in {})",
        key.as_str(),
        store.location()
    ))
}

/// A storage failure that outlasted [`waiting_out_shortages`]: an object too large to copy
/// stays so (give up); anything else may pass (retry).
fn storage_failure(doing: String) -> impl FnOnce(StorageError) -> JobError {
    move |e| match e {
        StorageError::TooLarge { .. } => JobError::abort(anyhow::Error::new(e).context(doing)),
        e => JobError::retry(anyhow::Error::new(e).context(doing)),
    }
}

/// Runs `operation` (file work) until it gets past a shortage of this process's own resources
/// (file descriptors, memory), or an object store's outage: the file is there, this worker
/// cannot read it just now. Such a job waits, unacked, rather than failing (and, failing
/// again, being dead-lettered); other results are the caller's. Only `stop` ends the wait.
async fn waiting_out_shortages<T, E, F, Fut>(
    stop: &Stop,
    mut operation: F,
) -> Result<Result<T, E>, JobError>
where
    E: Passing + std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut delay = Backoff::default();
    loop {
        match operation().await {
            Err(e) if e.is_passing() => {
                let wait = delay.next_delay();
                warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "storage unreadable for now; will retry");
                stop.wait(tokio::time::sleep(wait)).await?;
            }
            other => return Ok(other),
        }
    }
}

/// A failure that passes by itself: a shortage of a local resource, a store that is down.
trait Passing {
    fn is_passing(&self) -> bool;
}

impl Passing for std::io::Error {
    fn is_passing(&self) -> bool {
        is_local_shortage(self)
    }
}

impl Passing for StorageError {
    fn is_passing(&self) -> bool {
        match self {
            StorageError::Io { source, .. } => is_local_shortage(source),
            StorageError::Unavailable { .. } => true,
            _ => false,
        }
    }
}

/// SHA-256 of a stored file, lower-case hex (read in 256 KiB pieces).
pub(crate) fn sha256_file(path: &Path) -> std::io::Result<String> {
    use sha2::Digest as _;
    use std::io::Read as _;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(hex::encode(hasher.finalize()));
        }
        hasher.update(&buf[..n]);
    }
}
