//! The worker's local copies of objects: downloaded to `{storage_dir}/tmp/copies/`, at most
//! `VMPIPE_MAX_BODY` each, deleted when dropped (and, after a crash, at the next start).

use std::path::Path as FsPath;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use object_store::ObjectStoreExt;
use object_store::path::Path;
use tokio::io::AsyncWriteExt;

use super::{S3Store, failure};
use crate::store::{LocalFile, StorageError};

/// Downloads `path` to a temporary file; `None` when there is no such object.
pub(super) async fn local_copy(
    store: &S3Store,
    path: &Path,
) -> Result<Option<LocalFile>, StorageError> {
    let inner = &store.inner;
    let got = match inner.store.get(path).await {
        Ok(got) => got,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(failure("GET", path, e)),
    };
    let too_large = |size| StorageError::TooLarge {
        key: path.to_string(),
        size,
        max: inner.max_copy,
    };
    if got.meta.size > inner.max_copy {
        return Err(too_large(got.meta.size));
    }
    let dir = inner.copies.clone();
    let temp = crate::store::file_io::blocking(move || {
        tempfile::Builder::new()
            .prefix("copy-")
            .tempfile_in(&dir)
            .map_err(|e| StorageError::io("create", &dir, e))
    })
    .await?;
    let (file, temp) = temp.into_parts();
    let local = |e| StorageError::io("write", &temp, e);
    let mut file = tokio::fs::File::from_std(file);
    let mut written = 0u64;
    let mut body = got.into_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| failure("GET", path, e))?;
        written += chunk.len() as u64;
        // The object grew under us: the bound holds all the same.
        if written > inner.max_copy {
            return Err(too_large(written));
        }
        file.write_all(&chunk).await.map_err(local)?;
    }
    file.flush().await.map_err(local)?;
    Ok(Some(LocalFile::copy(temp, written)))
}

/// Deletes copies older than `min_age` (a crashed worker's); how many.
pub(super) fn remove_stale(dir: &FsPath, min_age: Duration) -> usize {
    let now = SystemTime::now();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|entry| {
            entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| now.duration_since(t).unwrap_or_default() >= min_age)
        })
        .filter(|entry| std::fs::remove_file(entry.path()).is_ok())
        .count()
}
