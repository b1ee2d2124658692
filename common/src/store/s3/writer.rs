//! Writing one upload to the bucket: bodies up to [`PART`] are one PUT; a larger body becomes
//! a multipart upload of [`PART`]-sized parts, sent one at a time as they fill (an upload holds
//! at most one part in memory), and aborted if the upload does not complete (the client went
//! away, a part failed): nothing is visible under the key until the PUT or the completion.
//!
//! Taking a commit back ([`Committed::revoke`]) needs the version it replaced: S3 cannot
//! replace an object conditionally everywhere (Garage ignores `If-None-Match` and `If-Match`
//! on PUT), so before its PUT a commit copies the current version (server-side, and only when
//! there is one) to `.vmpipe/previous/`, and deletes that copy once the upload is answered.
//! The revoke checks that the object is still the one it stored (its ETag) before putting the
//! old one back or deleting it. This is not atomic as the file system's rename is: an upload
//! of the same key landing between that check and the restore is overwritten. Both are a
//! retried upload of one voicemail (KAZOO's), so the bytes are the same.

use bytes::Bytes;
use object_store::path::Path;
use object_store::{MultipartUpload, ObjectStoreExt, PutPayload};

use super::{S3Store, delete, failure};
use crate::key::StorageKey;
use crate::store::{BoxFuture, Committed, ObjectWriter, Revoked, StorageError};

/// Bodies up to this are one PUT; larger ones go in parts of this size (S3's smallest part).
pub(crate) const PART: usize = 5 * 1024 * 1024;
/// A buffer grows as bodies arrive up to this (most voicemails are smaller); past it, it is
/// made a whole part at once.
const GROW_UP_TO: usize = 1024 * 1024;

pub(super) struct S3Writer {
    store: S3Store,
    key: StorageKey,
    /// Received bytes not yet sent, at most [`PART`]. Copied out of the chunks (a chunk can be
    /// a slice of a much larger buffer, which holding it would keep alive).
    buffer: Vec<u8>,
    /// Started once the body is larger than one part.
    upload: Multipart,
}

impl S3Writer {
    pub(super) fn new(store: S3Store, key: StorageKey) -> Self {
        Self {
            store,
            key,
            buffer: Vec::new(),
            upload: Multipart(None),
        }
    }

    /// Sends the full buffer as the next part, starting the multipart upload first if needed.
    async fn send_part(&mut self, path: &Path) -> Result<(), StorageError> {
        if self.upload.0.is_none() {
            let started = self.store.inner.store.put_multipart(path).await;
            self.upload.0 = Some(started.map_err(|e| failure("start upload", path, e))?);
        }
        let part = PutPayload::from(Bytes::from(std::mem::take(&mut self.buffer)));
        let upload = self.upload.0.as_mut().expect("started above");
        upload
            .put_part(part)
            .await
            .map_err(|e| failure("upload part", path, e))
    }
}

