//! `worker reconcile`: compares storage with the index, the safety net for anything that
//! slipped through.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use tracing::{info, warn};
use vmpipe_common::job::JOB_SCHEMA_VERSION;
use vmpipe_common::{FsStore, PathFacts, Settings, StorageKey, UploadMode, VoicemailJob, amqp};

use super::report::{KeyList, Progress};
use super::{Admin, open_channel};
use crate::WorkerError;

/// What `worker reconcile` found. Its lists hold the first keys only, unless asked for in full.
#[derive(Debug, Serialize)]
pub struct Reconciliation {
    /// Voicemail files in storage.
    pub files: u64,
    /// Files that already had a row.
    pub indexed: u64,
    /// Files without a row, for which a job was published (or would be, in a dry run).
    pub enqueued: KeyList,
    /// Rows whose file is no longer in storage.
    pub rows_without_file: KeyList,
    /// Files whose name is not a storage key vmpipe writes (put there by hand).
    pub skipped: KeyList,
}

/// Compares storage with the index: enqueues a job for every stored file that has no row, and
/// reports rows whose file is gone. The safety net for anything that slipped through.
/// `full`: every key in the report's lists (else the first few); `progress`: how often a
/// progress line is logged.
pub async fn reconcile(
    settings: &Settings,
    dry_run: bool,
    full: bool,
    progress: Duration,
) -> Result<Reconciliation, WorkerError> {
    let Admin { pool, store } = Admin::open(settings).await?;
    let rows: Vec<String> = sqlx::query_scalar(
        "SELECT storage_key FROM voicemails UNION ALL SELECT storage_key FROM credential_probes",
    )
    .fetch_all(&pool)
    .await?;
    pool.close().await;
    let mut known: HashSet<String> = rows.into_iter().collect();

    let mut report = Reconciliation {
        files: 0,
        indexed: 0,
        enqueued: KeyList::new(full),
        rows_without_file: KeyList::new(full),
        skipped: KeyList::new(full),
    };
    let root = store.voicemail_root().to_path_buf();
    let mut missing = Vec::new();
    let mut ticks = Progress::every(progress);
    walk(&root, &mut |path| {
        if ticks.due() {
            info!(
                files = report.files,
                without_row = missing.len(),
                "reconcile progress: walking storage"
            );
        }
        let relative = path.strip_prefix(&root).expect("below root");
        let Some(name) = relative.to_str() else {
            report.skipped.push(relative.to_string_lossy());
            return;
        };
        match StorageKey::parse(name) {
            Ok(key) if key.as_str() == name => {
                report.files += 1;
                if known.remove(name) {
                    report.indexed += 1;
                } else {
                    missing.push(key);
                }
            }
            _ => report.skipped.push(name),
        }
    })?;
    let mut gone: Vec<String> = known.into_iter().collect();
    gone.sort();
    for key in gone {
        report.rows_without_file.push(key);
    }

    let channel = if dry_run || missing.is_empty() {
        None
    } else {
        Some(open_channel(settings).await?)
    };
    let to_enqueue = missing.len();
    for key in missing {
        if let Some((_, channel)) = &channel {
            let job = job_for_stored_file(&store, &key)?;
            let properties = amqp::job_properties(&job);
            amqp::publish_confirmed(channel, &settings.queue, &job.to_json(), properties).await?;
        }
        report.enqueued.push(key.as_str());
        if ticks.due() {
            info!(
                enqueued = report.enqueued.count,
                of = to_enqueue,
                dry_run,
                "reconcile progress: enqueuing"
            );
        }
    }
    if let Some((connection, _)) = channel {
        let _ = connection.close(200, "reconcile done".into()).await;
    }
    if !report.rows_without_file.is_empty() {
        warn!(
            rows = report.rows_without_file.count,
            first = report
                .rows_without_file
                .keys
                .first()
                .map_or("", String::as_str),
            "rows without a file in storage (listed in the report)"
        );
    }
    info!(
        files = report.files,
        indexed = report.indexed,
        enqueued = report.enqueued.count,
        rows_without_file = report.rows_without_file.count,
        skipped = report.skipped.count,
        dry_run,
        "reconcile finished"
    );
    Ok(report)
}

fn walk(dir: &Path, visit: &mut dyn FnMut(&Path)) -> Result<(), WorkerError> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| WorkerError::Io(dir.display().to_string(), e))?;
    for entry in entries.flatten() {
        let path = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_dir() => walk(&path, visit)?,
            Ok(t) if t.is_file() => visit(&path),
            _ => {}
        }
    }
    Ok(())
}

/// A job for a file found in storage: what the path and the file itself tell.
fn job_for_stored_file(store: &FsStore, key: &StorageKey) -> Result<VoicemailJob, WorkerError> {
    let path = store.path_of(key);
    let io = |e| WorkerError::Io(path.display().to_string(), e);
    let meta = std::fs::metadata(&path).map_err(io)?;
    let facts = PathFacts::from_segments(key.segments());
    let received_at = meta
        .modified()
        .map(chrono::DateTime::<chrono::Utc>::from)
        .unwrap_or_else(|_| chrono::Utc::now());
    let content_type = key.content_type().map(str::to_owned);
    Ok(VoicemailJob {
        schema_version: JOB_SCHEMA_VERSION,
        job_id: uuid::Uuid::now_v7(),
        storage_key: key.as_str().to_owned(),
        account_id: facts.account_id,
        document_id: facts.document_id,
        attachment_name: facts.attachment_name,
        content_type,
        size_bytes: meta.len(),
        sha256: None,
        received_at,
        upload_mode: UploadMode::Reconciled,
        kazoo_document: None,
        request_id: "reconcile".into(),
    })
}
