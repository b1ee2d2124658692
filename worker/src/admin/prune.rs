//! `worker prune`: retention by age, files and rows together, in small batches, with the
//! checks that keep a wrong storage directory from emptying the index.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use serde::Serialize;
use sqlx::PgPool;
use tracing::{info, warn};
use vmpipe_common::settings::StorageKind;
use vmpipe_common::{Settings, Storage, StorageKey};

use super::report::{KeyList, Progress};
use crate::WorkerError;

/// Rows (older than the cutoff) whose file is looked for before anything is deleted.
const SAMPLE_ROWS: i64 = 1000;

/// How `worker prune` runs.
#[derive(Debug, Clone)]
pub struct PruneOptions {
    /// Voicemails received before this go.
    pub cutoff: chrono::DateTime<chrono::Utc>,
    /// Really delete (otherwise only report).
    pub apply: bool,
    /// Files deleted per batch, with `pause` between batches.
    pub batch: i64,
    pub pause: Duration,
    /// Delete the rows whose file is missing too (by default they stay, and are reported).
    pub include_missing_files: bool,
    /// Prune even when most of the files looked for are missing.
    pub force: bool,
    /// List every key kept in the report (by default the first few).
    pub full: bool,
    /// How often a progress line goes to the log (standard error).
    pub progress: Duration,
}

/// What `worker prune` found or did.
#[derive(Debug, Serialize)]
pub struct Pruned {
    pub dry_run: bool,
    /// Where the files were deleted: the storage directory (absolute), or `s3://bucket/prefix`.
    pub storage_dir: String,
    /// Voicemails deleted (or that would be, in a dry run), file and row.
    pub voicemails: u64,
    /// KAZOO credential-probe files deleted (or that would be), file and row.
    pub credential_probes: u64,
    pub bytes: u64,
    /// Rows deleted whose file was already gone (`--include-missing-files`).
    pub files_already_gone: u64,
    /// Rows older than the cutoff kept because their file is missing.
    pub rows_without_file_kept: u64,
    pub kept: KeyList,
    /// Directories removed because pruning emptied them (0 in a bucket).
    pub directories_removed: u64,
}

/// Retention: deletes voicemails (file, then row) and credential-probe files received before
/// the cutoff, in small batches with a pause between them. Deleting many files at once makes
/// new files slow to create for minutes on some file systems (ext4 without a journal is 5-9x
/// slower), which would stall uploads.
///
/// A row whose file is missing is kept unless `include_missing_files`; and prune refuses to
/// start when the storage directory is relative, the storage has no voicemails while old rows
/// exist, or lacks the files of most old rows (unless `force`): the signs of a wrong storage
/// directory (or bucket, or prefix).
pub async fn prune(settings: &Settings, options: &PruneOptions) -> Result<Pruned, WorkerError> {
    if settings.storage == StorageKind::Fs {
        check_absolute(&settings.storage_dir)?;
    }
    let super::Admin { pool, store } = super::Admin::open(settings).await?;
    let result = prune_with(&pool, store, options).await;
    pool.close().await;
    result
}

async fn prune_with(
    pool: &PgPool,
    store: Arc<dyn Storage>,
    options: &PruneOptions,
) -> Result<Pruned, WorkerError> {
    let old = sqlx::query_scalar::<_, i64>(
        "SELECT (SELECT count(*) FROM voicemails WHERE received_at < $1)
              + (SELECT count(*) FROM credential_probes WHERE received_at < $1)",
    )
    .bind(options.cutoff)
    .fetch_one(pool)
    .await?;
    check_storage(pool, store.as_ref(), old, options).await?;
    let mut report = Pruned {
        dry_run: !options.apply,
        storage_dir: store.location(),
        voicemails: 0,
        credential_probes: 0,
        bytes: 0,
        files_already_gone: 0,
        rows_without_file_kept: 0,
        kept: KeyList::new(options.full),
        directories_removed: 0,
    };
    let mut progress = Progress::every(options.progress);
    for table in [Table::Voicemails, Table::CredentialProbes] {
        let mut after = String::new();
        loop {
            let keys: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(table.select()))
                .bind(options.cutoff)
                .bind(&after)
                .bind(options.batch.max(1))
                .fetch_all(pool)
                .await?;
            let Some(last) = keys.last() else { break };
            after = last.clone();
            let mut delete = Vec::with_capacity(keys.len());
            for key in keys {
                let parsed = StorageKey::parse(&key).ok();
                let size = match &parsed {
                    Some(parsed) => store.stat(parsed).await?.map(|info| info.size),
                    None => None,
                };
                if size.is_none() && !options.include_missing_files {
                    report.rows_without_file_kept += 1;
                    report.kept.push(key);
                    continue;
                }
                report.bytes += size.unwrap_or(0);
                let mut gone = size.is_none();
                if options.apply
                    && let Some(parsed) = &parsed
                {
                    // Also for a missing file: its directories may be empty now.
                    let removed = store.remove(parsed).await?;
                    gone = !removed.file;
                    report.directories_removed += removed.directories as u64;
                }
                if gone {
                    report.files_already_gone += 1;
                }
                delete.push(key);
            }
            if options.apply && !delete.is_empty() {
                sqlx::query(sqlx::AssertSqlSafe(table.delete()))
                    .bind(&delete)
                    .execute(pool)
                    .await?;
            }
            *table.count(&mut report) += delete.len() as u64;
            if progress.due() {
                info!(
                    voicemails = report.voicemails,
                    credential_probes = report.credential_probes,
                    rows_without_file_kept = report.rows_without_file_kept,
                    of = old,
                    "prune progress"
                );
            }
            if options.apply && !delete.is_empty() {
                tokio::time::sleep(options.pause).await;
            }
        }
    }
    if report.rows_without_file_kept > 0 {
        warn!(
            rows = report.rows_without_file_kept,
            "rows older than the cutoff kept: their file is missing (--include-missing-files deletes them)"
        );
    }
    info!(
        dry_run = report.dry_run,
        voicemails = report.voicemails,
        credential_probes = report.credential_probes,
        bytes = report.bytes,
        directories_removed = report.directories_removed,
        "prune finished"
    );
    Ok(report)
}

