//! Operator commands: putting dead-lettered jobs back, and reconciling storage with the index.

use std::collections::HashSet;
use std::path::Path;

use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use serde::Serialize;
use tracing::{info, warn};
use vmpipe_common::job::{JOB_SCHEMA_VERSION, is_credentials_probe};
use vmpipe_common::{FsStore, PathFacts, Settings, StorageKey, UploadMode, VoicemailJob, amqp};

use crate::{WorkerError, db};

/// A channel for an admin command, with the queues declared (and confirms, to publish).
async fn open_channel(
    settings: &Settings,
    confirms: bool,
) -> Result<(lapin::Connection, Channel), WorkerError> {
    let connection = amqp::connect(settings.amqp_url.expose(), "vmpipe-worker-admin").await?;
    let channel = connection.create_channel().await?;
    if confirms {
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
    }
    amqp::declare_queues(&channel, &settings.queue).await?;
    Ok((connection, channel))
}

/// Moves the jobs now in `{queue}.dead` back to the queue (after a fix), once each.
pub async fn replay_dead(settings: &Settings) -> Result<u64, WorkerError> {
    let (connection, channel) = open_channel(settings, true).await?;
    let dead = settings.dead_letter_queue();
    // Only what is there now: a job that fails again must not loop through here forever.
    let waiting = channel
        .queue_declare(
            dead.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?
        .message_count();
    let mut replayed = 0u64;
    while replayed < u64::from(waiting) {
        let Some(message) = channel
            .basic_get(dead.as_str().into(), BasicGetOptions::default())
            .await?
        else {
            break;
        };
        let delivery = &message.delivery;
        let mut properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into());
        if let Some(id) = delivery.properties.message_id() {
            properties = properties.with_message_id(id.clone());
        }
        if let Some(id) = delivery.properties.correlation_id() {
            properties = properties.with_correlation_id(id.clone());
        }
        publish_confirmed(&channel, &settings.queue, &delivery.data, properties).await?;
        delivery.ack(BasicAckOptions::default()).await?;
        replayed += 1;
    }
    let _ = connection.close(200, "replay done".into()).await;
    info!(replayed, "dead-lettered jobs replayed");
    Ok(replayed)
}

async fn publish_confirmed(
    channel: &Channel,
    queue: &str,
    payload: &[u8],
    properties: BasicProperties,
) -> Result<(), WorkerError> {
    let confirm = channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            payload,
            properties,
        )
        .await?
        .await?;
    if confirm.is_nack() {
        return Err(WorkerError::Refused(
            "RabbitMQ refused a replayed job".into(),
        ));
    }
    Ok(())
}

/// What `worker reconcile` found.
#[derive(Debug, Default, Serialize)]
pub struct Reconciliation {
    /// Voicemail files in storage.
    pub files: u64,
    /// Files that already had a row.
    pub indexed: u64,
    /// Files without a row, for which a job was published (or would be, in a dry run).
    pub enqueued: Vec<String>,
    /// Rows whose file is no longer in storage.
    pub rows_without_file: Vec<String>,
    /// Files whose name is not a storage key vmpipe writes (put there by hand).
    pub skipped: Vec<String>,
}

/// Compares storage with the index: enqueues a job for every stored file that has no row, and
/// reports rows whose file is gone. The safety net for anything that slipped through.
pub async fn reconcile(settings: &Settings, dry_run: bool) -> Result<Reconciliation, WorkerError> {
    let pool = db::connect(settings.database_url.expose(), 2).await?;
    db::migrate(&pool).await?;
    let store = FsStore::open(&settings.storage_dir)?;
    let rows: Vec<String> = sqlx::query_scalar(
        "SELECT storage_key FROM voicemails UNION ALL SELECT storage_key FROM credential_probes",
    )
    .fetch_all(&pool)
    .await?;
    pool.close().await;
    let mut known: HashSet<String> = rows.into_iter().collect();

    let mut report = Reconciliation::default();
    let root = store.voicemail_root().to_path_buf();
    let mut missing = Vec::new();
    walk(&root, &mut |path| {
        let relative = path.strip_prefix(&root).expect("below root");
        let Some(name) = relative.to_str() else {
            report.skipped.push(relative.to_string_lossy().into_owned());
            return;
        };
        match StorageKey::parse(name) {
            Ok(key) if key.as_str() == name => {
                report.files += 1;
                if known.remove(name) {
                    report.indexed += 1;
                } else {
                    missing.push(key);
                }
            }
            _ => report.skipped.push(name.to_owned()),
        }
    })?;
    report.rows_without_file = known.into_iter().collect();
    report.rows_without_file.sort();

    let channel = if dry_run || missing.is_empty() {
        None
    } else {
        Some(open_channel(settings, true).await?)
    };
    for key in missing {
        if let Some((_, channel)) = &channel {
            let job = job_for_stored_file(&store, &key)?;
            let properties = BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/json".into())
                .with_message_id(job.job_id.to_string().into());
            publish_confirmed(channel, &settings.queue, &job.to_json(), properties).await?;
        }
        report.enqueued.push(key.as_str().to_owned());
    }
    if let Some((connection, _)) = channel {
        let _ = connection.close(200, "reconcile done".into()).await;
    }
    for key in &report.rows_without_file {
        warn!(storage_key = %key, "row without a file in storage");
    }
    Ok(report)
}

