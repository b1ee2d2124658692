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
/// Events looked at per pruning statement.
const PRUNE_BATCH: i64 = 5000;
/// The advisory lock of pruning (one worker at a time): "vmpipe events prune".
const PRUNE_LOCK: i64 = 0x766d_7069_7065_7072;

/// A sink as `event_sinks` has it: kind, events, accounts, and who said so.
type Registered = (String, Vec<String>, Vec<String>, Option<String>);

/// Records the sinks this worker runs in `event_sinks` (every worker's fan-out makes
/// deliveries for them); returns the sinks another worker had registered with other filters.
pub(crate) async fn register_sinks(
    pool: &PgPool,
    sinks: &[NotifySettings],
    me: &WorkerIdentity,
) -> Result<Vec<String>, sqlx::Error> {
    let mut differing = Vec::new();
    for sink in sinks {
        let before: Option<Registered> = sqlx::query_as(
            "SELECT kind, events, accounts, seen_by FROM event_sinks WHERE name = $1",
        )
        .bind(&sink.name)
        .fetch_optional(pool)
        .await?;
        if let Some((kind, events, accounts, by)) = before
            && (kind != sink.kind.as_str() || events != sink.events || accounts != sink.accounts)
            && by.as_deref() != Some(me.name.as_str())
        {
            differing.push(format!(
                "{} (was {kind}, events {events:?}, accounts {accounts:?}, from {})",
                sink.name,
                by.as_deref().unwrap_or("?")
            ));
        }
        sqlx::query(
            "INSERT INTO event_sinks (name, kind, events, accounts, seen_at, seen_by)
             VALUES ($1, $2, $3, $4, now(), $5)
             ON CONFLICT (name) DO UPDATE SET kind = EXCLUDED.kind, events = EXCLUDED.events,
                accounts = EXCLUDED.accounts, seen_at = now(), seen_by = EXCLUDED.seen_by",
        )
        .bind(&sink.name)
        .bind(sink.kind.as_str())
        .bind(&sink.events)
        .bind(&sink.accounts)
        .bind(&me.name)
        .execute(pool)
        .await?;
    }
    Ok(differing)
}

