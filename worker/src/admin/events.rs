//! `worker events list` and `worker events replay`: the outbox seen and re-sent.
//!
//! `list` prints each event as sinks receive it, with its deliveries. `replay` makes the
//! matching events due again for the configured sinks that take them (a sink added later gets
//! them for the first time), with their `event_id` unchanged so receivers can de-duplicate;
//! the running workers deliver them, each voicemail's in order.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;
use vmpipe_common::Settings;

use crate::WorkerError;
use crate::events::{Event, StoredEvent};
use crate::index::db;

/// Which events `events list` and `events replay` take.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// Events that occurred at or after this.
    pub since: Option<DateTime<Utc>>,
    /// Only this type (`voicemail.indexed`, ...).
    pub kind: Option<String>,
    pub account: Option<String>,
    /// A voicemail's id or storage key.
    pub voicemail: Option<String>,
    /// Only events with a delivery in this state (`pending`, `sending`, `delivered`, `failed`).
    pub status: Option<String>,
    /// `replay`: only this sink (default: every configured sink).
    pub sink: Option<String>,
}

/// An event as `events list` prints it.
#[derive(Debug, Serialize)]
pub struct Listed {
    #[serde(flatten)]
    pub event: Event,
    pub deliveries: Vec<Delivery>,
}

#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct Delivery {
    pub sink: String,
    pub status: String,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub delivered_at: Option<DateTime<Utc>>,
}

/// What `events replay` did.
#[derive(Debug, Serialize)]
pub struct Replayed {
    /// Events matched.
    pub events: u64,
    /// Deliveries made due again (or for the first time).
    pub deliveries: u64,
}

const STATUSES: &[&str] = &["pending", "sending", "delivered", "failed"];

async fn open(settings: &Settings) -> Result<PgPool, WorkerError> {
    let pool = db::connect(settings.database_url.expose(), 2).await?;
    db::migrate(&pool).await?;
    Ok(pool)
}

/// The matching events after `after` (a `seq`), oldest first, at most `limit`.
async fn matching(
    pool: &PgPool,
    filter: &EventFilter,
    after: i64,
    limit: i64,
) -> Result<Vec<StoredEvent>, WorkerError> {
    if let Some(status) = &filter.status
        && !STATUSES.contains(&status.as_str())
    {
        return Err(WorkerError::Refused(format!(
            "--status is one of {}: {status:?}",
            STATUSES.join(", ")
        )));
    }
    let voicemail_id = filter
        .voicemail
        .as_deref()
        .and_then(|v| Uuid::parse_str(v).ok());
    let storage_key = filter
        .voicemail
        .as_deref()
        .filter(|_| voicemail_id.is_none());
    Ok(sqlx::query_as(
        "SELECT seq, event_id, type, occurred_at, account_id, voicemail_id, voicemail, transcript
         FROM events e
         WHERE ($1::timestamptz IS NULL OR occurred_at >= $1)
           AND ($2::text IS NULL OR type = $2)
           AND ($3::text IS NULL OR account_id = $3)
           AND ($4::uuid IS NULL OR voicemail_id = $4)
           AND ($5::text IS NULL OR voicemail->>'storage_key' = $5)
           AND (($6::text IS NULL AND $7::text IS NULL)
                OR EXISTS (SELECT 1 FROM event_deliveries d
                           WHERE d.seq = e.seq AND ($6::text IS NULL OR d.status = $6)
                             AND ($7::text IS NULL OR d.sink = $7)))
           AND seq > $9
         ORDER BY seq LIMIT $8",
    )
    .bind(filter.since)
    .bind(&filter.kind)
    .bind(&filter.account)
    .bind(voicemail_id)
    .bind(storage_key)
    .bind(&filter.status)
    .bind(&filter.sink)
    .bind(limit)
    .bind(after)
    .fetch_all(pool)
    .await?)
}

