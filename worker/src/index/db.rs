//! PostgreSQL: connection, migrations, and the idempotent writes of the index.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::types::Json;

use super::VoicemailRow;

pub use vmpipe_common::db::{MIGRATOR, is_transient};

/// Connects, creating the database first if it does not exist (a fresh install).
pub(crate) async fn connect(url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    vmpipe_common::db::create_if_missing(url).await?;
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect(url)
        .await
}

/// Applies pending migrations (under PostgreSQL's advisory lock: safe with several workers).
pub(crate) async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}

/// A database failure, as jobs see it: cloneable (a batch's failure is every one of its jobs'),
/// with its cause kept.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum DbError {
    #[error(transparent)]
    Sql(Arc<sqlx::Error>),
    /// The worker is stopping: the row was not written.
    #[error("the index writer has stopped")]
    WriterStopped,
}

impl DbError {
    /// Retrying later can help (see [`is_transient`]).
    pub(crate) fn is_transient(&self) -> bool {
        match self {
            DbError::Sql(error) => is_transient(error),
            DbError::WriterStopped => true,
        }
    }
}

impl From<sqlx::Error> for DbError {
    fn from(error: sqlx::Error) -> Self {
        DbError::Sql(Arc::new(error))
    }
}

/// Inserts or updates the rows, keyed by `storage_key`, in one statement (one commit for the
/// whole batch). A row written from a newer upload of the same key is never overwritten by an
/// older job (jobs can arrive out of order and twice); of two rows for one key in the batch,
/// the newer wins.
///
/// In the same statement, queues a `transcriptions` row for each of `hooks`: a new one for a
/// new voicemail, a reset one when the audio is newer than the one transcribed, nothing when a
/// job is merely delivered again. And writes the row's event to the outbox (`events`):
/// `voicemail.indexed` for a new row, `voicemail.updated` for a newer upload, none for a job
/// delivered again. Returns the storage keys whose row was written, each with
/// whether its row is new (a voicemail indexed for the first time).
pub(crate) async fn upsert_voicemails(
    pool: &PgPool,
    rows: &[&VoicemailRow],
    hooks: &[String],
) -> Result<Vec<(String, bool)>, sqlx::Error> {
    // The rows travel as one JSON array that PostgreSQL reads with the table's own row type:
    // one parameter whatever the batch size.
    sqlx::query_as(
        "WITH incoming AS (
            SELECT DISTINCT ON (storage_key) *
            FROM jsonb_populate_recordset(NULL::voicemails, $1)
            ORDER BY storage_key, received_at DESC
        ), old AS (
            -- The rows as they were before this statement: tells a first index, a newer
            -- upload and a job delivered again apart (for their events).
            SELECT storage_key, received_at FROM voicemails
            WHERE storage_key IN (SELECT storage_key FROM incoming)
        ), indexed AS (
            INSERT INTO voicemails (
            id, storage_key, account_id, document_id, attachment_name, mailbox_id,
            caller_id_number, caller_id_name, call_id, from_user, from_realm, to_user, to_realm,
            folder, kazoo_length_ms, recorded_at, duration_ms, codec, sample_rate, channels,
            bitrate_bps, probe_error, content_type, size_bytes, sha256, upload_mode,
            received_at, indexed_at, request_id, job_id, metadata, dropped_metadata
            )
            SELECT id, storage_key, account_id, document_id, attachment_name, mailbox_id,
            caller_id_number, caller_id_name, call_id, from_user, from_realm, to_user, to_realm,
            folder, kazoo_length_ms, recorded_at, duration_ms, codec, sample_rate, channels,
            bitrate_bps, probe_error, content_type, size_bytes, sha256, upload_mode,
            received_at, now(), request_id, job_id, metadata, dropped_metadata
            FROM incoming
            ON CONFLICT (storage_key) DO UPDATE SET
                account_id = EXCLUDED.account_id,
                document_id = EXCLUDED.document_id,
                attachment_name = EXCLUDED.attachment_name,
                mailbox_id = EXCLUDED.mailbox_id,
                caller_id_number = EXCLUDED.caller_id_number,
                caller_id_name = EXCLUDED.caller_id_name,
                call_id = EXCLUDED.call_id,
                from_user = EXCLUDED.from_user,
                from_realm = EXCLUDED.from_realm,
                to_user = EXCLUDED.to_user,
                to_realm = EXCLUDED.to_realm,
                folder = EXCLUDED.folder,
                kazoo_length_ms = EXCLUDED.kazoo_length_ms,
                recorded_at = EXCLUDED.recorded_at,
                duration_ms = EXCLUDED.duration_ms,
                codec = EXCLUDED.codec,
                sample_rate = EXCLUDED.sample_rate,
                channels = EXCLUDED.channels,
                bitrate_bps = EXCLUDED.bitrate_bps,
                probe_error = EXCLUDED.probe_error,
                content_type = EXCLUDED.content_type,
                size_bytes = EXCLUDED.size_bytes,
                sha256 = EXCLUDED.sha256,
                upload_mode = EXCLUDED.upload_mode,
                received_at = EXCLUDED.received_at,
                indexed_at = now(),
                request_id = EXCLUDED.request_id,
                job_id = EXCLUDED.job_id,
                metadata = EXCLUDED.metadata,
                dropped_metadata = EXCLUDED.dropped_metadata
            WHERE voicemails.received_at <= EXCLUDED.received_at
            -- xmax is 0 on a row this statement inserted (not on one it updated).
            RETURNING id, storage_key, received_at, recorded_at, account_id,
                (xmax = 0) AS inserted, to_jsonb(voicemails) - 'metadata' AS event_row
        ), queued AS (
            INSERT INTO transcriptions (voicemail_id, hook, audio_received_at, listed_at, account_id)
            SELECT indexed.id, hook, indexed.received_at,
                coalesce(indexed.recorded_at, indexed.received_at), indexed.account_id
            FROM indexed, unnest($2::text[]) AS hook
            ON CONFLICT (voicemail_id, hook) DO UPDATE SET
                status = 'pending', attempts = 0, text = NULL, language = NULL,
                confidence = NULL, error = NULL, queued_at = now(), next_attempt_at = now(),
                attempt_id = NULL, audio_received_at = EXCLUDED.audio_received_at,
                listed_at = EXCLUDED.listed_at, account_id = EXCLUDED.account_id
            WHERE transcriptions.audio_received_at < EXCLUDED.audio_received_at
        ), relisted AS (
            -- The rows of hooks no longer configured keep their voicemail's time and account.
            UPDATE transcriptions t
            SET listed_at = coalesce(indexed.recorded_at, indexed.received_at),
                account_id = indexed.account_id
            FROM indexed
            WHERE t.voicemail_id = indexed.id AND NOT (t.hook = ANY($2::text[]))
              AND (t.listed_at, t.account_id) IS DISTINCT FROM
                  (coalesce(indexed.recorded_at, indexed.received_at), indexed.account_id)
        ), told AS (
            -- The outbox: an event with the row, in the same commit. None for a job delivered
            -- again (the row was already written from the same upload).
            INSERT INTO events (type, voicemail_id, account_id, voicemail)
            SELECT CASE WHEN indexed.inserted THEN 'voicemail.indexed' ELSE 'voicemail.updated' END,
                indexed.id, indexed.account_id, indexed.event_row
            FROM indexed LEFT JOIN old USING (storage_key)
            WHERE indexed.inserted OR old.received_at IS NULL
               OR old.received_at < indexed.received_at
        )
        SELECT storage_key, inserted FROM indexed",
    )
    .bind(Json(rows))
    .bind(hooks)
    .fetch_all(pool)
    .await
}

/// Records one of KAZOO's credentials-probe files (not a voicemail).
pub(crate) async fn record_credential_probe(
    pool: &PgPool,
    storage_key: &str,
    account_id: Option<&str>,
    received_at: chrono::DateTime<chrono::Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO credential_probes (storage_key, account_id, received_at)
         VALUES ($1, $2, $3)
         ON CONFLICT (storage_key) DO UPDATE SET received_at = EXCLUDED.received_at, indexed_at = now()",
    )
    .bind(storage_key)
    .bind(account_id)
    .bind(received_at)
    .execute(pool)
    .await?;
    Ok(())
}
