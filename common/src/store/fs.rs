//! [`FsStore`]: voicemail files on the local file system, with the durability a 201 promises.

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::stream::{self, StreamExt};

use super::file_io::blocking;
use super::fs_writer::FsWriter;
use super::nofollow;
use super::{BoxFuture, ObjectWriter, Storage, StorageError, StoredObject};
use crate::key::StorageKey;

/// Subdirectories of `tmp/` (named 0 to f) that uploads in progress are spread over.
const TMP_SHARDS: usize = 16;
/// Files up to this size are read in one go when fetched.
const SMALL_FILE: u64 = 1024 * 1024;

/// Local file-system storage with the durability a 201 promises: each file is written to
/// `tmp/`, fsynced, renamed into place, and its directory fsynced.
#[derive(Clone, Debug)]
pub struct FsStore {
    voicemails: PathBuf,
    tmp: PathBuf,
    /// Uploads in progress (writers not yet committed or dropped).
    writers: Arc<AtomicUsize>,
}

impl FsStore {
    pub fn open(root: &Path) -> Result<Self, StorageError> {
        let store = Self::open_existing(root);
        let shards = (0..TMP_SHARDS).map(|n| store.tmp.join(format!("{n:x}")));
        for dir in [store.voicemails.clone()].into_iter().chain(shards) {
            fs::create_dir_all(&dir).map_err(|e| StorageError::io("create directory", &dir, e))?;
        }
        Ok(store)
    }

    /// The store at `root` as it is, creating nothing: for commands that only read or delete
    /// (a store that does not exist reads as empty).
    pub fn open_existing(root: &Path) -> Self {
        Self {
            voicemails: root.join("voicemails"),
            tmp: root.join("tmp"),
            writers: Arc::default(),
        }
    }

    /// The directory holding the voicemail files.
    pub fn voicemail_root(&self) -> &Path {
        &self.voicemails
    }

    pub fn path_of(&self, key: &StorageKey) -> PathBuf {
        self.voicemails.join(key.relative_path())
    }

    /// Removes uploads that a crash left unfinished. Only files older than `min_age` go, so
    /// that another process's upload in progress is left alone.
    fn remove_stale_files(&self, min_age: Duration) -> Result<usize, StorageError> {
        let now = SystemTime::now();
        let mut removed = 0;
        let shards = fs::read_dir(&self.tmp).map_err(|e| StorageError::io("list", &self.tmp, e))?;
        // Files of the shards, and any directly in tmp/ (left by an older version).
        let entries = shards.flatten().flat_map(|entry| {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                fs::read_dir(entry.path())
                    .into_iter()
                    .flatten()
                    .flatten()
                    .collect()
            } else {
                vec![entry]
            }
        });
        for entry in entries {
            // The later of its modification and its change: a `.prev` hard link of an old
            // voicemail keeps the file's old mtime, but its ctime is when it was linked (an
            // upload of another ingest sharing this storage may still need it).
            let old = entry.metadata().is_ok_and(|m| {
                let changed =
                    UNIX_EPOCH + Duration::from_secs(u64::try_from(m.ctime()).unwrap_or_default());
                let touched = m
                    .modified()
                    .map_or(changed, |modified| modified.max(changed));
                now.duration_since(touched).unwrap_or_default() >= min_age
            });
            if old && fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }
}

impl Storage for FsStore {
    fn create(&self, key: &StorageKey) -> Box<dyn ObjectWriter> {
        let name = uuid::Uuid::new_v4().simple().to_string();
        // Spread over shards: uploads creating files at once would otherwise all wait for the
        // one tmp/ directory's lock.
        let temp_path = self.tmp.join(&name[..1]).join(format!("{name}.part"));
        Box::new(FsWriter::new(
            self.writers.clone(),
            temp_path,
            key.relative_path(),
            self.voicemails.clone(),
        ))
    }