/// `worker events list`: the matching events (at most `limit`), each with its deliveries.
pub async fn list_events(
    settings: &Settings,
    filter: &EventFilter,
    limit: i64,
) -> Result<Vec<Listed>, WorkerError> {
    let pool = open(settings).await?;
    let events = matching(&pool, filter, 0, limit).await?;
    let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
    let deliveries: Vec<(i64, Delivery)> = sqlx::query_as::<
        _,
        (
            i64,
            String,
            String,
            i32,
            Option<String>,
            Option<DateTime<Utc>>,
        ),
    >(
        "SELECT seq, sink, status, attempts, last_error, delivered_at FROM event_deliveries
         WHERE seq = ANY($1) AND ($2::text IS NULL OR sink = $2) ORDER BY seq, sink",
    )
    .bind(&seqs)
    .bind(&filter.sink)
    .fetch_all(&pool)
    .await?
    .into_iter()
    .map(|(seq, sink, status, attempts, last_error, delivered_at)| {
        (
            seq,
            Delivery {
                sink,
                status,
                attempts,
                last_error,
                delivered_at,
            },
        )
    })
    .collect();
    pool.close().await;
    let mut deliveries = deliveries.into_iter().peekable();
    let public_url = settings.api_public_url();
    Ok(events
        .into_iter()
        .map(|stored| {
            let mut own = Vec::new();
            while let Some((_, delivery)) = deliveries.next_if(|(seq, _)| *seq == stored.seq) {
                own.push(delivery);
            }
            Listed {
                event: stored.to_event(public_url),
                deliveries: own,
            }
        })
        .collect())
}

/// Events replayed per statement.
const REPLAY_BATCH: i64 = 1000;

/// `worker events replay`: makes the matching events due again for the configured sinks (or
/// `filter.sink`) whose filters take them.
pub async fn replay_events(
    settings: &Settings,
    filter: &EventFilter,
) -> Result<Replayed, WorkerError> {
    let sinks: Vec<_> = settings
        .notify
        .iter()
        .filter(|s| filter.sink.as_ref().is_none_or(|only| *only == s.name))
        .collect();
    if let Some(only) = &filter.sink
        && sinks.is_empty()
    {
        return Err(WorkerError::Refused(format!(
            "no [[notify]] sink is named {only:?} in the settings"
        )));
    }
    if sinks.is_empty() {
        return Err(WorkerError::Refused(
            "no [[notify]] sinks are configured: there is nowhere to replay to".into(),
        ));
    }
    let pool = open(settings).await?;
    let mut report = Replayed {
        events: 0,
        deliveries: 0,
    };
    let mut after = 0i64;
    loop {
        // `--sink` picks where to replay to; it narrows the events only with `--status` (a
        // sink added since has no deliveries yet).
        let narrowing = EventFilter {
            sink: filter.status.as_ref().and(filter.sink.clone()),
            ..filter.clone()
        };
        let events = matching(&pool, &narrowing, after, REPLAY_BATCH).await?;
        let Some(last) = events.last() else { break };
        after = last.seq;
        report.events += events.len() as u64;
        let (mut seqs, mut names, mut ids, mut voicemails) = (vec![], vec![], vec![], vec![]);
        for event in &events {
            for sink in sinks
                .iter()
                .filter(|s| s.wants(&event.kind, event.account_id.as_deref()))
            {
                seqs.push(event.seq);
                names.push(sink.name.as_str());
                ids.push(event.event_id);
                voicemails.push(event.voicemail_id);
            }
        }
        // A delivery in progress is left to finish; with `--status`, only deliveries in that
        // state are made due again (a sink that has the event already does not get it twice).
        let replayed = sqlx::query(
            "INSERT INTO event_deliveries (seq, sink, event_id, voicemail_id)
             SELECT * FROM unnest($1::bigint[], $2::text[], $3::uuid[], $4::uuid[])
             WHERE $5::text IS NULL
             ON CONFLICT (seq, sink) DO UPDATE SET status = 'pending', attempts = 0,
                next_attempt_at = now(), last_error = NULL, delivered_at = NULL,
                attempt_id = NULL, leased_by = NULL, leased_pid = NULL, leased_instance = NULL
             WHERE event_deliveries.status <> 'sending'",
        )
        .bind(&seqs)
        .bind(&names)
        .bind(&ids)
        .bind(&voicemails)
        .bind(&filter.status)
        .execute(&pool)
        .await?
        .rows_affected()
            + match &filter.status {
                None => 0,
                Some(status) => sqlx::query(
                    "UPDATE event_deliveries d SET status = 'pending', attempts = 0,
                        next_attempt_at = now(), last_error = NULL, delivered_at = NULL,
                        attempt_id = NULL, leased_by = NULL, leased_pid = NULL,
                        leased_instance = NULL
                     FROM unnest($1::bigint[], $2::text[]) AS r(seq, sink)
                     WHERE d.seq = r.seq AND d.sink = r.sink AND d.status = $3
                       AND d.status <> 'sending'",
                )
                .bind(&seqs)
                .bind(&names)
                .bind(status)
                .execute(&pool)
                .await?
                .rows_affected(),
            };
        report.deliveries += replayed;
        if (events.len() as i64) < REPLAY_BATCH {
            break;
        }
    }
    pool.close().await;
    Ok(report)
}