#[derive(Clone, Copy)]
enum Table {
    Voicemails,
    CredentialProbes,
}

impl Table {
    fn select(self) -> &'static str {
        match self {
            Table::Voicemails => {
                "SELECT storage_key FROM voicemails WHERE received_at < $1 AND storage_key > $2 ORDER BY storage_key LIMIT $3"
            }
            Table::CredentialProbes => {
                "SELECT storage_key FROM credential_probes WHERE received_at < $1 AND storage_key > $2 ORDER BY storage_key LIMIT $3"
            }
        }
    }

    fn delete(self) -> &'static str {
        match self {
            // With its event, in the same statement (the outbox).
            Table::Voicemails => {
                "WITH gone AS (
                    DELETE FROM voicemails WHERE storage_key = ANY($1) RETURNING *
                 )
                 INSERT INTO events (type, voicemail_id, account_id, voicemail)
                 SELECT 'voicemail.deleted', gone.id, gone.account_id, to_jsonb(gone) - 'metadata'
                 FROM gone"
            }
            Table::CredentialProbes => "DELETE FROM credential_probes WHERE storage_key = ANY($1)",
        }
    }

    fn count(self, report: &mut Pruned) -> &mut u64 {
        match self {
            Table::Voicemails => &mut report.voicemails,
            Table::CredentialProbes => &mut report.credential_probes,
        }
    }
}

/// Refuses a relative `storage_dir`: prune deletes, and a relative directory (`./data`, the
/// default) depends on where the command happens to run.
fn check_absolute(storage_dir: &Path) -> Result<(), WorkerError> {
    if !storage_dir.is_absolute() {
        let here = std::env::current_dir()
            .map(|cwd| cwd.join(storage_dir).display().to_string())
            .unwrap_or_else(|_| "unknown".into());
        return Err(WorkerError::Refused(format!(
            "VMPIPE_STORAGE_DIR is relative ({}, {here} from here): prune deletes files and rows, \
             so it needs the absolute storage directory ingest writes (VMPIPE_STORAGE_DIR=/var/lib/vmpipe/data, say)",
            storage_dir.display()
        )));
    }
    Ok(())
}

/// Refuses a storage that looks wrong for the `old` rows about to be pruned: no voicemails at
/// all, or (unless `force`) the files of most of a sample of them missing.
async fn check_storage(
    pool: &PgPool,
    store: &dyn Storage,
    old: i64,
    options: &PruneOptions,
) -> Result<(), WorkerError> {
    if old == 0 {
        return Ok(());
    }
    let location = store.location();
    if store.list().next().await.transpose()?.is_none() {
        return Err(WorkerError::Refused(format!(
            "the storage looks wrong: {location} has no voicemails, while {old} rows are older \
             than the cutoff; {WHICH_STORAGE}"
        )));
    }
    let sample: Vec<String> = sqlx::query_scalar(
        "SELECT storage_key FROM (
            SELECT storage_key FROM voicemails WHERE received_at < $1
            UNION ALL SELECT storage_key FROM credential_probes WHERE received_at < $1) AS old
         ORDER BY random() LIMIT $2",
    )
    .bind(options.cutoff)
    .bind(SAMPLE_ROWS)
    .fetch_all(pool)
    .await?;
    let mut missing = 0;
    for key in &sample {
        let present = match StorageKey::parse(key) {
            Ok(key) => store.stat(&key).await?.is_some(),
            Err(_) => false,
        };
        if !present {
            missing += 1;
        }
    }
    if missing * 2 > sample.len() {
        let message = format!(
            "the storage looks wrong: {missing} of {} rows older than the cutoff \
             (a random sample) have no file in {location}; {WHICH_STORAGE} (--force prunes anyway)",
            sample.len(),
        );
        if !options.force {
            return Err(WorkerError::Refused(message));
        }
        warn!("{message}; pruning anyway (--force)");
    }
    Ok(())
}

/// What a wrong storage is most likely to be.
const WHICH_STORAGE: &str = "are VMPIPE_STORAGE_DIR (or VMPIPE_S3_BUCKET and VMPIPE_S3_PREFIX) \
     the storage ingest writes?";

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
