//! One job, from its message to its row: parse and check the job, probe and hash the stored
//! file, upsert the row (batched with the others in flight), wake the hook runner. Passing
//! database failures are waited out here, with backoff, until shutdown; every other failure is
//! a [`JobError`] saying whether a redelivery can help.

use std::io::ErrorKind;
use std::path::Path;
use std::sync::Arc;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use vmpipe_common::backoff::Backoff;
use vmpipe_common::job::{
    CREDENTIALS_PROBE_LEN, JOB_SCHEMA_VERSION, RawJob, is_credentials_probe,
    is_credentials_probe_file,
};
use vmpipe_common::{FsStore, Settings, StorageKey};

use crate::activity::Activity;
use crate::audio::probe;
use crate::error::{JobError, ResultExt as _, is_local_shortage};
use crate::health::Health;
use crate::index::db::{self, DbError};
use crate::index::{IndexWriter, VoicemailRow, clamp};

/// What every job needs.
pub(crate) struct Context {
    pub settings: Settings,
    pub pool: PgPool,
    pub store: FsStore,
    pub health: Arc<Health>,
    /// Writes the rows, batched (and queues a transcription per hook with each new voicemail).
    pub index: IndexWriter,
    /// Whether there are hooks (then the hook runner is told of new rows).
    pub has_hooks: bool,
    /// Tells the hook runner that rows were queued.
    pub hook_wake: Arc<tokio::sync::Notify>,
    /// Jobs in progress, watched by the hook runner.
    pub activity: Arc<Activity>,
}

/// Indexes one job. Passing failures are retried here, with backoff, until shutdown.
pub(crate) async fn process(
    context: &Context,
    data: &[u8],
    shutdown: &CancellationToken,
) -> Result<(), JobError> {
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
    let path = context.store.path_of(&key);
    let reading = || format!("reading {}", path.display());
    let size = match waiting_out_shortages(shutdown, || tokio::fs::metadata(&path)).await? {
        Ok(meta) if meta.is_file() => meta.len(),
        Ok(_) => return Err(file_missing(&path)),
        Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory) => {
            return Err(file_missing(&path));
        }
        Err(e) => return Err(e).retry_with(reading()),
    };

    if is_credentials_probe(&job.attachment_name)
        && size == CREDENTIALS_PROBE_LEN
        && is_credentials_probe_file(
            &job.attachment_name,
            &waiting_out_shortages(shutdown, || tokio::fs::read(&path))
                .await?
                .retry_with(reading())?,
        )
    {
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
    let (probed, sha256) = waiting_out_shortages(shutdown, || {
        let file = path.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let sha256 = hash.then(|| sha256_file(&file)).transpose()?;
                Ok((probe::probe_for_index(&file)?, sha256))
            })
            .await
            .map_err(std::io::Error::other)?
        }
    })
    .await?
    .retry_with(reading())?;
    let probe_time = started.elapsed();
    metrics::histogram!("vmpipe_probe_duration_seconds").record(probe_time.as_secs_f64());
    let mut row = VoicemailRow::build(&job, &probed);
    if let Some(sha256) = sha256 {
        row.sha256 = sha256;
    }
    row.dropped_metadata.extend(document_dropped);
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
            Err(e) if e.is_transient() => {
                health.set_database_ok(false);
                let wait = delay.next_delay();
                warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "database unavailable; will retry");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.cancelled() => return Err(JobError::Interrupted),
                }
            }
            Err(e) => return Err(e).abort_with("database refused the row"),
        }
    }
}

fn file_missing(path: &Path) -> JobError {
    JobError::abort_because(format!("file missing: {}", path.display()))
}

/// Runs `operation` (file work) until it gets past a shortage of this process's own resources
/// (file descriptors, memory): the file is there, this worker cannot open it just now. Such a
/// job waits, unacked, rather than failing (and, failing again, being dead-lettered); other
/// results are the caller's. Only shutdown ends the wait (the job is then handed back).
async fn waiting_out_shortages<T, F, Fut>(
    shutdown: &CancellationToken,
    mut operation: F,
) -> Result<std::io::Result<T>, JobError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::io::Result<T>>,
{
    let mut delay = Backoff::default();
    loop {
        match operation().await {
            Err(e) if is_local_shortage(&e) => {
                let wait = delay.next_delay();
                warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "out of a local resource; will retry");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.cancelled() => return Err(JobError::Interrupted),
                }
            }
            other => return Ok(other),
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
