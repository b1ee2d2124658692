//! Where voicemail files live.
//!
//! [`Storage`] is the one abstraction both services use; [`FsStore`] (the local file system)
//! is the default. An object store (S3, via the `object_store` crate) fits the same trait:
//! `create` maps to a multipart upload that becomes visible on `commit`.
//!
//! Layout of a storage directory:
//! - `voicemails/` — one file per storage key, at the key's canonical path. Nothing else is
//!   ever written here, so every regular file in it is a stored voicemail.
//! - `tmp/` — uploads in progress; renamed into `voicemails/` once complete and fsynced.
//! - `journal/` — ingest's jobs waiting for RabbitMQ (see ingest).

use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::stream::{self, BoxStream, StreamExt};

use crate::key::StorageKey;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Uploads are written to disk once this much has arrived: a voicemail-sized upload costs one
/// trip to the blocking pool (each trip is two context switches, and ingest is CPU-bound under
/// load), and memory stays flat whatever the body size.
const WRITE_CHUNK: usize = 256 * 1024;
/// What the write buffers of all uploads in progress may hold together: with more than 16
/// uploads at once each gets a share of this, down to [`MIN_WRITE_CHUNK`], so that memory
/// stays flat in the number of uploads too.
const WRITE_BUFFERS: usize = 4 * 1024 * 1024;
const MIN_WRITE_CHUNK: usize = 32 * 1024;
/// Subdirectories of `tmp/` (named 0 to f) that uploads in progress are spread over.
const TMP_SHARDS: usize = 16;
/// Files up to this size are read in one go when fetched.
const SMALL_FILE: u64 = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("storage is full: {0}")]
    Full(#[source] io::Error),
    #[error("storage {op} failed for {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0} is below a stored file, or is a directory of stored files")]
    Conflict(String),
    #[error("storage task failed: {0}")]
    Task(String),
}

impl StorageError {
    fn io(op: &'static str, path: &Path, source: io::Error) -> Self {
        // ENOSPC and EDQUOT: tell the client to come back later rather than "broken".
        if matches!(source.raw_os_error(), Some(28 | 122)) {
            return StorageError::Full(source);
        }
        StorageError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// A stored file being read.
pub struct StoredObject {
    pub size: u64,
    pub body: BoxStream<'static, io::Result<Bytes>>,
}

pub trait Storage: Send + Sync + 'static {
    /// Starts writing `key`. Nothing is visible under the key until [`ObjectWriter::commit`]
    /// returns; dropping the writer discards what was written.
    fn create(&self, key: &StorageKey) -> Box<dyn ObjectWriter>;

    /// Opens a stored file, or `None` when nothing is stored under `key`.
    fn open(&self, key: &StorageKey) -> BoxFuture<'_, Result<Option<StoredObject>, StorageError>>;

    /// Whether a file can be written now (readiness).
    fn check_writable(&self) -> BoxFuture<'_, Result<(), StorageError>>;

    /// The stored key made of the first segments of `segments`, if any. (At most one can
    /// exist: a stored file cannot have anything stored below it.)
    fn find_prefix(
        &self,
        segments: Vec<String>,
    ) -> BoxFuture<'_, Result<Option<StorageKey>, StorageError>>;
}

pub trait ObjectWriter: Send {
    fn write(&mut self, chunk: Bytes) -> BoxFuture<'_, Result<(), StorageError>>;

    /// Makes the file durable and visible under its key, replacing any previous version.
    fn commit(self: Box<Self>) -> BoxFuture<'static, Result<(), StorageError>>;
}

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
        let store = Self {
            voicemails: root.join("voicemails"),
            tmp: root.join("tmp"),
            writers: Arc::default(),
        };
        let shards = (0..TMP_SHARDS).map(|n| store.tmp.join(format!("{n:x}")));
        for dir in [store.voicemails.clone()].into_iter().chain(shards) {
            fs::create_dir_all(&dir).map_err(|e| StorageError::io("create directory", &dir, e))?;
        }
        Ok(store)
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
    pub fn remove_stale_temp_files(&self, min_age: Duration) -> Result<usize, StorageError> {
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
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| now.duration_since(t).unwrap_or_default() >= min_age);
            if old && fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }
}