    fn open(&self, key: &StorageKey) -> BoxFuture<'_, Result<Option<StoredObject>, StorageError>> {
        let (root, relative) = (self.voicemails.clone(), key.relative_path());
        Box::pin(async move {
            blocking(move || open_regular_file(&root, &relative))
                .await?
                .map_or(Ok(None), |(file, size, head)| {
                    let body = match head {
                        Some(bytes) => stream::once(async move { Ok(bytes) }).boxed(),
                        None => tokio_util::io::ReaderStream::with_capacity(
                            tokio::fs::File::from_std(file),
                            64 * 1024,
                        )
                        .boxed(),
                    };
                    Ok(Some(StoredObject { size, body }))
                })
        })
    }

    fn open_range(
        &self,
        key: &StorageKey,
        range: std::ops::Range<u64>,
    ) -> BoxFuture<'_, Result<Option<StoredObject>, StorageError>> {
        let (root, relative) = (self.voicemails.clone(), key.relative_path());
        Box::pin(async move {
            let path = root.join(&relative);
            let Some(mut file) = blocking(move || nofollow::open_file(&root, &relative)).await?
            else {
                return Ok(None);
            };
            let len = range.end.saturating_sub(range.start);
            if range.start > 0 {
                use std::io::Seek as _;
                file.seek(io::SeekFrom::Start(range.start))
                    .map_err(|e| StorageError::io("seek", &path, e))?;
            }
            use tokio::io::AsyncReadExt as _;
            let reader = tokio::fs::File::from_std(file).take(len);
            let body = tokio_util::io::ReaderStream::with_capacity(reader, 64 * 1024).boxed();
            Ok(Some(StoredObject { size: len, body }))
        })
    }

    fn check_writable(&self) -> BoxFuture<'_, Result<(), StorageError>> {
        let probe = self
            .tmp
            .join(format!("{}.health", uuid::Uuid::new_v4().simple()));
        Box::pin(blocking(move || {
            let written = fs::write(&probe, b"ok");
            let _ = fs::remove_file(&probe);
            written.map_err(|e| StorageError::io("write", &probe, e))
        }))
    }

    fn find_prefix(
        &self,
        segments: Vec<String>,
    ) -> BoxFuture<'_, Result<Option<StorageKey>, StorageError>> {
        let root = self.voicemails.clone();
        Box::pin(blocking(move || {
            for end in 1..=segments.len() {
                let Ok(key) = StorageKey::from_segments(segments[..end].iter().cloned()) else {
                    return Ok(None);
                };
                let path = root.join(key.relative_path());
                match fs::symlink_metadata(&path) {
                    Ok(meta) if meta.is_file() => return Ok(Some(key)),
                    Ok(meta) if meta.is_dir() => continue,
                    Ok(_) => return Ok(None),
                    Err(e) if is_absent(&e) => return Ok(None),
                    Err(e) => return Err(StorageError::io("stat", &path, e)),
                }
            }
            Ok(None)
        }))
    }

    fn stat(
        &self,
        key: &StorageKey,
    ) -> BoxFuture<'_, Result<Option<super::ObjectInfo>, StorageError>> {
        self.stat_file(key)
    }

    fn list(&self) -> futures_util::stream::BoxStream<'_, Result<super::Listed, StorageError>> {
        self.list_files()
    }

    fn remove(&self, key: &StorageKey) -> BoxFuture<'_, Result<super::Removed, StorageError>> {
        self.remove_file(key)
    }

    fn local_copy(
        &self,
        key: &StorageKey,
    ) -> BoxFuture<'_, Result<Option<super::LocalFile>, StorageError>> {
        // The file is already local: no copy, so nothing to bound.
        let path = self.path_of(key);
        let stat = self.stat_file(key);
        Box::pin(async move {
            Ok(stat
                .await?
                .map(|info| super::LocalFile::stored(path, info.size)))
        })
    }

    fn remove_stale_temp_files(
        &self,
        min_age: Duration,
    ) -> BoxFuture<'_, Result<usize, StorageError>> {
        let store = self.clone();
        Box::pin(blocking(move || store.remove_stale_files(min_age)))
    }

    fn location(&self) -> String {
        self.voicemails
            .parent()
            .unwrap_or(&self.voicemails)
            .display()
            .to_string()
    }
}

/// Opens `relative` below `root` if it is a regular file (never a directory, and never through
/// a symlink, see nofollow.rs); a small file is read whole so that serving it needs no further
/// disk round trip.
#[allow(clippy::type_complexity)]
fn open_regular_file(
    root: &Path,
    relative: &Path,
) -> Result<Option<(File, u64, Option<Bytes>)>, StorageError> {
    let path = &root.join(relative);
    let Some(mut file) = nofollow::open_file(root, relative)? else {
        return Ok(None);
    };
    let size = file
        .metadata()
        .map_err(|e| StorageError::io("stat", path, e))?
        .len();
    if size > SMALL_FILE {
        return Ok(Some((file, size, None)));
    }
    let mut bytes = Vec::with_capacity(size as usize);
    file.read_to_end(&mut bytes)
        .map_err(|e| StorageError::io("read", path, e))?;
    let size = bytes.len() as u64;
    Ok(Some((file, size, Some(Bytes::from(bytes)))))
}

fn is_absent(e: &io::Error) -> bool {
    // ENOTDIR: a segment of the path is a file, so nothing is stored below it.
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(20)
}

