//! What the whole worker asks of a store besides reading and writing a file: a file's size and
//! time, every stored file, and removal. [`FsStore`]'s side of those [`Storage`] methods.

use std::fs;
use std::path::Path;
use std::time::SystemTime;

use futures_util::StreamExt;
use futures_util::stream::BoxStream;

use super::file_io::{blocking, spawn_file_io};
use super::{FsStore, StorageError, nofollow};
use crate::key::StorageKey;

/// Files found but not yet taken by the lister: the walk waits beyond this (memory stays flat
/// in the number of stored files).
const LISTED_AHEAD: usize = 1024;

/// A stored file's size and when it was stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    pub size: u64,
    /// When it was written (the file's modification time, the object's last-modified; now when
    /// the platform cannot tell).
    pub modified: SystemTime,
}

/// A stored file found by [`super::Storage::list`]: its name relative to the store (a storage
/// key's canonical form when it is one of ours; anything else someone put there otherwise).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    pub name: String,
    pub info: ObjectInfo,
}

impl FsStore {
    pub(super) fn stat_blocking(
        &self,
        key: &StorageKey,
    ) -> Result<Option<ObjectInfo>, StorageError> {
        let Some(file) = nofollow::open_file(self.voicemail_root(), &key.relative_path())? else {
            return Ok(None);
        };
        let meta = file
            .metadata()
            .map_err(|e| StorageError::io("stat", &self.path_of(key), e))?;
        Ok(Some(ObjectInfo {
            size: meta.len(),
            modified: meta.modified().unwrap_or_else(|_| SystemTime::now()),
        }))
    }

    pub(super) fn stat_file(
        &self,
        key: &StorageKey,
    ) -> super::BoxFuture<'static, Result<Option<ObjectInfo>, StorageError>> {
        let (store, key) = (self.clone(), key.clone());
        Box::pin(blocking(move || store.stat_blocking(&key)))
    }

    pub(super) fn remove_file(
        &self,
        key: &StorageKey,
    ) -> super::BoxFuture<'static, Result<super::Removed, StorageError>> {
        let (store, key) = (self.clone(), key.clone());
        Box::pin(blocking(move || store.remove_blocking(&key)))
    }

    /// Every regular file below `voicemails/`, walked on the file I/O threads a bounded
    /// distance ahead of the reader; links are never followed. A name that is not UTF-8 is
    /// listed lossily (no key of ours is one, so it never reads as one).
    pub(super) fn list_files(&self) -> BoxStream<'static, Result<Listed, StorageError>> {
        let (sender, receiver) = tokio::sync::mpsc::channel(LISTED_AHEAD);
        let root = self.voicemail_root().to_path_buf();
        spawn_file_io(move || {
            let mut send = |item| sender.blocking_send(item).is_ok();
            // A store nothing was ever written to has no voicemails/ yet.
            if !root.exists() {
                return;
            }
            if let Err(e) = walk(&root, &root, &mut send) {
                send(Err(e));
            }
        });
        stream_of(receiver)
    }
}

fn stream_of(
    receiver: tokio::sync::mpsc::Receiver<Result<Listed, StorageError>>,
) -> BoxStream<'static, Result<Listed, StorageError>> {
    futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|item| (item, receiver))
    })
    .boxed()
}

/// Walks `dir` (below `root`), handing each regular file to `send`; stops early, with
/// `Ok(false)`, once `send` says nobody is listening.
fn walk(
    root: &Path,
    dir: &Path,
    send: &mut dyn FnMut(Result<Listed, StorageError>) -> bool,
) -> Result<bool, StorageError> {
    let entries = fs::read_dir(dir).map_err(|e| StorageError::io("list", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| StorageError::io("list", dir, e))?;
        let path = entry.path();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            if !walk(root, &path, send)? {
                return Ok(false);
            }
        } else if kind.is_file() {
            let Ok(name) = path.strip_prefix(root) else {
                continue;
            };
            let Ok(meta) = entry.metadata() else { continue };
            let listed = Listed {
                name: name.to_string_lossy().into_owned(),
                info: ObjectInfo {
                    size: meta.len(),
                    modified: meta.modified().unwrap_or_else(|_| SystemTime::now()),
                },
            };
            if !send(Ok(listed)) {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::super::Storage;
    use super::*;
    use crate::key::decode_path;

    fn key(raw: &str) -> StorageKey {
        StorageKey::from_segments(decode_path(raw).unwrap()).unwrap()
    }

    #[tokio::test]
    async fn lists_stats_and_removes_through_the_trait() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path()).unwrap();
        let boxed: Box<dyn Storage> = Box::new(store.clone());
        for (raw, body) in [("acct/d1/a.mp3", &b"12345"[..]), ("acct/d2/b.wav", b"123")] {
            let path = store.path_of(&key(raw));
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, body).unwrap();
        }
        // Not ours, but a file all the same: listed by its name.
        fs::write(store.voicemail_root().join("stray.txt"), b"x").unwrap();
        // A link is never followed.
        std::os::unix::fs::symlink(dir.path(), store.voicemail_root().join("loop")).unwrap();
        let mut names: Vec<(String, u64)> = boxed
            .list()
            .map(|listed| {
                let listed = listed.unwrap();
                (listed.name, listed.info.size)
            })
            .collect()
            .await;
        names.sort();
        assert_eq!(
            names,
            [
                ("acct/d1/a.mp3".to_owned(), 5),
                ("acct/d2/b.wav".to_owned(), 3),
                ("stray.txt".to_owned(), 1)
            ]
        );
        let info = boxed.stat(&key("acct/d1/a.mp3")).await.unwrap().unwrap();
        assert_eq!(info.size, 5);
        assert!(info.modified > SystemTime::UNIX_EPOCH);
        assert_eq!(boxed.stat(&key("acct/d9/none.mp3")).await.unwrap(), None);
        assert!(boxed.remove(&key("acct/d1/a.mp3")).await.unwrap().file);
        assert!(!boxed.remove(&key("acct/d1/a.mp3")).await.unwrap().file);
        assert_eq!(boxed.stat(&key("acct/d1/a.mp3")).await.unwrap(), None);
        assert!(
            !store.voicemail_root().join("acct/d1").exists(),
            "emptied directory removed"
        );
    }

    #[tokio::test]
    async fn a_listing_longer_than_its_read_ahead_streams_whole_or_in_part() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path()).unwrap();
        let many = LISTED_AHEAD * 3;
        let folder = store.voicemail_root().join("acct/doc");
        fs::create_dir_all(&folder).unwrap();
        for i in 0..many {
            fs::write(folder.join(format!("{i}.mp3")), b"x").unwrap();
        }
        let first: Vec<_> = store.list_files().take(10).collect().await;
        assert_eq!(first.len(), 10);
        let all = store.list_files().count().await;
        assert_eq!(all, many);
    }
}
