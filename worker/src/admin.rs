//! Operator commands: putting dead-lettered jobs back, and reconciling storage with the index.

use std::collections::HashSet;
use std::io::Read;
use std::path::Path;

use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tracing::{info, warn};
use vmpipe_common::job::{JOB_SCHEMA_VERSION, is_credentials_probe};
use vmpipe_common::{FsStore, PathFacts, Settings, StorageKey, UploadMode, VoicemailJob, amqp};

use crate::{WorkerError, db};

/// Moves the jobs now in `{queue}.dead` back to the queue (after a fix), once each.
pub async fn replay_dead(settings: &Settings) -> Result<u64, WorkerError> {
    let connection = amqp::connect(settings.amqp_url.expose(), "vmpipe-worker-admin").await?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    amqp::declare_queues(&channel, &settings.queue).await?;
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
        let connection = amqp::connect(settings.amqp_url.expose(), "vmpipe-worker-admin").await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        amqp::declare_queues(&channel, &settings.queue).await?;
        Some((connection, channel))
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
    let mut file = std::fs::File::open(&path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = file.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
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
        sha256: hex::encode(hasher.finalize()),
        received_at,
        upload_mode: UploadMode::Reconciled,
        kazoo_document: None,
        request_id: "reconcile".into(),
    })
}
