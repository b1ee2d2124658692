//! `worker transcribe --all [--hook NAME] [--status STATUS]`: queues hook runs in bulk (turning
//! a transcriber on for the voicemails already indexed, or retrying the failed ones), for the
//! running workers to work through. Nothing runs in this process.

use serde::Serialize;
use tracing::info;
use vmpipe_common::Settings;

use super::Admin;
use crate::WorkerError;
use crate::hooks::{self, runner::RunnerError};

/// Which voicemails `transcribe --all --status` queues: those whose row for the hook is in
/// this state, or (`none`) that have no row for it yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum QueueStatus {
    Pending,
    Done,
    Failed,
    None,
}

impl QueueStatus {
    fn as_str(self) -> &'static str {
        match self {
            QueueStatus::Pending => "pending",
            QueueStatus::Done => "done",
            QueueStatus::Failed => "failed",
            QueueStatus::None => "none",
        }
    }
}

/// What `transcribe --all` queued for one hook.
#[derive(Debug, Serialize)]
pub struct Queued {
    pub hook: String,
    /// Runs queued: `new_rows` plus `reset`.
    pub queued: i64,
    /// Voicemails that had no row for the hook.
    pub new_rows: i64,
    /// Rows set back to `pending` (attempts from zero).
    pub reset: i64,
    /// Rows left alone because an attempt is running.
    pub running: i64,
}

/// Queues a run of `only` (or of every configured hook) for every voicemail, or for those
/// whose row is in `status`: rows are created, or set back to `pending` with their attempts
/// from zero. A running attempt is never reset. The last transcript stays until a run
/// replaces it.
pub async fn queue_hooks(
    settings: &Settings,
    only: Option<&str>,
    status: Option<QueueStatus>,
) -> Result<Vec<Queued>, WorkerError> {
    let configured = hooks::from_settings(settings).map_err(WorkerError::Hook)?;
    let names: Vec<String> = configured.iter().map(|h| h.name().to_owned()).collect();
    if names.is_empty() {
        return Err(RunnerError::NoHooks.into());
    }
    if let Some(name) = only
        && !names.iter().any(|n| n == name)
    {
        return Err(RunnerError::NoSuchHook(name.to_owned()).into());
    }
    let Admin { pool, .. } = Admin::open(settings).await?;
    let mut report = Vec::new();
    for hook in names.iter().filter(|n| only.is_none_or(|o| o == *n)) {
        let (new_rows, reset, running): (i64, i64, i64) = sqlx::query_as(
            "WITH chosen AS (
                SELECT v.id, v.received_at, coalesce(v.recorded_at, v.received_at) AS listed_at,
                    v.account_id, t.id AS row_id, t.status
                FROM voicemails v
                LEFT JOIN transcriptions t ON t.voicemail_id = v.id AND t.hook = $1
                WHERE CASE
                    WHEN $2::text IS NULL THEN t.status IS DISTINCT FROM 'running'
                    WHEN $2 = 'none' THEN t.id IS NULL
                    ELSE t.status = $2 END
             ), inserted AS (
                INSERT INTO transcriptions (voicemail_id, hook, audio_received_at, listed_at,
                    account_id)
                SELECT id, $1, received_at, listed_at, account_id FROM chosen WHERE row_id IS NULL
                ON CONFLICT (voicemail_id, hook) DO NOTHING
                RETURNING 1
             ), reset AS (
                UPDATE transcriptions t SET status = 'pending', attempts = 0, error = NULL,
                    queued_at = now(), next_attempt_at = now(), attempt_id = NULL
                FROM chosen
                -- Still as seen: a row a worker claimed meanwhile is running, and left alone.
                WHERE t.id = chosen.row_id AND t.status = chosen.status
                RETURNING 1
             )
             SELECT (SELECT count(*) FROM inserted), (SELECT count(*) FROM reset),
                (SELECT count(*) FROM transcriptions WHERE hook = $1 AND status = 'running')",
        )
        .bind(hook)
        .bind(status.map(QueueStatus::as_str))
        .fetch_one(&pool)
        .await?;
        info!(hook = %hook, new_rows, reset, running, "hook runs queued");
        report.push(Queued {
            hook: hook.clone(),
            queued: new_rows + reset,
            new_rows,
            reset,
            running,
        });
    }
    pool.close().await;
    Ok(report)
}
