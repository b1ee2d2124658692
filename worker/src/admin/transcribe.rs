//! `worker transcribe ID_OR_STORAGE_KEY [--hook NAME]`: runs the hooks for one voicemail now.

use std::sync::Arc;

use vmpipe_common::Settings;

use super::Admin;
use crate::WorkerError;
use crate::hooks::{self, TranscriptionReport, runner::HookRunner};

/// Runs the configured hooks for one voicemail (its id or storage key) now, in this process,
/// and returns their rows.
pub async fn transcribe(
    settings: &Settings,
    voicemail: &str,
    only: Option<&str>,
) -> Result<Vec<TranscriptionReport>, WorkerError> {
    let hooks = hooks::from_settings(settings).map_err(WorkerError::Hook)?;
    let chosen: Vec<_> = hooks
        .iter()
        .filter(|hook| only.is_none_or(|name| hook.name() == name))
        .cloned()
        .collect();
    hooks::start_all(&chosen).await.map_err(WorkerError::Hook)?;
    let Admin { pool, store } = Admin::open(settings).await?;
    let runner = HookRunner::new(
        pool.clone(),
        store,
        hooks,
        1,
        Arc::default(),
        settings.max_audio_secs,
    );
    let reports = runner.transcribe_now(voicemail, only).await;
    pool.close().await;
    Ok(reports?)
}
