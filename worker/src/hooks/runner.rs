//! Runs the hooks queued in `transcriptions`, off the indexing path.
//!
//! A row is claimed with `FOR UPDATE SKIP LOCKED` (several workers share the work), marked
//! `running` with a lease (`next_attempt_at`), and settled as `done`, `pending` again (to be
//! retried after a growing delay) or `failed`. Every write after the claim names the attempt
//! (`attempt_id`), so a late or taken-over attempt cannot overwrite a newer result. A worker
//! that dies mid-run leaves its row `running`; once the lease expires another worker takes it
//! over, and the lost attempt counts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use sqlx::PgPool;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, info_span, warn};
use uuid::Uuid;
use vmpipe_common::backoff::Backoff;
use vmpipe_common::{FsStore, StorageKey};

use super::{Hook, HookAudio, HookError, HookInput, Transcript, wav16k};
use crate::consumer::Activity;

/// How often idle runners look for due retries (new voicemails wake them at once).
const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Hook runs start once indexing has been quiet this long: between the jobs of a storm, no.
const QUIET: Duration = Duration::from_millis(50);
/// Longest a hook run waits for that (hooks yield to indexing, but never starve).
const MAX_DEFERRAL: Duration = Duration::from_secs(10);
/// Margin on top of the longest hook timeout before a `running` row is taken over.
const LEASE_MARGIN: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error("PostgreSQL: {0}")]
    Database(#[from] sqlx::Error),
    #[error("no voicemail {0:?} (give its id or its storage key)")]
    NoSuchVoicemail(String),
    #[error("no hook named {0:?} is configured")]
    NoSuchHook(String),
    #[error("no hook is configured (VMPIPE_TRANSCRIBER or [[hooks]] in the settings file)")]
    NoHooks,
}

/// A claimed attempt: the row is `running` and ours until settled.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Claim {
    pub id: i64,
    pub voicemail_id: Uuid,
    pub hook: String,
    /// 1-based number of this attempt.
    pub attempts: i32,
    pub attempt_id: Uuid,
}

/// A transcription row as `worker transcribe` prints it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct TranscriptionReport {
    pub voicemail_id: Uuid,
    pub hook: String,
    pub status: String,
    pub text: Option<String>,
    pub language: Option<String>,
    pub confidence: Option<f64>,
    pub error: Option<String>,
    pub attempts: i32,
    pub run_ms: Option<i32>,
}

pub struct HookRunner {
    pool: PgPool,
    store: FsStore,
    hooks: Vec<Arc<dyn Hook>>,
    names: Vec<String>,
    concurrency: usize,
    wake: Arc<Notify>,
    activity: Arc<Activity>,
}

impl HookRunner {
    /// `activity`: the indexing jobs in progress, which new hook runs wait for.
    pub fn new(
        pool: PgPool,
        store: FsStore,
        hooks: Vec<Arc<dyn Hook>>,
        concurrency: usize,
        activity: Arc<Activity>,
    ) -> Self {
        let names = hooks.iter().map(|hook| hook.name().to_owned()).collect();
        Self {
            pool,
            store,
            hooks,
            names,
            concurrency: concurrency.max(1),
            wake: Arc::default(),
            activity,
        }
    }

    /// The hook names that indexing queues a row for.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Notified by indexing after it queued rows.
    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    fn hook(&self, name: &str) -> Option<&Arc<dyn Hook>> {
        self.hooks.iter().find(|hook| hook.name() == name)
    }

    fn lease(&self) -> Duration {
        self.hooks
            .iter()
            .map(|hook| hook.policy().timeout)
            .max()
            .unwrap_or_default()
            + LEASE_MARGIN
    }

