//! PostgreSQL: connection, migrations, and the idempotent writes of the index.

use std::time::Duration;

use sqlx::migrate::{MigrateDatabase, Migrator};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Postgres, types::Json};

use crate::index::VoicemailRow;

/// The SQL files in `migrations/`, embedded at build time.
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// Connects, creating the database first if it does not exist (a fresh install).
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    if !Postgres::database_exists(url).await? {
        // Several workers may race here; whoever loses sees "already exists", which is fine.
        if let Err(e) = Postgres::create_database(url).await
            && !Postgres::database_exists(url).await?
        {
            return Err(e);
        }
    }
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect(url)
        .await
}

/// Applies pending migrations (under PostgreSQL's advisory lock: safe with several workers).
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}

/// Whether retrying later can help: the database is away, overloaded or restarting, as
/// opposed to refusing this data.
pub fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // 08 connection, 40 serialization/deadlock, 53 resources, 57 operator action
            // (admin shutdown, crash recovery), 58 system error.
            ["08", "40", "53", "57", "58"]
                .iter()
                .any(|class| code.starts_with(class))
        }),
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        _ => false,
    }
}

/// Inserts or updates the row for `row.storage_key`. A row written from a newer upload of the
/// same key is never overwritten by an older job (jobs can arrive out of order and twice).
///
/// In the same statement, queues a `transcriptions` row for each of `hooks`: a new one for a
/// new voicemail, a reset one when the audio is newer than the one transcribed, nothing when a
/// job is merely delivered again. Returns whether the voicemail row was written.
pub async fn upsert_voicemail(
    pool: &PgPool,
    row: &VoicemailRow,
    hooks: &[String],
) -> Result<bool, sqlx::Error> {
    let written: i64 = sqlx::query_scalar(
        "WITH indexed AS (
        INSERT INTO voicemails (
            id, storage_key, account_id, document_id, attachment_name, mailbox_id,
            caller_id_number, caller_id_name, call_id, from_user, from_realm, to_user, to_realm,
            folder, kazoo_length_ms, recorded_at, duration_ms, codec, sample_rate, channels,
            bitrate_bps, probe_error, content_type, size_bytes, sha256, upload_mode,
            received_at, indexed_at, request_id, job_id, metadata
        ) VALUES (
            $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18,
            $19, $20, $21, $22, $23, $24, $25, $26, $27, now(), $28, $29, $30
        )
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
            metadata = EXCLUDED.metadata
        WHERE voicemails.received_at <= EXCLUDED.received_at
        RETURNING id, received_at
        ), queued AS (
            INSERT INTO transcriptions (voicemail_id, hook, audio_received_at)
            SELECT indexed.id, hook, indexed.received_at FROM indexed, unnest($31::text[]) AS hook
            ON CONFLICT (voicemail_id, hook) DO UPDATE SET
                status = 'pending', attempts = 0, text = NULL, language = NULL,
                confidence = NULL, error = NULL, queued_at = now(), next_attempt_at = now(),
                attempt_id = NULL, audio_received_at = EXCLUDED.audio_received_at
            WHERE transcriptions.audio_received_at < EXCLUDED.audio_received_at
        )
        SELECT count(*) FROM indexed",
    )
    .bind(row.id)
    .bind(&row.storage_key)
    .bind(&row.account_id)
    .bind(&row.document_id)
    .bind(&row.attachment_name)
    .bind(&row.mailbox_id)
    .bind(&row.caller_id_number)
    .bind(&row.caller_id_name)
    .bind(&row.call_id)
    .bind(&row.from_user)
    .bind(&row.from_realm)
    .bind(&row.to_user)
    .bind(&row.to_realm)
    .bind(&row.folder)
    .bind(row.kazoo_length_ms)
    .bind(row.recorded_at)
    .bind(row.duration_ms)
    .bind(&row.codec)
    .bind(row.sample_rate)
    .bind(row.channels)
    .bind(row.bitrate_bps)
    .bind(&row.probe_error)
    .bind(&row.content_type)
    .bind(row.size_bytes)
    .bind(&row.sha256)
    .bind(&row.upload_mode)
    .bind(row.received_at)
    .bind(&row.request_id)
    .bind(row.job_id)
    .bind(row.metadata.as_ref().map(Json))
    .bind(hooks)
    .fetch_one(pool)
    .await?;
    Ok(written > 0)
}

/// Records one of KAZOO's credentials-probe files (not a voicemail).
pub async fn record_credential_probe(
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