impl Storage for FsStore {
    fn create(&self, key: &StorageKey) -> Box<dyn ObjectWriter> {
        self.writers.fetch_add(1, Ordering::Relaxed);
        Box::new(FsWriter {
            writers: self.writers.clone(),
            temp_path: {
                let name = uuid::Uuid::new_v4().simple().to_string();
                // Spread over shards: uploads creating files at once would otherwise all wait
                // for the one tmp/ directory's lock.
                self.tmp.join(&name[..1]).join(format!("{name}.part"))
            },
            final_path: self.path_of(key),
            voicemail_root: self.voicemails.clone(),
            file: None,
            buffer: Vec::new(),
            committed: false,
        })
    }

    fn open(&self, key: &StorageKey) -> BoxFuture<'_, Result<Option<StoredObject>, StorageError>> {
        let path = self.path_of(key);
        Box::pin(async move {
            blocking(move || open_regular_file(&path)).await?.map_or(
                Ok(None),
                |(file, size, head)| {
                    let body = match head {
                        Some(bytes) => stream::once(async move { Ok(bytes) }).boxed(),
                        None => tokio_util::io::ReaderStream::with_capacity(
                            tokio::fs::File::from_std(file),
                            64 * 1024,
                        )
                        .boxed(),
                    };
                    Ok(Some(StoredObject { size, body }))
                },
            )
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
}

/// Opens `path` if it is a regular file (never a directory or a symlink); a small file is read
/// whole so that serving it needs no further disk round trip.
#[allow(clippy::type_complexity)]
fn open_regular_file(path: &Path) -> Result<Option<(File, u64, Option<Bytes>)>, StorageError> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_file() => {}
        Ok(_) => return Ok(None),
        Err(e) if is_absent(&e) => return Ok(None),
        Err(e) => return Err(StorageError::io("stat", path, e)),
    }
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if is_absent(&e) => return Ok(None),
        Err(e) => return Err(StorageError::io("open", path, e)),
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

/// Threads for file-system calls, shared by the whole process. Bounded, because each thread
/// costs memory (its stack, its allocator arena), and tokio's own blocking pool, one per
/// runtime (actix-web runs one per worker thread), grows to a thread per upload waiting on
/// the disk: 64 concurrent uploads made 77 threads. Writes queue here when the disk is slow.
const FILE_IO_THREADS: usize = 16;

static FILE_IO: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    // Only its blocking pool is used; a current-thread runtime needs no thread of its own.
    tokio::runtime::Builder::new_current_thread()
        .max_blocking_threads(FILE_IO_THREADS)
        .thread_name("vmpipe-file-io")
        .build()
        .expect("cannot start the file I/O threads")
});

/// Runs blocking file-system work on the shared file I/O threads.
pub fn spawn_file_io<T, F>(f: F) -> tokio::task::JoinHandle<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    FILE_IO.spawn_blocking(f)
}

async fn blocking<T, F>(f: F) -> Result<T, StorageError>
where
    F: FnOnce() -> Result<T, StorageError> + Send + 'static,
    T: Send + 'static,
{
    spawn_file_io(f)
        .await
        .map_err(|e| StorageError::Task(e.to_string()))?
}

/// Each upload's share of [`WRITE_BUFFERS`] when `writers` are in progress.
fn piece_size(writers: usize) -> usize {
    (WRITE_BUFFERS / writers.max(1)).clamp(MIN_WRITE_CHUNK, WRITE_CHUNK)
}

struct FsWriter {
    writers: Arc<AtomicUsize>,
    temp_path: PathBuf,
    final_path: PathBuf,
    voicemail_root: PathBuf,
    /// Created on the first flush, so a small upload costs one trip to the blocking pool.
    file: Option<File>,
    /// Received bytes not yet written. Copied out of the chunks: a chunk can be a slice of a
    /// much larger buffer (the multipart parser's), which holding it would keep alive.
    buffer: Vec<u8>,
    committed: bool,
}

impl FsWriter {
    /// How much to gather before a write: this upload's share of [`WRITE_BUFFERS`].
    fn piece_size(&self) -> usize {
        piece_size(self.writers.load(Ordering::Relaxed))
    }