    /// Works through due rows, `concurrency` at a time, until `shutdown`; attempts in progress
    /// are then stopped and handed back as `pending`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        if self.hooks.is_empty() {
            return;
        }
        info!(hooks = ?self.names, concurrency = self.concurrency, "hook runner started");
        let slots = Arc::new(Semaphore::new(self.concurrency));
        let tasks = TaskTracker::new();
        let mut backoff = Backoff::default();
        loop {
            let slot = tokio::select! {
                slot = slots.clone().acquire_owned() => slot.expect("never closed"),
                _ = shutdown.cancelled() => break,
            };
            tokio::select! {
                _ = self.activity.wait_quiet(QUIET, MAX_DEFERRAL) => {}
                _ = shutdown.cancelled() => break,
            }
            let pause = match self.claim_next().await {
                Ok(Some(claim)) => {
                    backoff.reset();
                    let runner = self.clone();
                    let shutdown = shutdown.clone();
                    tasks.spawn(async move {
                        runner.attempt(claim, &shutdown).await;
                        drop(slot);
                    });
                    continue;
                }
                Ok(None) => POLL_INTERVAL,
                Err(e) => {
                    let wait = backoff.next_delay();
                    warn!(error = %e, retry_in = ?wait, "cannot claim hook work");
                    wait
                }
            };
            drop(slot);
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.cancelled() => break,
            }
        }
        tasks.close();
        tasks.wait().await;
        info!("hook runner stopped");
    }

    async fn claim_next(&self) -> Result<Option<Claim>, sqlx::Error> {
        sqlx::query_as(
            "UPDATE transcriptions SET status = 'running', attempts = attempts + 1,
                attempt_id = $3, started_at = now(),
                next_attempt_at = now() + $2 * interval '1 second'
             WHERE id = (
                SELECT id FROM transcriptions
                WHERE status IN ('pending', 'running') AND next_attempt_at <= now()
                  AND hook = ANY($1)
                ORDER BY next_attempt_at
                LIMIT 1
                FOR UPDATE SKIP LOCKED)
             RETURNING id, voicemail_id, hook, attempts, attempt_id",
        )
        .bind(&self.names)
        .bind(self.lease().as_secs_f64())
        .bind(Uuid::now_v7())
        .fetch_optional(&self.pool)
        .await
    }

    /// Runs one claimed attempt and records its outcome.
    pub async fn attempt(&self, claim: Claim, shutdown: &CancellationToken) {
        let span = info_span!("hook", hook = %claim.hook, voicemail_id = %claim.voicemail_id,
            attempt = claim.attempts);
        async {
            let Some(hook) = self.hook(&claim.hook).cloned() else {
                return; // claims only name our hooks
            };
            let policy = hook.policy();
            let attempt = u32::try_from(claim.attempts).unwrap_or(u32::MAX);
            let started = Instant::now();
            let result = if attempt > policy.max_attempts {
                // Earlier attempts never ended: the worker died during each.
                Err(HookError::Rejected(format!(
                    "gave up after {} attempts that never finished (the worker stopped during each)",
                    attempt - 1
                )))
            } else {
                tokio::select! {
                    result = tokio::time::timeout(policy.timeout, self.execute(hook, &claim)) => {
                        result.unwrap_or_else(|_| Err(HookError::Failed(format!(
                            "timed out after {} s", policy.timeout.as_secs_f64()))))
                    }
                    _ = shutdown.cancelled() => {
                        self.release(&claim).await;
                        return;
                    }
                }
            };
            let elapsed = started.elapsed();
            let outcome = match &result {
                Ok(_) => "done",
                Err(HookError::Failed(_)) if attempt < policy.max_attempts => "retry",
                Err(_) => "failed",
            };
            metrics::counter!("vmpipe_hook_runs_total", "hook" => claim.hook.clone(), "outcome" => outcome)
                .increment(1);
            metrics::histogram!("vmpipe_hook_run_seconds", "hook" => claim.hook.clone())
                .record(elapsed.as_secs_f64());
            let run_ms = i32::try_from(elapsed.as_millis()).unwrap_or(i32::MAX);
            match &result {
                Ok(transcript) => info!(run_ms, chars = transcript.text.len(), "hook done"),
                Err(e) => warn!(run_ms, error = %e, outcome, "hook attempt failed"),
            }
            let retry_after = (outcome == "retry").then(|| policy.retry_after(attempt));
            self.record(&claim, result, run_ms, retry_after, shutdown).await;
        }
        .instrument(span)
        .await
    }

    /// Prepares the input and runs the hook on its own task, so that a panic in it is a failed
    /// attempt rather than a lost runner.
    async fn execute(&self, hook: Arc<dyn Hook>, claim: &Claim) -> Result<Transcript, HookError> {
        let (input, _scratch) = self.input_for(claim, hook.policy().audio).await?;
        let task = tokio::spawn(async move { hook.run(&input).await });
        let abort = task.abort_handle();
        // Dropped at the timeout: the hook's future (and any program it runs) goes too.
        let _abort = AbortOnDrop(abort);
        match task.await {
            Ok(result) => result,
            Err(e) if e.is_panic() => Err(HookError::Failed(format!(
                "the hook panicked: {}",
                crate::panic_text(&e.into_panic())
            ))),
            Err(e) => Err(HookError::Failed(format!("the hook was stopped: {e}"))),
        }
    }

    /// The voicemail's row and audio. Returns the temporary 16 kHz file too, deleted when dropped.
    async fn input_for(
        &self,
        claim: &Claim,
        audio: HookAudio,
    ) -> Result<(HookInput, Option<tempfile::TempPath>), HookError> {
        let row: Option<serde_json::Value> =
            sqlx::query_scalar("SELECT to_jsonb(v) FROM voicemails v WHERE id = $1")
                .bind(claim.voicemail_id)
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| HookError::Failed(format!("reading the voicemail: {e}")))?;
        let Some(serde_json::Value::Object(mut voicemail)) = row else {
            return Err(HookError::Rejected("the voicemail is gone".into()));
        };
        let document = voicemail.remove("metadata").filter(|doc| !doc.is_null());
        let text = |name: &str| {
            voicemail
                .get(name)
                .and_then(|v| v.as_str())
                .unwrap_or_default()
        };
        let key = StorageKey::parse(text("storage_key"))
            .map_err(|e| HookError::Rejected(format!("bad storage key: {e}")))?;
        let stored = self.store.path_of(&key);
        if !stored.is_file() {
            return Err(HookError::Failed(format!(
                "the audio file is missing: {}",
                stored.display()
            )));
        }
        let (audio_path, content_type, scratch) = match audio {
            HookAudio::Original => {
                let content_type = audio_content_type(text("content_type"), text("codec"));
                (stored, content_type, None)
            }
            HookAudio::Wav16k => {
                let scratch = tempfile::Builder::new()
                    .prefix("vmpipe-wav16k-")
                    .suffix(".wav")
                    .tempfile()
                    .map_err(|e| HookError::Failed(format!("temporary file: {e}")))?
                    .into_temp_path();
                let output = scratch.to_path_buf();
                let decoded =
                    tokio::task::spawn_blocking(move || wav16k::write_wav16k(&stored, &output))
                        .await
                        .map_err(|e| HookError::Failed(format!("decoding crashed: {e}")))?;
                decoded
                    .map_err(|e| HookError::Rejected(format!("cannot decode the audio: {e}")))?;
                (scratch.to_path_buf(), "audio/wav".to_owned(), Some(scratch))
            }
        };
        let input = HookInput {
            hook: claim.hook.clone(),
            attempt: u32::try_from(claim.attempts).unwrap_or(u32::MAX),
            voicemail_id: claim.voicemail_id,
            audio_path,
            audio_format: audio,
            audio_content_type: content_type,
            voicemail,
            document,
        };
        Ok((input, scratch))
    }

    /// Writes the outcome, retrying while the database is away (until shutdown; the lease then
    /// brings the row back).
    async fn record(
        &self,
        claim: &Claim,
        result: Result<Transcript, HookError>,
        run_ms: i32,
        retry_after: Option<Duration>,
        shutdown: &CancellationToken,
    ) {
        let mut backoff = Backoff::default();
        loop {
            let written = match &result {
                Ok(transcript) => {
                    sqlx::query(
                        "UPDATE transcriptions SET status = 'done', text = $3, language = $4,
                            confidence = $5, error = NULL, finished_at = now(), run_ms = $6,
                            attempt_id = NULL
                         WHERE id = $1 AND attempt_id = $2",
                    )
                    .bind(claim.id)
                    .bind(claim.attempt_id)
                    .bind(transcript.text.replace('\0', ""))
                    .bind(transcript.language.as_ref().map(|l| l.replace('\0', "")))
                    .bind(transcript.confidence.filter(|c| (0.0..=1.0).contains(c)))
                    .bind(run_ms)
                    .execute(&self.pool)
                    .await
                }
                Err(error) => {
                    sqlx::query(
                        "UPDATE transcriptions SET
                            status = CASE WHEN $4 THEN 'pending' ELSE 'failed' END,
                            error = $3, finished_at = now(), run_ms = $5, attempt_id = NULL,
                            next_attempt_at = now() + $6 * interval '1 second'
                         WHERE id = $1 AND attempt_id = $2",
                    )
                    .bind(claim.id)
                    .bind(claim.attempt_id)
                    .bind(error.to_string().replace('\0', ""))
                    .bind(retry_after.is_some())
                    .bind(run_ms)
                    .bind(retry_after.unwrap_or_default().as_secs_f64())
                    .execute(&self.pool)
                    .await
                }
            };
            match written {
                Ok(done) => {
                    if done.rows_affected() == 0 {
                        info!("the transcription was re-queued meanwhile; result dropped");
                    }
                    return;
                }
                Err(e) => {
                    let wait = backoff.next_delay();
                    warn!(error = %e, retry_in = ?wait, "cannot record the hook's outcome");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = shutdown.cancelled() => return,
                    }
                }
            }
        }
    }

    /// Hands an interrupted attempt back: it does not count.
    async fn release(&self, claim: &Claim) {
        let released = sqlx::query(
            "UPDATE transcriptions SET status = 'pending', attempts = attempts - 1,
                next_attempt_at = now(), attempt_id = NULL
             WHERE id = $1 AND attempt_id = $2",
        )
        .bind(claim.id)
        .bind(claim.attempt_id)
        .execute(&self.pool)
        .await;
        if let Err(e) = released {
            warn!(error = %e, "could not hand the hook attempt back; its lease will");
        }
    }

    /// `worker transcribe`: runs the hooks (all, or `only`) for one voicemail now, in this
    /// process, whatever their rows say, and returns the rows as they end up.
    pub async fn transcribe_now(
        &self,
        voicemail: &str,
        only: Option<&str>,
    ) -> Result<Vec<TranscriptionReport>, RunnerError> {
        if self.hooks.is_empty() {
            return Err(RunnerError::NoHooks);
        }
        if let Some(name) = only
            && self.hook(name).is_none()
        {
            return Err(RunnerError::NoSuchHook(name.to_owned()));
        }
        let id: Option<Uuid> = match Uuid::parse_str(voicemail) {
            Ok(id) => sqlx::query_scalar("SELECT id FROM voicemails WHERE id = $1").bind(id),
            Err(_) => sqlx::query_scalar("SELECT id FROM voicemails WHERE storage_key = $1")
                .bind(voicemail),
        }
        .fetch_optional(&self.pool)
        .await?;
        let id = id.ok_or_else(|| RunnerError::NoSuchVoicemail(voicemail.to_owned()))?;
        let never = CancellationToken::new();
        for name in self
            .names
            .iter()
            .filter(|name| only.is_none_or(|only| only == *name))
        {
            let claim: Claim = sqlx::query_as(
                "INSERT INTO transcriptions (voicemail_id, hook, audio_received_at, status,
                    attempts, attempt_id, started_at, next_attempt_at)
                 SELECT id, $2, received_at, 'running', 1, $3, now(),
                    now() + $4 * interval '1 second'
                 FROM voicemails WHERE id = $1
                 ON CONFLICT (voicemail_id, hook) DO UPDATE SET status = 'running', attempts = 1,
                    attempt_id = EXCLUDED.attempt_id, started_at = now(), queued_at = now(),
                    next_attempt_at = EXCLUDED.next_attempt_at,
                    audio_received_at = EXCLUDED.audio_received_at
                 RETURNING id, voicemail_id, hook, attempts, attempt_id",
            )
            .bind(id)
            .bind(name)
            .bind(Uuid::now_v7())
            .bind(self.lease().as_secs_f64())
            .fetch_one(&self.pool)
            .await?;
            self.attempt(claim, &never).await;
        }
        Ok(sqlx::query_as(
            "SELECT voicemail_id, hook, status, text, language, confidence, error, attempts, run_ms
             FROM transcriptions WHERE voicemail_id = $1 AND ($2::text IS NULL OR hook = $2)
             ORDER BY hook",
        )
        .bind(id)
        .bind(only)
        .fetch_all(&self.pool)
        .await?)
    }
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What to call the stored file in a webhook's `audio` part: KAZOO's declared type when it is
/// an audio type, else one from the codec measured.
fn audio_content_type(declared: &str, codec: &str) -> String {
    if declared.starts_with("audio/") && declared.parse::<mime::Mime>().is_ok() {
        return declared.to_owned();
    }
    match codec {
        "mp3" => "audio/mpeg".into(),
        "" => "application/octet-stream".into(),
        _ => "audio/wav".into(),
    }
}