fn walk(dir: &Path, visit: &mut dyn FnMut(&Path)) -> Result<(), WorkerError> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| WorkerError::Io(dir.display().to_string(), e))?;
    for entry in entries.flatten() {
        let path = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_dir() => walk(&path, visit)?,
            Ok(t) if t.is_file() => visit(&path),
            _ => {}
        }
    }
    Ok(())
}

/// A job for a file found in storage: what the path and the file itself tell.
fn job_for_stored_file(store: &FsStore, key: &StorageKey) -> Result<VoicemailJob, WorkerError> {
    let path = store.path_of(key);
    let io = |e| WorkerError::Io(path.display().to_string(), e);
    let meta = std::fs::metadata(&path).map_err(io)?;
    let facts = PathFacts::from_segments(key.segments());
    let received_at = meta
        .modified()
        .map(chrono::DateTime::<chrono::Utc>::from)
        .unwrap_or_else(|_| chrono::Utc::now());
    let content_type = match key
        .file_name()
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
    {
        Some(e) if e == "mp3" => Some("audio/mpeg".to_owned()),
        Some(e) if e == "wav" => Some("audio/wav".to_owned()),
        _ if is_credentials_probe(key.file_name()) => Some("text/plain".to_owned()),
        _ => None,
    };
    Ok(VoicemailJob {
        schema_version: JOB_SCHEMA_VERSION,
        job_id: uuid::Uuid::now_v7(),
        storage_key: key.as_str().to_owned(),
        account_id: facts.account_id,
        document_id: facts.document_id,
        attachment_name: facts.attachment_name,
        content_type,
        size_bytes: meta.len(),
        sha256: None,
        received_at,
        upload_mode: UploadMode::Reconciled,
        kazoo_document: None,
        request_id: "reconcile".into(),
    })
}

/// One dead-lettered job, as `worker dead-letters` lists it.
#[derive(Debug, Serialize)]
pub struct DeadLetter {
    pub job_id: Option<String>,
    pub storage_key: Option<String>,
    pub reason: Option<String>,
    pub failed_at: Option<String>,
}

/// Lists the jobs in `{queue}.dead` without taking them off it.
pub async fn dead_letters(settings: &Settings) -> Result<Vec<DeadLetter>, WorkerError> {
    let (connection, channel) = open_channel(settings, false).await?;
    let dead = settings.dead_letter_queue();
    let mut held = Vec::new();
    while let Some(message) = channel
        .basic_get(dead.as_str().into(), BasicGetOptions::default())
        .await?
    {
        held.push(message);
    }
    let listed = held
        .iter()
        .map(|m| DeadLetter {
            job_id: m
                .delivery
                .properties
                .message_id()
                .as_ref()
                .map(|id| id.to_string()),
            storage_key: VoicemailJob::from_json(&m.delivery.data)
                .ok()
                .map(|job| job.storage_key),
            reason: amqp::header_text(&m.delivery.properties, "x-vmpipe-error"),
            failed_at: amqp::header_text(&m.delivery.properties, "x-vmpipe-failed-at"),
        })
        .collect();
    // Closing the channel hands every unacked message back to the dead-letter queue.
    let _ = channel.close(200, "listed".into()).await;
    let _ = connection.close(200, "listed".into()).await;
    Ok(listed)
}

/// What `worker reindex` did.
#[derive(Debug, Default, Serialize)]
pub struct Reindexed {
    pub rows: u64,
    pub reprobed: u64,
    pub files_missing: Vec<String>,
}

