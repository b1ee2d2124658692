//! The outbox in PostgreSQL: turning events into one delivery per sink (fan-out), claiming a
//! sink's due deliveries (`FOR UPDATE SKIP LOCKED`, so several workers share them), recording
//! their outcomes, handing back a crashed process's deliveries, and pruning.
//!
//! Order: a delivery is claimed only when no earlier event of the same voicemail is still
//! waiting for that sink (pending, sending, or not fanned out yet), so each sink gets one
//! voicemail's events in the order they were written; different voicemails do not wait for
//! each other.

use std::time::Duration;

use sqlx::PgPool;
use uuid::Uuid;
use vmpipe_common::settings::NotifySettings;

use super::StoredEvent;
use crate::hooks::runner::WorkerIdentity;

/// Events fanned out per statement.
const FAN_OUT_BATCH: i64 = 1000;
/// Events pruned per statement.
const PRUNE_BATCH: i64 = 5000;

/// Makes the deliveries of events not fanned out yet: one per sink whose filters take the
/// event. Returns how many events it took.
pub(crate) async fn fan_out(pool: &PgPool, sinks: &[NotifySettings]) -> Result<usize, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let events: Vec<(i64, Uuid, String, Option<String>, Uuid)> = sqlx::query_as(
        "SELECT seq, event_id, type, account_id, voicemail_id FROM events
         WHERE dispatched_at IS NULL ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(FAN_OUT_BATCH)
    .fetch_all(&mut *tx)
    .await?;
    if events.is_empty() {
        return Ok(0);
    }
    let mut seqs = Vec::new();
    let mut names = Vec::new();
    let mut event_ids = Vec::new();
    let mut voicemails = Vec::new();
    for (seq, event_id, kind, account, voicemail) in &events {
        for sink in sinks.iter().filter(|s| s.wants(kind, account.as_deref())) {
            seqs.push(*seq);
            names.push(sink.name.as_str());
            event_ids.push(*event_id);
            voicemails.push(*voicemail);
        }
    }
    sqlx::query(
        "INSERT INTO event_deliveries (seq, sink, event_id, voicemail_id)
         SELECT * FROM unnest($1::bigint[], $2::text[], $3::uuid[], $4::uuid[])
         ON CONFLICT (seq, sink) DO NOTHING",
    )
    .bind(&seqs)
    .bind(&names)
    .bind(&event_ids)
    .bind(&voicemails)
    .execute(&mut *tx)
    .await?;
    let taken: Vec<i64> = events.iter().map(|e| e.0).collect();
    sqlx::query("UPDATE events SET dispatched_at = now() WHERE seq = ANY($1)")
        .bind(&taken)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(events.len())
}

/// A delivery claimed by this worker: `sending`, leased, until its outcome is recorded.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct Claimed {
    /// 1-based number of this attempt.
    pub attempts: i32,
    pub attempt_id: Uuid,
    #[sqlx(flatten)]
    pub event: StoredEvent,
}

/// Claims up to `limit` of `sink`'s due deliveries, oldest first, leased for `lease`.
pub(crate) async fn claim(
    pool: &PgPool,
    sink: &str,
    limit: usize,
    lease: Duration,
    me: &WorkerIdentity,
) -> Result<Vec<Claimed>, sqlx::Error> {
    sqlx::query_as(
        "UPDATE event_deliveries d SET status = 'sending', attempts = d.attempts + 1,
            attempt_id = gen_random_uuid(), last_attempt_at = now(),
            first_attempt_at = coalesce(d.first_attempt_at, now()),
            next_attempt_at = now() + $3 * interval '1 second',
            leased_by = $4, leased_pid = $5, leased_instance = $6
         FROM events e
         WHERE e.seq = d.seq AND (d.seq, d.sink) IN (
            SELECT c.seq, c.sink FROM event_deliveries c
            WHERE c.sink = $1 AND c.status IN ('pending', 'sending')
              AND c.next_attempt_at <= now()
              AND NOT EXISTS (
                SELECT 1 FROM event_deliveries p
                WHERE p.sink = c.sink AND p.voicemail_id = c.voicemail_id AND p.seq < c.seq
                  AND p.status IN ('pending', 'sending'))
              AND NOT EXISTS (
                SELECT 1 FROM events u
                WHERE u.voicemail_id = c.voicemail_id AND u.seq < c.seq
                  AND u.dispatched_at IS NULL)
            ORDER BY c.next_attempt_at, c.seq
            LIMIT $2
            FOR UPDATE OF c SKIP LOCKED)
         RETURNING d.attempts, d.attempt_id, e.seq, e.event_id, e.type, e.occurred_at,
            e.account_id, e.voicemail_id, e.voicemail, e.transcript",
    )
    .bind(sink)
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .bind(lease.as_secs_f64())
    .bind(&me.name)
    .bind(me.pid)
    .bind(me.instance)
    .fetch_all(pool)
    .await
}

/// What became of one claimed delivery.
#[derive(Debug, Clone)]
pub(crate) struct Outcome {
    pub seq: i64,
    pub attempt_id: Uuid,
    pub status: Status,
    pub error: Option<String>,
    pub duration_ms: i32,
    /// `Pending`: when to try again.
    pub retry_in: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    Delivered,
    /// Will be tried again.
    Pending,
    /// Gave up.
    Failed,
}

impl Status {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Pending => "pending",
            Self::Failed => "failed",
        }
    }
}