#[cfg(test)]
mod tests {
    use super::super::fs_writer::{MIN_WRITE_CHUNK, WRITE_CHUNK, piece_size};
    use super::super::{Committed, Revoked};
    use super::*;
    use bytes::Bytes;
    use futures_util::StreamExt;
    use std::sync::atomic::Ordering;

    /// Files below tmp/ (in its shards).
    fn temp_files(root: &Path) -> usize {
        fs::read_dir(root.join("tmp"))
            .unwrap()
            .flatten()
            .map(|shard| fs::read_dir(shard.path()).map_or(0, |d| d.count()))
            .sum()
    }
    use crate::key::decode_path;

    fn key(raw: &str) -> StorageKey {
        StorageKey::from_segments(decode_path(raw).unwrap()).unwrap()
    }

    async fn read_all(store: &FsStore, k: &StorageKey) -> Option<Vec<u8>> {
        let object = store.open(k).await.unwrap()?;
        let mut out = Vec::new();
        let mut body = object.body;
        while let Some(chunk) = body.next().await {
            out.extend_from_slice(&chunk.unwrap());
        }
        assert_eq!(out.len() as u64, object.size);
        Some(out)
    }

    #[tokio::test]
    async fn write_commit_read_and_replace() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path()).unwrap();
        let k = key("acct/doc/a.mp3");
        let big: Vec<u8> = (0..3 * WRITE_CHUNK + 17).map(|i| (i % 251) as u8).collect();
        let mut w = store.create(&k);
        for piece in big.chunks(10_000) {
            w.write(Bytes::copy_from_slice(piece)).await.unwrap();
        }
        assert_eq!(read_all(&store, &k).await, None, "invisible before commit");
        w.commit().await.unwrap();
        assert_eq!(read_all(&store, &k).await.unwrap(), big);

        let mut w = store.create(&k);
        w.write(Bytes::from_static(b"second")).await.unwrap();
        w.commit().await.unwrap();
        assert_eq!(read_all(&store, &k).await.unwrap(), b"second");
        assert_eq!(temp_files(dir.path()), 0);
    }

    async fn commit(store: &FsStore, k: &StorageKey, data: &'static [u8]) -> Box<dyn Committed> {
        let mut w = store.create(k);
        w.write(Bytes::from_static(data)).await.unwrap();
        w.commit().await.unwrap()
    }

    #[tokio::test]
    async fn a_revoked_commit_leaves_the_key_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path()).unwrap();
        let k = key("acct/doc/msg.mp3");
        // A new key: taken back, nothing is stored.
        let first = commit(&store, &k, b"first").await;
        assert_eq!(read_all(&store, &k).await.unwrap(), b"first");
        assert_eq!(first.revoke().await.unwrap(), Revoked::Removed);
        assert_eq!(read_all(&store, &k).await, None);
        // A replacement taken back: the version it replaced is back.
        commit(&store, &k, b"first").await.keep().await.unwrap();
        let second = commit(&store, &k, b"second").await;
        assert_eq!(read_all(&store, &k).await.unwrap(), b"second");
        assert_eq!(
            temp_files(dir.path()),
            1,
            "the replaced version, kept aside"
        );
        assert_eq!(second.revoke().await.unwrap(), Revoked::Restored);
        assert_eq!(read_all(&store, &k).await.unwrap(), b"first");
        // A commit replaced by a newer upload before it is taken back: the newer one stays.
        let third = commit(&store, &k, b"third").await;
        commit(&store, &k, b"fourth").await.keep().await.unwrap();
        assert_eq!(third.revoke().await.unwrap(), Revoked::Superseded);
        assert_eq!(read_all(&store, &k).await.unwrap(), b"fourth");
        assert_eq!(temp_files(dir.path()), 0, "no link left behind");
    }

    #[tokio::test]
    async fn uploads_share_the_write_buffers() {
        assert_eq!(piece_size(1), WRITE_CHUNK);
        assert_eq!(piece_size(16), WRITE_CHUNK);
        assert_eq!(piece_size(64), 64 * 1024);
        assert_eq!(piece_size(10_000), MIN_WRITE_CHUNK);

        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path()).unwrap();
        let mut writers: Vec<_> = (0..64)
            .map(|n| store.create(&key(&format!("a/{n}.mp3"))))
            .collect();
        assert_eq!(store.writers.load(Ordering::Relaxed), 64);
        // Chunks of any size, across pieces of 64 KiB: all bytes land, in order.
        let body: Vec<u8> = (0..300_000).map(|i| (i % 253) as u8).collect();
        for piece in body.chunks(50_000) {
            writers[0]
                .write(Bytes::copy_from_slice(piece))
                .await
                .unwrap();
        }
        writers.remove(0).commit().await.unwrap();
        writers.truncate(10);
        assert_eq!(store.writers.load(Ordering::Relaxed), 10);
        drop(writers);
        assert_eq!(store.writers.load(Ordering::Relaxed), 0);
        assert_eq!(read_all(&store, &key("a/0.mp3")).await.unwrap(), body);
    }

    #[tokio::test]
    async fn dropped_writer_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path()).unwrap();
        let k = key("acct/doc/a.mp3");
        let mut w = store.create(&k);
        w.write(Bytes::from(vec![7u8; WRITE_CHUNK * 2]))
            .await
            .unwrap();
        assert_eq!(temp_files(dir.path()), 1);
        drop(w);
        assert_eq!(temp_files(dir.path()), 0);
        assert!(!store.path_of(&k).exists());
    }

    #[tokio::test]
    async fn a_key_cannot_be_both_file_and_folder() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path()).unwrap();
        store.create(&key("a/b")).commit().await.unwrap();
        let below_file = store.create(&key("a/b/c")).commit().await;
        assert!(
            matches!(below_file, Err(StorageError::Conflict(_))),
            "{below_file:?}"
        );
        store.create(&key("x/y/z")).commit().await.unwrap();
        let over_folder = store.create(&key("x/y")).commit().await;
        assert!(
            matches!(over_folder, Err(StorageError::Conflict(_))),
            "{over_folder:?}"
        );
        assert_eq!(temp_files(dir.path()), 0);
    }

    #[tokio::test]
    async fn links_below_the_root_are_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("f.mp3"), b"outside").unwrap();
        let store = FsStore::open(dir.path()).unwrap();
        std::os::unix::fs::symlink(outside.path(), store.voicemails.join("acct")).unwrap();
        let through = store.create(&key("acct/doc/x.mp3")).commit().await;
        assert!(
            matches!(through, Err(StorageError::Symlink(_))),
            "{through:?}"
        );
        assert_eq!(read_all(&store, &key("acct/f.mp3")).await, None);
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 1);
        assert_eq!(temp_files(dir.path()), 0);
    }

    #[tokio::test]
    async fn find_prefix_resolves_doubled_paths() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path()).unwrap();
        let k = key("acct/doc/a.mp3");
        let w = store.create(&k);
        w.commit().await.unwrap();
        let doubled = decode_path("acct/doc/a.mp3/acct/doc/a.mp3").unwrap();
        assert_eq!(store.find_prefix(doubled).await.unwrap(), Some(k.clone()));
        let changed_plan = decode_path("acct/doc/a.mp3/other/layout").unwrap();
        assert_eq!(
            store.find_prefix(changed_plan).await.unwrap(),
            Some(k.clone())
        );
        let exact = decode_path("acct/doc/a.mp3").unwrap();
        assert_eq!(store.find_prefix(exact).await.unwrap(), Some(k));
        let dir_only = decode_path("acct/doc").unwrap();
        assert_eq!(store.find_prefix(dir_only).await.unwrap(), None);
        let unknown = decode_path("acct/nope/a.mp3").unwrap();
        assert_eq!(store.find_prefix(unknown).await.unwrap(), None);
    }
}

