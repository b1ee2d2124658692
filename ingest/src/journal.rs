//! The local job journal: jobs that RabbitMQ has not confirmed yet, one file each, kept until
//! they are published. This is what lets ingest answer 201 while the broker is away: the job is
//! as durable as the voicemail itself, and is published when the broker is back, also after a
//! restart.
//!
//! The journal keeps a count of its entries ([`Journal::count`], and the `vmpipe_journal_jobs`
//! gauge), so that nothing asks the directory how many there are but the publisher's drain. An
//! entry that cannot be read back is moved to `journal/bad/` ([`Journal::set_aside`]) and counted
//! in `vmpipe_journal_bad_entries_total`, rather than tried again and again.

use std::collections::HashSet;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tracing::{error, warn};
use uuid::Uuid;
use vmpipe_common::store::sync_dir;

/// Where entries that cannot be read back go, below the journal.
const BAD_DIR: &str = "bad";

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {op} failed for {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("journal task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error(transparent)]
    Storage(#[from] vmpipe_common::StorageError),
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> JournalError + 'a {
    move |source| JournalError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// An entry waiting to be published.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Entry {
    pub path: PathBuf,
}

#[derive(Clone, Debug)]
pub(crate) struct Journal {
    dir: PathBuf,
    /// Entries waiting (as of the last write, removal or listing).
    count: Arc<AtomicUsize>,
    /// Unreadable entries that could not be moved aside either: left out of the drain.
    stuck: Arc<Mutex<HashSet<PathBuf>>>,
}

impl Journal {
    /// Opens (creating) the journal directory, drops half-written entries left by a crash
    /// (their upload never got its 201, so KAZOO retries it), and counts the entries.
    pub(crate) fn open(dir: &Path) -> Result<Self, JournalError> {
        fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
        let mut count = 0;
        for entry in fs::read_dir(dir).map_err(io_err("list", dir))?.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "tmp") {
                let _ = fs::remove_file(path);
            } else if path.extension().is_some_and(|e| e == "json") {
                count += 1;
            }
        }
        let journal = Self {
            dir: dir.to_path_buf(),
            count: Arc::default(),
            stuck: Arc::default(),
        };
        journal.set_count(count);
        Ok(journal)
    }

    /// The entry [`Journal::write`] makes for `job_id` (whether it is there or not).
    pub(crate) fn entry(&self, job_id: Uuid) -> Entry {
        Entry {
            path: self.dir.join(format!("{}.json", job_id.simple())),
        }
    }

    /// Entries waiting, without touching the disk.
    pub(crate) fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    fn set_count(&self, count: usize) {
        self.count.store(count, Ordering::Relaxed);
        metrics::gauge!("vmpipe_journal_jobs").set(count as f64);
    }

    fn add_to_count(&self, delta: isize) {
        let previous = self
            .count
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_add_signed(delta))
            })
            .unwrap_or_default();
        metrics::gauge!("vmpipe_journal_jobs").set(previous.saturating_add_signed(delta) as f64);
    }

    /// Durably records a job (written, fsynced, renamed, directory fsynced).
    pub(crate) async fn write(&self, job_id: Uuid, payload: Vec<u8>) -> Result<(), JournalError> {
        let dir = self.dir.clone();
        blocking(move || {
            let temp = dir.join(format!("{}.tmp", job_id.simple()));
            let path = dir.join(format!("{}.json", job_id.simple()));
            let written = (|| {
                let mut file = fs::File::create(&temp).map_err(io_err("create", &temp))?;
                file.write_all(&payload).map_err(io_err("write", &temp))?;
                file.sync_data().map_err(io_err("fsync", &temp))?;
                fs::rename(&temp, &path).map_err(io_err("rename", &path))?;
                Ok(sync_dir(&dir)?)
            })();
            if written.is_err() {
                // Not recorded (the upload is refused): no part of the entry stays behind.
                let _ = fs::remove_file(&temp);
                let _ = fs::remove_file(&path);
            }
            written
        })
        .await?;
        self.add_to_count(1);
        Ok(())
    }

    /// Waiting entries, oldest first (job ids are time-ordered UUIDv7). The one listing of the
    /// directory (the publisher's drain): it also sets the count, which other instances sharing
    /// the journal may have changed.
    pub(crate) async fn pending(&self) -> Result<Vec<Entry>, JournalError> {
        let dir = self.dir.clone();
        let stuck = self.stuck.lock().map(|s| s.clone()).unwrap_or_default();
        let entries = blocking(move || {
            let mut entries: Vec<Entry> = fs::read_dir(&dir)
                .map_err(io_err("list", &dir))?
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "json") && !stuck.contains(p))
                .map(|path| Entry { path })
                .collect();
            entries.sort();
            Ok(entries)
        })
        .await?;
        self.set_count(entries.len());
        Ok(entries)
    }

    /// The payloads of `entries`, each as read, in one trip to the file I/O threads.
    pub(crate) async fn read(
        &self,
        entries: &[Entry],
    ) -> Result<Vec<io::Result<Vec<u8>>>, JournalError> {
        let paths: Vec<PathBuf> = entries.iter().map(|e| e.path.clone()).collect();
        blocking(move || Ok(paths.iter().map(fs::read).collect())).await
    }

    /// Forgets published entries. Losing an unlink in a crash only means one more publish of
    /// the job, which the worker treats as a repeat.
    pub(crate) async fn remove(&self, entries: Vec<Entry>) -> Result<(), JournalError> {
        let removed = blocking(move || {
            let mut removed = 0;
            for entry in &entries {
                match fs::remove_file(&entry.path) {
                    Ok(()) => removed += 1,
                    Err(e) if e.kind() != io::ErrorKind::NotFound => {
                        return Err(io_err("remove", &entry.path)(e));
                    }
                    // Published by another instance sharing the journal.
                    Err(_) => {}
                }
            }
            Ok(removed)
        })
        .await?;
        self.add_to_count(-removed);
        Ok(())
    }

    /// Moves entries that cannot be read back (with why) to `journal/bad/`, for inspection:
    /// they are not tried again. One that cannot be moved either is left out of the drain.
    pub(crate) async fn set_aside(&self, entries: Vec<(Entry, String)>) {
        let bad = self.dir.join(BAD_DIR);
        let dir = self.dir.clone();
        let outcome = blocking(move || {
            let mut outcomes = Vec::with_capacity(entries.len());
            let created = fs::create_dir_all(&bad).map_err(io_err("create directory", &bad));
            for (entry, reason) in entries {
                let moved = created.as_ref().map_err(|e| e.to_string()).and_then(|()| {
                    let name = entry.path.file_name().unwrap_or_default();
                    fs::rename(&entry.path, bad.join(name)).map_err(|e| e.to_string())
                });
                outcomes.push((entry, reason, moved));
            }
            let _ = sync_dir(&dir).and_then(|()| sync_dir(&bad));
            Ok(outcomes)
        })
        .await;
        let outcomes = match outcome {
            Ok(outcomes) => outcomes,
            Err(e) => {
                error!(error = %e, "could not set unreadable journal entries aside");
                return;
            }
        };
        for (entry, reason, moved) in outcomes {
            metrics::counter!("vmpipe_journal_bad_entries_total").increment(1);
            self.add_to_count(-1);
            match moved {
                Ok(()) => warn!(entry = %entry.path.display(), %reason,
                    "journal entry cannot be read back; moved to journal/bad/"),
                Err(e) => {
                    error!(entry = %entry.path.display(), %reason, error = %e,
                        "journal entry cannot be read back, nor moved aside; left out");
                    if let Ok(mut stuck) = self.stuck.lock() {
                        stuck.insert(entry.path);
                    }
                }
            }
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, JournalError> + Send + 'static,
) -> Result<T, JournalError> {
    vmpipe_common::store::spawn_file_io(f)
        .await
        .map_err(JournalError::Task)?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn entries_survive_reopen_in_order_and_temp_files_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        let first = Uuid::now_v7();
        let second = Uuid::now_v7();
        journal.write(second, b"2".to_vec()).await.unwrap();
        journal.write(first, b"1".to_vec()).await.unwrap();
        fs::write(dir.path().join("x.tmp"), b"half").unwrap();

        let journal = Journal::open(dir.path()).unwrap();
        assert_eq!(journal.count(), 2);
        let pending = journal.pending().await.unwrap();
        assert_eq!(pending, vec![journal.entry(first), journal.entry(second)]);
        let read = journal.read(&pending[..1]).await.unwrap();
        assert_eq!(read[0].as_ref().unwrap(), b"1");
        journal.remove(pending[..1].to_vec()).await.unwrap();
        journal.remove(pending[..1].to_vec()).await.unwrap();
        assert_eq!(journal.count(), 1, "a second removal is not counted");
        assert_eq!(journal.pending().await.unwrap().len(), 1);
        assert!(!dir.path().join("x.tmp").exists());
        journal.write(Uuid::now_v7(), b"3".to_vec()).await.unwrap();
        assert_eq!(journal.count(), 2);
    }

    #[tokio::test]
    async fn unreadable_entries_are_set_aside_once() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        journal.write(Uuid::now_v7(), b"ok".to_vec()).await.unwrap();
        fs::create_dir(dir.path().join("0.json")).unwrap();
        let pending = journal.pending().await.unwrap();
        assert_eq!(journal.count(), 2);
        let read = journal.read(&pending).await.unwrap();
        assert!(read[0].is_err(), "a directory cannot be read");
        journal
            .set_aside(vec![(pending[0].clone(), "unreadable".into())])
            .await;
        assert!(dir.path().join("bad/0.json").is_dir());
        assert_eq!(journal.count(), 1);
        assert_eq!(journal.pending().await.unwrap().len(), 1);
    }
}