/// Makes the deliveries of events not fanned out yet: one per sink of `event_sinks` (run by a
/// worker in the last day) whose filters take the event, whatever this worker runs. A delivery
/// behind an earlier one of its voicemail that waits to be retried waits as long. Returns how
/// many events it took.
pub(crate) async fn fan_out(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "WITH batch AS (
            SELECT seq, event_id, type, account_id, voicemail_id FROM events
            WHERE dispatched_at IS NULL ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED
         ), made AS (
            INSERT INTO event_deliveries (seq, sink, event_id, voicemail_id, next_attempt_at)
            SELECT b.seq, s.name, b.event_id, b.voicemail_id,
                greatest(now(), (SELECT max(p.next_attempt_at) FROM event_deliveries p
                                 WHERE p.sink = s.name AND p.voicemail_id = b.voicemail_id
                                   AND p.status = 'pending'))
            FROM batch b JOIN event_sinks s
              ON (cardinality(s.events) = 0 OR b.type = ANY(s.events))
             AND (cardinality(s.accounts) = 0 OR b.account_id = ANY(s.accounts))
            WHERE s.seen_at > now() - interval '1 day'
            ON CONFLICT (seq, sink) DO NOTHING
         ), marked AS (
            UPDATE events SET dispatched_at = now() WHERE seq IN (SELECT seq FROM batch)
         )
         SELECT count(*) FROM batch",
    )
    .bind(FAN_OUT_BATCH)
    .fetch_one(pool)
    .await
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
              -- The voicemail's first open delivery to this sink: one lookup per row (a
              -- subquery with LIMIT, which the planner cannot turn into a join that scans the
              -- sink's deliveries, whatever its statistics say).
              AND c.seq = (
                SELECT p.seq FROM event_deliveries p
                WHERE p.voicemail_id = c.voicemail_id AND p.sink = c.sink
                  AND p.status IN ('pending', 'sending')
                ORDER BY p.seq LIMIT 1)
              -- An event not fanned out yet may be an earlier one of the same voicemail.
              -- (`+ 0`: no range scan on seq; the scan follows next_attempt_at and stops at
              -- the limit.)
              AND c.seq + 0 < coalesce((SELECT min(seq) FROM events WHERE dispatched_at IS NULL),
                                       9223372036854775807)
            ORDER BY c.next_attempt_at
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
        "WITH recorded AS (
         UPDATE event_deliveries d SET status = o.status,
            -- A delivery that succeeded keeps the error of the attempt before.
            last_error = CASE WHEN o.status = 'delivered' THEN d.last_error ELSE o.error END,
            last_duration_ms = o.duration_ms,
            delivered_at = CASE WHEN o.status = 'delivered' THEN now() END,
            next_attempt_at = now() + o.retry_in * interval '1 second',
            attempt_id = NULL, leased_by = NULL, leased_pid = NULL, leased_instance = NULL
         FROM unnest($2::bigint[], $3::uuid[], $4::text[], $5::text[], $6::int[], $7::float8[])
            AS o(seq, attempt_id, status, error, duration_ms, retry_in)
         WHERE d.sink = $1 AND d.seq = o.seq AND d.attempt_id = o.attempt_id
         RETURNING d.seq, d.voicemail_id, d.status, d.next_attempt_at
         )
         -- The voicemail's later deliveries wait for a retry too (instead of being looked at,
         -- due and blocked, by every claim meanwhile). A batch holds one event per voicemail.
         UPDATE event_deliveries l SET next_attempt_at = r.next_attempt_at
         FROM recorded r
         WHERE r.status = 'pending' AND l.sink = $1 AND l.voicemail_id = r.voicemail_id
           AND l.seq > r.seq AND l.status = 'pending' AND l.next_attempt_at < r.next_attempt_at",
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
/// for good), a batch at a time in `seq` order, until `stop`; returns how many. One worker at
/// a time prunes (an advisory lock): the others skip the round.
pub(crate) async fn prune(
    pool: &PgPool,
    retention: Duration,
    stop: &tokio_util::sync::CancellationToken,
) -> Result<u64, sqlx::Error> {
    let mut pruned = 0;
    let mut after = 0i64;
    while !stop.is_cancelled() {
        let mut tx = pool.begin().await?;
        let mine: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
            .bind(PRUNE_LOCK)
            .fetch_one(&mut *tx)
            .await?;
        if !mine {
            return Ok(pruned);
        }
        let (deleted, last, seen): (i64, Option<i64>, i64) = sqlx::query_as(
            "WITH candidates AS (
                SELECT seq, dispatched_at FROM events
                WHERE occurred_at < now() - $1 * interval '1 second' AND seq > $2
                ORDER BY seq LIMIT $3
             ), gone AS (
                DELETE FROM events WHERE seq IN (
                    SELECT c.seq FROM candidates c
                    WHERE c.dispatched_at IS NOT NULL
                      AND NOT EXISTS (SELECT 1 FROM event_deliveries d
                                      WHERE d.seq = c.seq AND d.status IN ('pending', 'sending')))
                RETURNING seq
             )
             SELECT (SELECT count(*) FROM gone), (SELECT max(seq) FROM candidates),
                    (SELECT count(*) FROM candidates)",
        )
        .bind(retention.as_secs_f64())
        .bind(after)
        .bind(PRUNE_BATCH)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        pruned += deleted as u64;
        match last {
            Some(last) if seen == PRUNE_BATCH => after = last,
            _ => break,
        }
    }
    Ok(pruned)
}

/// At shutdown: hands back, due now, `sink`'s deliveries this process still holds (their
/// attempt, cut short, does not count).
pub(crate) async fn release_mine(
    pool: &PgPool,
    sink: &str,
    me: &WorkerIdentity,
) -> Result<u64, sqlx::Error> {
    let released = sqlx::query(
        "UPDATE event_deliveries SET status = 'pending', next_attempt_at = now(),
            attempts = greatest(attempts - 1, 0),
            attempt_id = NULL, leased_by = NULL, leased_pid = NULL, leased_instance = NULL
         WHERE sink = $1 AND status = 'sending' AND leased_instance = $2",
    )
    .bind(sink)
    .bind(me.instance)
    .execute(pool)
    .await?;
    Ok(released.rows_affected())
}