impl ObjectWriter for S3Writer {
    fn write(&mut self, chunk: Bytes) -> BoxFuture<'_, Result<(), StorageError>> {
        Box::pin(async move {
            let path = self.store.path(&self.key)?;
            let mut rest = &chunk[..];
            while !rest.is_empty() {
                let take = rest.len().min(PART - self.buffer.len());
                if self.buffer.len() + take > GROW_UP_TO {
                    // A part, then: its one allocation, rather than doubling into a larger one
                    // and copying on the way.
                    self.buffer.reserve_exact(PART - self.buffer.len());
                }
                self.buffer.extend_from_slice(&rest[..take]);
                rest = &rest[take..];
                if self.buffer.len() == PART {
                    self.send_part(&path).await?;
                }
            }
            Ok(())
        })
    }

    fn commit(mut self: Box<Self>) -> BoxFuture<'static, Result<Box<dyn Committed>, StorageError>> {
        Box::pin(async move {
            let path = self.store.path(&self.key)?;
            let store = self.store.clone();
            let objects = &store.inner.store;
            let kept = store.own_object("previous");
            let previous = match objects.copy(&path, &kept).await {
                Ok(()) => Some(kept),
                Err(object_store::Error::NotFound { .. }) => None,
                Err(e) => return Err(failure("keep the previous version", &path, e)),
            };
            let stored = if self.upload.0.is_some() {
                let last = if self.buffer.is_empty() {
                    Ok(())
                } else {
                    self.send_part(&path).await
                };
                match last {
                    Ok(()) => self.upload.complete(&path).await,
                    Err(e) => Err(e),
                }
            } else {
                let body = PutPayload::from(Bytes::from(std::mem::take(&mut self.buffer)));
                objects
                    .put(&path, body)
                    .await
                    .map_err(|e| failure("PUT", &path, e))
            };
            match stored {
                Ok(result) => Ok(Box::new(S3Committed {
                    store: store.clone(),
                    path,
                    e_tag: result.e_tag,
                    previous,
                }) as Box<dyn Committed>),
                Err(e) => {
                    if let Some(previous) = &previous {
                        let _ = delete(objects, previous).await;
                    }
                    Err(e)
                }
            }
        })
    }
}

/// A multipart upload in progress, aborted when dropped before it completes.
struct Multipart(Option<Box<dyn MultipartUpload>>);

impl Multipart {
    async fn complete(&mut self, path: &Path) -> Result<object_store::PutResult, StorageError> {
        let mut upload = self.0.take().expect("an upload in progress");
        match upload.complete().await {
            Ok(result) => Ok(result),
            Err(e) => {
                let _ = upload.abort().await;
                Err(failure("complete upload", path, e))
            }
        }
    }
}

impl Drop for Multipart {
    fn drop(&mut self) {
        if let Some(mut upload) = self.0.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                if let Err(e) = upload.abort().await {
                    tracing::warn!(error = %e, "could not abort an unfinished multipart upload; a lifecycle rule of the bucket removes it");
                }
            });
        }
    }
}

/// A stored object whose upload is not answered yet, with the version it replaced.
#[derive(Debug)]
struct S3Committed {
    store: S3Store,
    path: Path,
    /// What the store said it stored; compared before a revoke touches the key.
    e_tag: Option<String>,
    /// The copy of the version it replaced, if there was one.
    previous: Option<Path>,
}

impl Committed for S3Committed {
    fn keep(mut self: Box<Self>) -> BoxFuture<'static, Result<(), StorageError>> {
        Box::pin(async move {
            if let Some(previous) = self.previous.take() {
                delete(&self.store.inner.store, &previous).await?;
            }
            Ok(())
        })
    }

    fn revoke(mut self: Box<Self>) -> BoxFuture<'static, Result<Revoked, StorageError>> {
        Box::pin(async move {
            let objects = &self.store.inner.store;
            let current = self.store.head(&self.path).await?;
            let ours = match (&current, &self.e_tag) {
                (None, _) => false,
                (Some(meta), Some(ours)) => meta.e_tag.as_ref().is_none_or(|tag| tag == ours),
                (Some(_), None) => true,
            };
            let previous = self.previous.take();
            if !ours {
                if let Some(previous) = &previous {
                    delete(objects, previous).await?;
                }
                return Ok(Revoked::Superseded);
            }
            match previous {
                Some(previous) => {
                    objects
                        .copy(&previous, &self.path)
                        .await
                        .map_err(|e| failure("restore the previous version", &self.path, e))?;
                    delete(objects, &previous).await?;
                    Ok(Revoked::Restored)
                }
                None => {
                    delete(objects, &self.path).await?;
                    Ok(Revoked::Removed)
                }
            }
        })
    }
}

impl Drop for S3Committed {
    /// Dropped undecided: the file stays (see [`Committed`]), its previous version goes.
    fn drop(&mut self) {
        if let Some(previous) = self.previous.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let store = self.store.clone();
            runtime.spawn(async move {
                let _ = delete(&store.inner.store, &previous).await;
            });
        }
    }
}
