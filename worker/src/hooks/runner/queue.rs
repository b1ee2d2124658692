//! The `transcriptions` table as a work queue: claiming a due row (`FOR UPDATE SKIP LOCKED`,
//! so several workers share it), recording an attempt's outcome, handing an attempt back, and
//! the rows `worker transcribe` works on and prints.
//!
//! Every write after the claim names the attempt (`attempt_id`), so a late or taken-over
//! attempt cannot overwrite a newer result.

use std::time::Duration;

use serde::Serialize;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use uuid::Uuid;
use vmpipe_common::backoff::Backoff;

use super::lease::WorkerIdentity;
use crate::hooks::{HookError, Segment, Transcript};

/// A claimed attempt: the row is `running` and ours until settled.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(super) struct Claim {
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
    pub segments: Option<sqlx::types::Json<Vec<Segment>>>,
    pub error: Option<String>,
    pub attempts: i32,
    pub run_ms: Option<i32>,
}

/// The transcriptions queue in PostgreSQL.
pub(super) struct TranscriptionQueue {
    pool: PgPool,
}

impl TranscriptionQueue {
    pub(super) fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// The `voicemails` row of `voicemail_id`, column by column, for a hook's input.
    pub(super) async fn voicemail(
        &self,
        voicemail_id: Uuid,
    ) -> Result<Option<serde_json::Value>, sqlx::Error> {
        sqlx::query_scalar("SELECT to_jsonb(v) FROM voicemails v WHERE id = $1")
            .bind(voicemail_id)
            .fetch_optional(&self.pool)
            .await
    }

    /// Claims the due row that waited longest, for one of `hooks`, leased for `lease` by `me`.
    pub(super) async fn claim_next(
        &self,
        hooks: &[String],
        lease: Duration,
        me: &WorkerIdentity,
    ) -> Result<Option<Claim>, sqlx::Error> {
        sqlx::query_as(
            "UPDATE transcriptions SET status = 'running', attempts = attempts + 1,
                attempt_id = $3, started_at = now(),
                next_attempt_at = now() + $2 * interval '1 second',
                leased_by = $4, leased_pid = $5, leased_instance = $6
             WHERE id = (
                SELECT id FROM transcriptions
                WHERE status IN ('pending', 'running') AND next_attempt_at <= now()
                  AND hook = ANY($1)
                ORDER BY next_attempt_at
                LIMIT 1
                FOR UPDATE SKIP LOCKED)
             RETURNING id, voicemail_id, hook, attempts, attempt_id",
        )
        .bind(hooks)
        .bind(lease.as_secs_f64())
        .bind(Uuid::now_v7())
        .bind(&me.name)
        .bind(me.pid)
        .bind(me.instance)
        .fetch_optional(&self.pool)
        .await
    }

    /// Renews the leases of the attempts `held` (those still ours) by `lease`; returns the ones
    /// renewed.
    pub(super) async fn renew(
        &self,
        held: &[Uuid],
        lease: Duration,
    ) -> Result<Vec<Uuid>, sqlx::Error> {
        sqlx::query_scalar(
            "UPDATE transcriptions SET next_attempt_at = now() + $2 * interval '1 second'
             WHERE attempt_id = ANY($1) AND status = 'running'
             RETURNING attempt_id",
        )
        .bind(held)
        .bind(lease.as_secs_f64())
        .fetch_all(&self.pool)
        .await
    }

    /// At start-up: hands back, as `pending` and due now, the attempts that this worker's
    /// previous process left `running` (the same name, another instance, a process that is
    /// gone). The cut-short attempt counts (a hook that kills its worker must not loop for ever)
    /// and its `error` says what happened. Returns how many.
    pub(super) async fn hand_back_previous(&self, me: &WorkerIdentity) -> Result<u64, sqlx::Error> {
        let leased: Vec<(i64, Uuid, Option<i32>)> = sqlx::query_as(
            "SELECT id, attempt_id, leased_pid FROM transcriptions
             WHERE status = 'running' AND leased_by = $1 AND leased_instance IS DISTINCT FROM $2
               AND attempt_id IS NOT NULL
               AND next_attempt_at < now() + $3 * interval '1 second'",
        )
        .bind(&me.name)
        .bind(me.instance)
        .bind((super::lease::LEASE - super::lease::UNRENEWED).as_secs_f64())
        .fetch_all(&self.pool)
        .await?;
        let (ids, attempts): (Vec<i64>, Vec<Uuid>) = leased
            .into_iter()
            .filter(|(_, _, pid)| me.is_gone(*pid))
            .map(|(id, attempt, _)| (id, attempt))
            .unzip();
        if ids.is_empty() {
            return Ok(0);
        }
        let handed = sqlx::query(
            "UPDATE transcriptions t SET status = 'pending', next_attempt_at = now(),
                attempt_id = NULL, finished_at = now(),
                error = 'the worker running this attempt stopped during it (' || t.leased_by
                    || ', pid ' || coalesce(t.leased_pid::text, '?') || '); run again',
                leased_by = NULL, leased_pid = NULL, leased_instance = NULL
             FROM unnest($1::bigint[], $2::uuid[]) AS gone(id, attempt_id)
             WHERE t.id = gone.id AND t.attempt_id = gone.attempt_id AND t.status = 'running'",
        )
        .bind(&ids)
        .bind(&attempts)
        .execute(&self.pool)
        .await?;
        Ok(handed.rows_affected())
    }

