//! `worker prune`: retention by age, files and rows together, in small batches.

use serde::Serialize;
use tracing::info;
use vmpipe_common::{Settings, StorageKey};

use super::Admin;
use crate::WorkerError;

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
    let Admin { pool, store } = Admin::open(settings).await?;
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