#[cfg(test)]
mod stale_tests {
    use super::*;

    /// A `.prev` link made a moment ago to an old voicemail keeps the file's old mtime; the
    /// sweep of a starting ingest must leave it to the upload that may still put it back.
    #[test]
    fn a_fresh_link_to_an_old_file_is_not_stale() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path()).unwrap();
        let old = dir.path().join("old.mp3");
        fs::write(&old, b"old").unwrap();
        File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(SystemTime::now() - Duration::from_secs(7200))
            .unwrap();
        let shard = dir.path().join("tmp/0");
        fs::create_dir_all(&shard).unwrap();
        let link = shard.join("upload.prev");
        fs::hard_link(&old, &link).unwrap();
        let stale = shard.join("abandoned.part");
        fs::write(&stale, b"x").unwrap();
        File::options()
            .write(true)
            .open(&stale)
            .unwrap()
            .set_modified(SystemTime::now() - Duration::from_secs(7200))
            .unwrap();

        let removed = store.remove_stale_files(Duration::from_secs(3600)).unwrap();
        assert!(link.exists(), "the fresh link stays");
        // The abandoned file's ctime is now too (set_modified changes it): nothing old here.
        assert_eq!(removed, 0);
        assert!(stale.exists());
        assert!(store.remove_stale_files(Duration::ZERO).unwrap() >= 2);
    }
}
