//! The local job journal: jobs that RabbitMQ has not confirmed yet, one file each, kept until
//! they are published. This is what lets ingest answer 201 while the broker is away: the job is
//! as durable as the voicemail itself, and is published when the broker is back, also after a
//! restart.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use uuid::Uuid;
use vmpipe_common::store::sync_dir;

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
}

impl Journal {
    /// Opens (creating) the journal directory and drops half-written entries left by a crash:
    /// their upload never got its 201, so KAZOO retries it.
    pub(crate) fn open(dir: &Path) -> Result<Self, JournalError> {
        fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
        for entry in fs::read_dir(dir).map_err(io_err("list", dir))?.flatten() {
            if entry.path().extension().is_some_and(|e| e == "tmp") {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    /// Durably records a job (written, fsynced, renamed, directory fsynced).
    pub(crate) async fn write(&self, job_id: Uuid, payload: Vec<u8>) -> Result<(), JournalError> {
        let dir = self.dir.clone();
        blocking(move || {
            let temp = dir.join(format!("{}.tmp", job_id.simple()));
            let path = dir.join(format!("{}.json", job_id.simple()));
            let mut file = fs::File::create(&temp).map_err(io_err("create", &temp))?;
            file.write_all(&payload).map_err(io_err("write", &temp))?;
            file.sync_data().map_err(io_err("fsync", &temp))?;
            fs::rename(&temp, &path).map_err(io_err("rename", &path))?;
            Ok(sync_dir(&dir)?)
        })
        .await
    }

    /// Waiting entries, oldest first (job ids are time-ordered UUIDv7).
    pub(crate) async fn pending(&self) -> Result<Vec<Entry>, JournalError> {
        let dir = self.dir.clone();
        blocking(move || {
            let mut entries: Vec<Entry> = fs::read_dir(&dir)
                .map_err(io_err("list", &dir))?
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "json"))
                .map(|path| Entry { path })
                .collect();
            entries.sort();
            Ok(entries)
        })
        .await
    }

    /// The payloads of `entries`, in one trip to the file I/O threads.
    pub(crate) async fn read(&self, entries: &[Entry]) -> Result<Vec<Vec<u8>>, JournalError> {
        let paths: Vec<PathBuf> = entries.iter().map(|e| e.path.clone()).collect();
        blocking(move || {
            paths
                .iter()
                .map(|path| fs::read(path).map_err(io_err("read", path)))
                .collect()
        })
        .await
    }

    /// Forgets published entries. Losing an unlink in a crash only means one more publish of
    /// the job, which the worker treats as a repeat.
    pub(crate) async fn remove(&self, entries: Vec<Entry>) -> Result<(), JournalError> {
        blocking(move || {
            for entry in &entries {
                match fs::remove_file(&entry.path) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => {
                        return Err(io_err("remove", &entry.path)(e));
                    }
                    _ => {}
                }
            }
            Ok(())
        })
        .await
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
        let pending = journal.pending().await.unwrap();
        assert_eq!(pending.len(), 2);
        assert_eq!(journal.read(&pending[..1]).await.unwrap(), [b"1".to_vec()]);
        journal.remove(pending[..1].to_vec()).await.unwrap();
        journal.remove(pending[..1].to_vec()).await.unwrap();
        assert_eq!(journal.pending().await.unwrap().len(), 1);
        assert!(!dir.path().join("x.tmp").exists());
    }
}