    /// Writes out what is gathered, on the blocking pool.
    async fn flush(&mut self) -> Result<(), StorageError> {
        let (file, mut buffer, temp_path) = self.take_state();
        let (file, buffer) = blocking(move || {
            let file = write_out(file, &buffer, &temp_path)?;
            buffer.clear();
            Ok((file, buffer))
        })
        .await?;
        self.file = Some(file);
        // Kept for the next piece unless more uploads have started meanwhile.
        if buffer.capacity() <= self.piece_size() {
            self.buffer = buffer;
        }
        Ok(())
    }

    fn take_state(&mut self) -> (Option<File>, Vec<u8>, PathBuf) {
        (
            self.file.take(),
            std::mem::take(&mut self.buffer),
            self.temp_path.clone(),
        )
    }
}

fn write_out(file: Option<File>, buffer: &[u8], temp_path: &Path) -> Result<File, StorageError> {
    let mut file = match file {
        Some(file) => file,
        None => {
            let create = || {
                OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(temp_path)
            };
            match create() {
                // Its tmp/ shard is gone (tmp/ emptied by hand): made again.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    if let Some(shard) = temp_path.parent() {
                        let _ = fs::create_dir_all(shard);
                    }
                    create()
                }
                other => other,
            }
            .map_err(|e| StorageError::io("create", temp_path, e))?
        }
    };
    file.write_all(buffer)
        .map_err(|e| StorageError::io("write", temp_path, e))?;
    Ok(file)
}

impl ObjectWriter for FsWriter {
    fn write(&mut self, chunk: Bytes) -> BoxFuture<'_, Result<(), StorageError>> {
        Box::pin(async move {
            // A chunk that does not fit: what is gathered goes first, rather than the buffer
            // growing (by doubling) past its share.
            if !self.buffer.is_empty() && self.buffer.len() + chunk.len() > self.buffer.capacity() {
                self.flush().await?;
            }
            let piece = self.piece_size();
            if self.buffer.capacity() == 0 {
                // Exactly one piece's worth: growing by doubling would hold twice that.
                self.buffer.reserve_exact(piece.max(chunk.len()));
            }
            self.buffer.extend_from_slice(&chunk);
            if self.buffer.len() >= piece {
                self.flush().await?;
            }
            Ok(())
        })
    }

    fn commit(mut self: Box<Self>) -> BoxFuture<'static, Result<(), StorageError>> {
        Box::pin(async move {
            let (file, buffer, temp_path) = self.take_state();
            let final_path = self.final_path.clone();
            let root = self.voicemail_root.clone();
            blocking(move || {
                let file = write_out(file, &buffer, &temp_path)?;
                file.sync_data()
                    .map_err(|e| StorageError::io("fsync", &temp_path, e))?;
                drop(file);
                let parent = final_path.parent().unwrap_or(&root);
                create_dirs_durably(&root, parent)?;
                fs::rename(&temp_path, &final_path).map_err(|e| {
                    // ENOTDIR, EISDIR: one key cannot be both a file and a folder of files.
                    if matches!(e.raw_os_error(), Some(20 | 21)) {
                        StorageError::Conflict(final_path.display().to_string())
                    } else {
                        StorageError::io("rename", &final_path, e)
                    }
                })?;
                sync_dir(parent)
            })
            .await?;
            self.committed = true;
            Ok(())
        })
    }
}

impl Drop for FsWriter {
    fn drop(&mut self) {
        self.writers.fetch_sub(1, Ordering::Relaxed);
        if !self.committed {
            // Unfinished upload (client gone, error, body too large): leave nothing behind.
            let _ = fs::remove_file(&self.temp_path);
        }
    }
}

/// `create_dir_all`, plus an fsync of the parent of every directory it created, so that the
/// new directory entries survive a power loss along with the file.
fn create_dirs_durably(root: &Path, dir: &Path) -> Result<(), StorageError> {
    if dir == root || dir.is_dir() {
        return Ok(());
    }
    let parent = dir.parent().unwrap_or(root);
    create_dirs_durably(root, parent)?;
    match fs::create_dir(dir) {
        Ok(()) => sync_dir(parent),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists || e.raw_os_error() == Some(20) => {
            Err(StorageError::Conflict(dir.display().to_string()))
        }
        Err(e) => Err(StorageError::io("create directory", dir, e)),
    }
}

pub fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StorageError::io("fsync directory", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

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