/// Probes every indexed voicemail's file again and rewrites its measured columns (after an
/// upgrade of the probe, say). KAZOO's metadata in the rows is kept.
pub async fn reindex(settings: &Settings) -> Result<Reindexed, WorkerError> {
    let pool = db::connect(settings.database_url.expose(), 2).await?;
    db::migrate(&pool).await?;
    let store = FsStore::open(&settings.storage_dir)?;
    let mut report = Reindexed::default();
    let mut after = String::new();
    loop {
        let keys: Vec<String> = sqlx::query_scalar(
            "SELECT storage_key FROM voicemails WHERE storage_key > $1 ORDER BY storage_key LIMIT 500",
        )
        .bind(&after)
        .fetch_all(&pool)
        .await?;
        let Some(last) = keys.last() else { break };
        after = last.clone();
        for key in keys {
            report.rows += 1;
            let Ok(parsed) = StorageKey::parse(&key) else {
                continue;
            };
            let path = store.path_of(&parsed);
            let Ok(meta) = std::fs::metadata(&path) else {
                report.files_missing.push(key);
                continue;
            };
            let probed = tokio::task::spawn_blocking(move || crate::probe::probe_file(&path))
                .await
                .map_err(|e| WorkerError::Refused(format!("probe task: {e}")))?;
            let (duration, codec, rate, channels, bitrate, error) = match probed {
                Ok(p) => (
                    Some(p.duration_ms.min(i32::MAX as u64) as i32),
                    Some(p.codec),
                    Some(p.sample_rate as i32),
                    Some(p.channels as i16),
                    p.bitrate_bps.map(|b| b.min(i32::MAX as u64) as i32),
                    None,
                ),
                Err(e) => (None, None, None, None, None, Some(e.to_string())),
            };
            sqlx::query(
                "UPDATE voicemails SET duration_ms = $2, codec = $3, sample_rate = $4, channels = $5,
                 bitrate_bps = $6, probe_error = $7, size_bytes = $8, indexed_at = now()
                 WHERE storage_key = $1",
            )
            .bind(&key)
            .bind(duration)
            .bind(codec)
            .bind(rate)
            .bind(channels)
            .bind(bitrate)
            .bind(error)
            .bind(meta.len() as i64)
            .execute(&pool)
            .await?;
            report.reprobed += 1;
        }
    }
    pool.close().await;
    Ok(report)
}

/// What `worker prune` found or did.
#[derive(Debug, Default, Serialize)]
pub struct Pruned {
    pub dry_run: bool,
    pub voicemails: u64,
    pub credential_probes: u64,
    pub bytes: u64,
    pub files_already_gone: u64,
}

/// Retention: deletes voicemails (file, then row) and credential-probe files received before
/// `cutoff`, in small batches with a pause between them. Deleting many files at once makes
/// new files slow to create for minutes on some file systems (ext4 without a journal is 5-9x
/// slower), which would stall uploads.
pub async fn prune(
    settings: &Settings,
    cutoff: chrono::DateTime<chrono::Utc>,
    apply: bool,
    batch: i64,
    pause: std::time::Duration,
) -> Result<Pruned, WorkerError> {
    let pool = db::connect(settings.database_url.expose(), 2).await?;
    db::migrate(&pool).await?;
    let store = FsStore::open(&settings.storage_dir)?;
    let mut report = Pruned {
        dry_run: !apply,
        ..Pruned::default()
    };
    for table in ["voicemails", "credential_probes"] {
        let select = match table {
            "voicemails" => {
                "SELECT storage_key FROM voicemails WHERE received_at < $1 AND storage_key > $2 ORDER BY storage_key LIMIT $3"
            }
            _ => {
                "SELECT storage_key FROM credential_probes WHERE received_at < $1 AND storage_key > $2 ORDER BY storage_key LIMIT $3"
            }
        };
        let mut after = String::new();
        loop {
            let keys: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(select))
                .bind(cutoff)
                .bind(&after)
                .bind(batch.max(1))
                .fetch_all(&pool)
                .await?;
            let Some(last) = keys.last() else { break };
            after = last.clone();
            for key in &keys {
                let path = StorageKey::parse(key).map(|k| store.path_of(&k)).ok();
                let size = path
                    .as_ref()
                    .and_then(|p| std::fs::metadata(p).ok())
                    .map_or(0, |m| m.len());
                report.bytes += size;
                if apply && let Some(path) = &path {
                    match std::fs::remove_file(path) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                            report.files_already_gone += 1
                        }
                        Err(e) => return Err(WorkerError::Io(path.display().to_string(), e)),
                    }
                }
            }
            if apply {
                let delete = match table {
                    "voicemails" => "DELETE FROM voicemails WHERE storage_key = ANY($1)",
                    _ => "DELETE FROM credential_probes WHERE storage_key = ANY($1)",
                };
                sqlx::query(sqlx::AssertSqlSafe(delete))
                    .bind(&keys)
                    .execute(&pool)
                    .await?;
            }
            match table {
                "voicemails" => report.voicemails += keys.len() as u64,
                _ => report.credential_probes += keys.len() as u64,
            }
            if apply {
                tokio::time::sleep(pause).await;
            }
        }
    }
    pool.close().await;
    info!(?report, "prune finished");
    Ok(report)
}

/// `90d`, `12h`, `30m`, `45s`, or plain seconds.
pub fn parse_age(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("not an age: {text:?}"))?;
    let seconds = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(format!("unknown unit in {text:?} (use s, m, h, d or w)")),
    };
    Ok(std::time::Duration::from_secs(number * seconds))
}