    /// Writes the outcome, retrying while the database is away (until shutdown; the lease then
    /// brings the row back).
    pub(super) async fn record(
        &self,
        claim: &Claim,
        result: Result<Transcript, HookError>,
        run_ms: i32,
        retry_after: Option<Duration>,
        shutdown: &CancellationToken,
    ) {
        let mut backoff = Backoff::reconnect();
        loop {
            let written = match &result {
                Ok(transcript) => {
                    sqlx::query_scalar(
                        "WITH locked AS (
                            -- The voicemail first (as indexing and prune lock it): its events
                            -- are then written in the order they commit.
                            SELECT v.id FROM voicemails v JOIN transcriptions t
                                ON t.voicemail_id = v.id
                            WHERE t.id = $1 FOR NO KEY UPDATE OF v
                         ), done AS (
                            UPDATE transcriptions SET status = 'done', text = $3, language = $4,
                                confidence = $5, error = NULL, finished_at = now(), run_ms = $6,
                                segments = $7,
                                attempt_id = NULL, leased_by = NULL, leased_pid = NULL,
                                leased_instance = NULL
                            WHERE id = $1 AND attempt_id = $2 AND EXISTS (SELECT 1 FROM locked)
                            RETURNING voicemail_id, hook, text, language, confidence, attempts
                         ), told AS (
                            INSERT INTO events (type, voicemail_id, account_id, voicemail, transcript)
                            SELECT 'voicemail.transcribed', v.id, v.account_id,
                                to_jsonb(v) - 'metadata',
                                jsonb_build_object('hook', done.hook, 'text', done.text,
                                    'language', done.language, 'confidence', done.confidence,
                                    'attempts', done.attempts)
                            FROM done JOIN voicemails v ON v.id = done.voicemail_id
                         )
                         SELECT count(*) FROM done",
                    )
                    .bind(claim.id)
                    .bind(claim.attempt_id)
                    .bind(transcript.text.replace('\0', ""))
                    .bind(transcript.language.as_ref().map(|l| l.replace('\0', "")))
                    .bind(transcript.confidence.filter(|c| (0.0..=1.0).contains(c)))
                    .bind(run_ms)
                    .bind(transcript.segments.as_ref().map(|segments| {
                        sqlx::types::Json(
                            segments
                                .iter()
                                .map(|s| {
                                    Segment {
                                        text: s.text.replace('\0', ""),
                                        ..s.clone()
                                    }
                                    .bounded()
                                })
                                .collect::<Vec<_>>(),
                        )
                    }))
                    .fetch_one(&self.pool)
                    .await
                }
                Err(error) => {
                    sqlx::query_scalar(
                        "WITH locked AS (
                            SELECT v.id FROM voicemails v JOIN transcriptions t
                                ON t.voicemail_id = v.id
                            WHERE t.id = $1 FOR NO KEY UPDATE OF v
                         ), done AS (
                            UPDATE transcriptions SET
                                status = CASE WHEN $4 THEN 'pending' ELSE 'failed' END,
                                error = $3, finished_at = now(), run_ms = $5, attempt_id = NULL,
                                next_attempt_at = now() + $6 * interval '1 second',
                                leased_by = NULL, leased_pid = NULL, leased_instance = NULL
                            WHERE id = $1 AND attempt_id = $2 AND EXISTS (SELECT 1 FROM locked)
                            RETURNING voicemail_id, hook, status, error, attempts
                         ), told AS (
                            -- Only when it gave up: a retry is not news.
                            INSERT INTO events (type, voicemail_id, account_id, voicemail, transcript)
                            SELECT 'voicemail.transcription_failed', v.id, v.account_id,
                                to_jsonb(v) - 'metadata',
                                jsonb_build_object('hook', done.hook, 'error', done.error,
                                    'attempts', done.attempts)
                            FROM done JOIN voicemails v ON v.id = done.voicemail_id
                            WHERE done.status = 'failed'
                         )
                         SELECT count(*) FROM done",
                    )
                    .bind(claim.id)
                    .bind(claim.attempt_id)
                    .bind(error.to_string().replace('\0', ""))
                    .bind(retry_after.is_some())
                    .bind(run_ms)
                    .bind(retry_after.unwrap_or_default().as_secs_f64())
                    .fetch_one(&self.pool)
                    .await
                }
            };
            match written {
                Ok(done) => {
                    let done: i64 = done;
                    if done == 0 {
                        info!("the transcription was re-queued meanwhile; result dropped");
                    }
                    return;
                }
                Err(e) => {
                    let wait = backoff.next_delay();
                    warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "cannot record the hook's outcome");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = shutdown.cancelled() => return,
                    }
                }
            }
        }
    }

    /// Hands an interrupted attempt back: it does not count.
    pub(super) async fn release(&self, claim: &Claim) {
        let released = sqlx::query(
            "UPDATE transcriptions SET status = 'pending', attempts = attempts - 1,
                next_attempt_at = now(), attempt_id = NULL, leased_by = NULL,
                leased_pid = NULL, leased_instance = NULL
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

    /// The id of the voicemail with this id or storage key.
    pub(super) async fn find_voicemail(
        &self,
        voicemail: &str,
    ) -> Result<Option<Uuid>, sqlx::Error> {
        match Uuid::parse_str(voicemail) {
            Ok(id) => sqlx::query_scalar("SELECT id FROM voicemails WHERE id = $1").bind(id),
            Err(_) => sqlx::query_scalar("SELECT id FROM voicemails WHERE storage_key = $1")
                .bind(voicemail),
        }
        .fetch_optional(&self.pool)
        .await
    }

    /// Claims `hook`'s row for `voicemail_id` now, whatever state it is in (creating it if
    /// needed), as its first attempt, leased by `me`.
    pub(super) async fn claim_now(
        &self,
        voicemail_id: Uuid,
        hook: &str,
        lease: Duration,
        me: &WorkerIdentity,
    ) -> Result<Claim, sqlx::Error> {
        sqlx::query_as(
            "INSERT INTO transcriptions (voicemail_id, hook, audio_received_at, status,
                attempts, attempt_id, started_at, next_attempt_at, leased_by, leased_pid,
                leased_instance, listed_at, account_id)
             SELECT id, $2, received_at, 'running', 1, $3, now(),
                now() + $4 * interval '1 second', $5, $6, $7,
                coalesce(recorded_at, received_at), account_id
             FROM voicemails WHERE id = $1
             ON CONFLICT (voicemail_id, hook) DO UPDATE SET status = 'running', attempts = 1,
                attempt_id = EXCLUDED.attempt_id, started_at = now(), queued_at = now(),
                next_attempt_at = EXCLUDED.next_attempt_at,
                audio_received_at = EXCLUDED.audio_received_at,
                leased_by = EXCLUDED.leased_by, leased_pid = EXCLUDED.leased_pid,
                leased_instance = EXCLUDED.leased_instance
             RETURNING id, voicemail_id, hook, attempts, attempt_id",
        )
        .bind(voicemail_id)
        .bind(hook)
        .bind(Uuid::now_v7())
        .bind(lease.as_secs_f64())
        .bind(&me.name)
        .bind(me.pid)
        .bind(me.instance)
        .fetch_one(&self.pool)
        .await
    }

    /// A voicemail's transcription rows (all, or `only` one hook's).
    pub(super) async fn reports(
        &self,
        voicemail_id: Uuid,
        only: Option<&str>,
    ) -> Result<Vec<TranscriptionReport>, sqlx::Error> {
        sqlx::query_as(
            "SELECT voicemail_id, hook, status, text, language, confidence, segments, error,
                    attempts, run_ms
             FROM transcriptions WHERE voicemail_id = $1 AND ($2::text IS NULL OR hook = $2)
             ORDER BY hook",
        )
        .bind(voicemail_id)
        .bind(only)
        .fetch_all(&self.pool)
        .await
    }
}
