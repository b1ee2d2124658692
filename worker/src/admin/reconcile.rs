//! `worker reconcile`: compares storage with the index, the safety net for anything that
//! slipped through.

use std::collections::HashSet;
use std::time::Duration;

use futures_util::StreamExt;
use serde::Serialize;
use tracing::{info, warn};
use vmpipe_common::job::JOB_SCHEMA_VERSION;
use vmpipe_common::{
    Listed, ObjectInfo, PathFacts, Settings, StorageKey, UploadMode, VoicemailJob, amqp,
};

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
    let mut missing = Vec::new();
    let mut ticks = Progress::every(progress);
    let mut listing = store.list();
    while let Some(listed) = listing.next().await {
        let Listed { name, info } = listed?;
        if ticks.due() {
            info!(
                files = report.files,
                without_row = missing.len(),
                "reconcile progress: walking storage"
            );
        }
        match StorageKey::parse(&name) {
            Ok(key) if key.as_str() == name => {
                report.files += 1;
                if known.remove(&name) {
                    report.indexed += 1;
                } else {
                    missing.push((key, info));
                }
            }
            _ => report.skipped.push(name),
        }
    }
    drop(listing);
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
    for (key, info) in missing {
        if let Some((_, channel)) = &channel {
            let job = job_for_stored_file(&key, info);
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

/// A job for a file found in storage: what the path and the file itself tell.
fn job_for_stored_file(key: &StorageKey, info: ObjectInfo) -> VoicemailJob {
    let facts = PathFacts::from_segments(key.segments());
    let received_at = chrono::DateTime::<chrono::Utc>::from(info.modified);
    let content_type = key.content_type().map(str::to_owned);
    VoicemailJob {
        schema_version: JOB_SCHEMA_VERSION,
        job_id: uuid::Uuid::now_v7(),
        storage_key: key.as_str().to_owned(),
        account_id: facts.account_id,
        document_id: facts.document_id,
        attachment_name: facts.attachment_name,
        content_type,
        size_bytes: info.size,
        sha256: None,
        received_at,
        upload_mode: UploadMode::Reconciled,
        kazoo_document: None,
        request_id: "reconcile".into(),
    }
}
