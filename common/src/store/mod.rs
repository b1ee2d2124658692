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

mod file_io;
mod fs;
mod fs_writer;
mod listing;
mod local_copy;
mod nofollow;
mod placed;
mod remove;
mod s3;

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;

use bytes::Bytes;
use futures_util::stream::BoxStream;

use crate::key::StorageKey;
use crate::settings::StorageKind;

pub use file_io::spawn_file_io;
pub use fs::FsStore;
pub use fs_writer::sync_dir;
pub use listing::{Listed, ObjectInfo};
pub use local_copy::LocalFile;
pub use remove::Removed;
pub use s3::S3Store;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

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
    #[error(
        "{0} is a symbolic link: nothing below voicemails/ is ever written or read through one"
    )]
    Symlink(PathBuf),
    #[error("storage task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// The object store did not answer, or answered with an error that may pass (a 5xx, a
    /// timeout, a refused connection): try again later.
    #[error("object store unavailable: {op} {key}: {source}")]
    Unavailable {
        op: &'static str,
        key: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The object store refused the request for a reason that will not pass by itself (access
    /// denied, a bucket that does not exist): the settings need fixing.
    #[error("object store refused {op} {key}: {source}")]
    Refused {
        op: &'static str,
        key: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{key} is {size} bytes, more than the {max} a local copy may be")]
    TooLarge { key: String, size: u64, max: u64 },
}

/// Whether `e` says the file system is full (ENOSPC) or a quota is used up (EDQUOT).
pub fn is_storage_full(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(28 | 122))
}

impl StorageError {
    pub(crate) fn io(op: &'static str, path: &Path, source: io::Error) -> Self {
        // ENOSPC and EDQUOT: tell the client to come back later rather than "broken".
        if is_storage_full(&source) {
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

    /// Bytes `range` of the file stored under `key` (a range within its size, as
    /// [`Storage::stat`] gave it: a player seeking), or `None` when nothing is stored there.
    /// The [`StoredObject`]'s size is the range's.
    fn open_range(
        &self,
        key: &StorageKey,
        range: std::ops::Range<u64>,
    ) -> BoxFuture<'_, Result<Option<StoredObject>, StorageError>>;

    /// Whether a file can be written now (readiness).
    fn check_writable(&self) -> BoxFuture<'_, Result<(), StorageError>>;

    /// The stored key made of the first segments of `segments`, if any. (At most one can
    /// exist: a stored file cannot have anything stored below it.)
    fn find_prefix(
        &self,
        segments: Vec<String>,
    ) -> BoxFuture<'_, Result<Option<StorageKey>, StorageError>>;

    /// The size and time of the file stored under `key`, `None` when there is none.
    fn stat(&self, key: &StorageKey) -> BoxFuture<'_, Result<Option<ObjectInfo>, StorageError>>;

    /// Every stored file, in no particular order, read a bounded distance ahead.
    fn list(&self) -> BoxStream<'_, Result<Listed, StorageError>>;

    /// Deletes the file stored under `key` (and, on a file system, the directories that
    /// leaves empty); whether there was one.
    fn remove(&self, key: &StorageKey) -> BoxFuture<'_, Result<Removed, StorageError>>;

    /// The file stored under `key` as a local file that the audio probe, the hash and hooks
    /// can open: the file itself on a file system, a temporary copy (deleted when the
    /// [`LocalFile`] is dropped) from an object store, which refuses an object larger than
    /// `VMPIPE_MAX_BODY` (ingest stores none). `None` when nothing is stored under `key`.
    fn local_copy(
        &self,
        key: &StorageKey,
    ) -> BoxFuture<'_, Result<Option<LocalFile>, StorageError>>;

    /// Where the files are, for reports and logs: a directory, or `s3://bucket/prefix`.
    fn location(&self) -> String;

    /// Removes what a crash left on this machine (unfinished uploads, temporary copies) older
    /// than `min_age`, so that another process's work in progress is left alone; how many.
    fn remove_stale_temp_files(
        &self,
        min_age: std::time::Duration,
    ) -> BoxFuture<'_, Result<usize, StorageError>>;
}

pub trait ObjectWriter: Send {
    fn write(&mut self, chunk: Bytes) -> BoxFuture<'_, Result<(), StorageError>>;

    /// Makes the file durable and visible under its key, replacing any previous version, until
    /// the upload decides with the [`Committed`] it returns.
    fn commit(self: Box<Self>) -> BoxFuture<'static, Result<Box<dyn Committed>, StorageError>>;
}

/// A committed file whose upload is not answered yet: kept once its job is recorded, revoked
/// when it cannot be (a file is never visible under a key without its job). Dropping it keeps
/// the file.
pub trait Committed: Send + std::fmt::Debug {
    /// The file stays.
    fn keep(self: Box<Self>) -> BoxFuture<'static, Result<(), StorageError>>;

    /// Takes the commit back: the version it replaced is put back, or the key is empty again.
    /// A newer version that another upload stored meanwhile is left alone.
    fn revoke(self: Box<Self>) -> BoxFuture<'static, Result<Revoked, StorageError>>;
}

/// What taking a commit back did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Revoked {
    /// The key had no file before: it has none again.
    Removed,
    /// The version it replaced is back.
    Restored,
    /// Another upload of the key replaced it meanwhile (or it is gone): left alone.
    Superseded,
}

impl Revoked {
    /// For logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Revoked::Removed => "removed",
            Revoked::Restored => "restored",
            Revoked::Superseded => "superseded",
        }
    }
}

/// The store the settings choose (`VMPIPE_STORAGE`), opened, its directories created.
pub fn open(settings: &crate::Settings) -> Result<std::sync::Arc<dyn Storage>, StorageError> {
    Ok(match settings.storage {
        StorageKind::Fs => std::sync::Arc::new(FsStore::open(&settings.storage_dir)?),
        StorageKind::S3 => std::sync::Arc::new(S3Store::open(settings)?),
    })
}

/// The store the settings choose, as it is: an admin command creates nothing (a wrong
/// `VMPIPE_STORAGE_DIR` reads as empty, and stays as it was).
pub fn open_existing(
    settings: &crate::Settings,
) -> Result<std::sync::Arc<dyn Storage>, StorageError> {
    Ok(match settings.storage {
        StorageKind::Fs => std::sync::Arc::new(FsStore::open_existing(&settings.storage_dir)),
        StorageKind::S3 => std::sync::Arc::new(S3Store::open(settings)?),
    })
}