/// Records the outcomes of `sink`'s attempts, in one statement; an attempt whose delivery was
/// taken over meanwhile (its lease expired, or a replay reset it) changes nothing.
pub(crate) async fn record(
    pool: &PgPool,
    sink: &str,
    outcomes: &[Outcome],
) -> Result<(), sqlx::Error> {
    let seqs: Vec<i64> = outcomes.iter().map(|o| o.seq).collect();
    let attempts: Vec<Uuid> = outcomes.iter().map(|o| o.attempt_id).collect();
    let statuses: Vec<&str> = outcomes.iter().map(|o| o.status.as_str()).collect();
    let errors: Vec<Option<String>> = outcomes
        .iter()
        .map(|o| o.error.as_ref().map(|e| e.replace('\0', "")))
        .collect();
    let durations: Vec<i32> = outcomes.iter().map(|o| o.duration_ms).collect();
    let retry_in: Vec<f64> = outcomes.iter().map(|o| o.retry_in.as_secs_f64()).collect();
    sqlx::query(
        "UPDATE event_deliveries d SET status = o.status,
            -- A delivery that succeeded keeps the error of the attempt before.
            last_error = CASE WHEN o.status = 'delivered' THEN d.last_error ELSE o.error END,
            last_duration_ms = o.duration_ms,
            delivered_at = CASE WHEN o.status = 'delivered' THEN now() END,
            next_attempt_at = now() + o.retry_in * interval '1 second',
            attempt_id = NULL, leased_by = NULL, leased_pid = NULL, leased_instance = NULL
         FROM unnest($2::bigint[], $3::uuid[], $4::text[], $5::text[], $6::int[], $7::float8[])
            AS o(seq, attempt_id, status, error, duration_ms, retry_in)
         WHERE d.sink = $1 AND d.seq = o.seq AND d.attempt_id = o.attempt_id",
    )
    .bind(sink)
    .bind(&seqs)
    .bind(&attempts)
    .bind(&statuses)
    .bind(&errors)
    .bind(&durations)
    .bind(&retry_in)
    .execute(pool)
    .await?;
    Ok(())
}

/// At start-up: hands back, due now, the deliveries this worker's previous process left
/// `sending` (its name, another instance, a process that is gone). Whether the sink got them
/// is unknown: they go again (receivers de-duplicate by `event_id`). Returns how many.
pub(crate) async fn hand_back_previous(
    pool: &PgPool,
    me: &WorkerIdentity,
) -> Result<u64, sqlx::Error> {
    let leased: Vec<(i64, String, Option<i32>)> = sqlx::query_as(
        "SELECT seq, sink, leased_pid FROM event_deliveries
         WHERE status = 'sending' AND leased_by = $1 AND leased_instance IS DISTINCT FROM $2",
    )
    .bind(&me.name)
    .bind(me.instance)
    .fetch_all(pool)
    .await?;
    let (seqs, sinks): (Vec<i64>, Vec<String>) = leased
        .into_iter()
        .filter(|(_, _, pid)| me.is_gone(*pid))
        .map(|(seq, sink, _)| (seq, sink))
        .unzip();
    if seqs.is_empty() {
        return Ok(0);
    }
    let handed = sqlx::query(
        "UPDATE event_deliveries d SET status = 'pending', next_attempt_at = now(),
            attempt_id = NULL, last_error = 'the worker delivering it stopped during the attempt',
            leased_by = NULL, leased_pid = NULL, leased_instance = NULL
         FROM unnest($1::bigint[], $2::text[]) AS gone(seq, sink)
         WHERE d.seq = gone.seq AND d.sink = gone.sink AND d.status = 'sending'
           AND d.leased_instance IS DISTINCT FROM $3",
    )
    .bind(&seqs)
    .bind(&sinks)
    .bind(me.instance)
    .execute(pool)
    .await?;
    Ok(handed.rows_affected())
}

/// Deletes events older than `retention` that every sink has settled (delivered, or failed
/// for good), a batch at a time; returns how many.
pub(crate) async fn prune(pool: &PgPool, retention: Duration) -> Result<u64, sqlx::Error> {
    let mut pruned = 0;
    loop {
        let deleted = sqlx::query(
            "DELETE FROM events WHERE seq IN (
                SELECT seq FROM events e
                WHERE e.occurred_at < now() - $1 * interval '1 second'
                  AND e.dispatched_at IS NOT NULL
                  AND NOT EXISTS (SELECT 1 FROM event_deliveries d
                                  WHERE d.seq = e.seq AND d.status IN ('pending', 'sending'))
                LIMIT $2)",
        )
        .bind(retention.as_secs_f64())
        .bind(PRUNE_BATCH)
        .execute(pool)
        .await?
        .rows_affected();
        pruned += deleted;
        if deleted < PRUNE_BATCH as u64 {
            return Ok(pruned);
        }
    }
}

/// At shutdown: hands back, due now, `sink`'s deliveries this process still holds.
pub(crate) async fn release_mine(
    pool: &PgPool,
    sink: &str,
    me: &WorkerIdentity,
) -> Result<u64, sqlx::Error> {
    let released = sqlx::query(
        "UPDATE event_deliveries SET status = 'pending', next_attempt_at = now(),
            attempt_id = NULL, leased_by = NULL, leased_pid = NULL, leased_instance = NULL
         WHERE sink = $1 AND status = 'sending' AND leased_instance = $2",
    )
    .bind(sink)
    .bind(me.instance)
    .execute(pool)
    .await?;
    Ok(released.rows_affected())
}
