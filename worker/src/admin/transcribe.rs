//! `worker transcribe ID_OR_STORAGE_KEY [--hook NAME]`: runs the hooks for one voicemail now.

use std::sync::Arc;

use vmpipe_common::{FsStore, Settings};

use crate::hooks::{self, runner::HookRunner, runner::TranscriptionReport};
use crate::{WorkerError, migrate};

/// Runs the configured hooks for one voicemail (its id or storage key) now, in this process,
/// and returns their rows.
pub async fn transcribe(
    settings: &Settings,
    voicemail: &str,
    only: Option<&str>,
) -> Result<Vec<TranscriptionReport>, WorkerError> {
    let hooks = hooks::from_settings(settings).map_err(WorkerError::Hook)?;
    let pool = migrate(settings).await?;
    let store = FsStore::open(&settings.storage_dir)?;
    let runner = HookRunner::new(pool.clone(), store, hooks, 1, Arc::default());
    let reports = runner.transcribe_now(voicemail, only).await;
    pool.close().await;
    Ok(reports?)
}
