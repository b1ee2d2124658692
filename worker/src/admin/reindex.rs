//! `worker reindex`: probes every indexed file again and rewrites its measured columns.

use std::time::Duration;

use serde::Serialize;
use tracing::info;
use vmpipe_common::{Settings, StorageKey};

use super::Admin;
use super::report::{KeyList, Progress};
use crate::WorkerError;
use crate::audio::probe;
use crate::index::ProbeColumns;

/// What `worker reindex` did.
#[derive(Debug, Serialize)]
pub struct Reindexed {
    pub rows: u64,
    pub reprobed: u64,
    pub files_missing: KeyList,
}

/// Probes every indexed voicemail's file again and rewrites its measured columns (after an
/// upgrade of the probe, say). KAZOO's metadata in the rows is kept.
///
/// `full`: every missing file in the report (else the first few); `progress`: how often a
/// progress line is logged.
pub async fn reindex(
    settings: &Settings,
    full: bool,
    progress: Duration,
) -> Result<Reindexed, WorkerError> {
    let Admin { pool, store } = Admin::open(settings).await?;
    probe::set_timeout(settings.probe_timeout());
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM voicemails")
        .fetch_one(&pool)
        .await?;
    let mut ticks = Progress::every(progress);
    let mut report = Reindexed {
        rows: 0,
        reprobed: 0,
        files_missing: KeyList::new(full),
    };
    let mut after = String::new();
    loop {
        let keys: Vec<String> = sqlx::query_scalar(
            "SELECT storage_key FROM voicemails WHERE storage_key > $1 ORDER BY storage_key LIMIT 500",
        )
        .bind(&after)
        .fetch_all(&pool)
        .await?;
        let Some(last) = keys.last() else { break };
        after = last.clone();
        for key in keys {
            report.rows += 1;
            if ticks.due() {
                info!(
                    rows = report.rows,
                    reprobed = report.reprobed,
                    files_missing = report.files_missing.count,
                    of = total,
                    "reindex progress"
                );
            }
            let Ok(parsed) = StorageKey::parse(&key) else {
                continue;
            };
            let Some(local) = store.local_copy(&parsed).await? else {
                report.files_missing.push(key);
                continue;
            };
            let size = local.size();
            let probed = tokio::task::spawn_blocking(move || probe::probe_for_index(local.path()))
                .await?
                .map_err(|e| WorkerError::Io(key.clone(), e))?;
            let measured = ProbeColumns::from_probe(&probed);
            sqlx::query(
                "UPDATE voicemails SET duration_ms = $2, codec = $3, sample_rate = $4, channels = $5,
                 bitrate_bps = $6, probe_error = $7, size_bytes = $8, indexed_at = now()
                 WHERE storage_key = $1",
            )
            .bind(&key)
            .bind(measured.duration_ms)
            .bind(measured.codec)
            .bind(measured.sample_rate)
            .bind(measured.channels)
            .bind(measured.bitrate_bps)
            .bind(measured.probe_error)
            .bind(size as i64)
            .execute(&pool)
            .await?;
            report.reprobed += 1;
        }
    }
    pool.close().await;
    info!(
        rows = report.rows,
        reprobed = report.reprobed,
        files_missing = report.files_missing.count,
        "reindex finished"
    );
    Ok(report)
}
