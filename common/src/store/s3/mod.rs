//! [`S3Store`]: voicemail files as objects in an S3 bucket (AWS S3, Garage, MinIO, Ceph RGW),
//! through the `object_store` crate (Apache Arrow's; used by DataFusion, delta-rs and pict-rs:
//! SigV4 signing, retries with backoff, multipart uploads, path-style addressing), rather than
//! a client of our own.
//!
//! - Object keys are `{VMPIPE_S3_PREFIX}/{canonical key}`: the same names as the file tree of
//!   [`super::FsStore`], so a bucket reads like the directory.
//! - vmpipe's own objects are below `{prefix}/.vmpipe/` (a key whose first segment is
//!   `.vmpipe` is refused with 409): the version an upload replaces, kept until the upload is
//!   answered ([`writer`]), and readiness probes.
//! - A flat namespace has no file/directory clash, so the file system's 409 for a key below a
//!   stored file is not kept: both can be stored. A fetch of a path that is not stored resolves
//!   to its shortest stored prefix (KAZOO's doubled path), one HEAD per segment at most.
//! - Failures: a store that does not answer or answers 5xx is [`StorageError::Unavailable`]
//!   (ingest answers 503, the worker waits); access refused is [`StorageError::Refused`].

mod copy;
mod writer;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, RetryConfig};

use super::{
    BoxFuture, Listed, LocalFile, ObjectInfo, ObjectWriter, Removed, Storage, StorageError,
    StoredObject,
};
use crate::key::StorageKey;
use crate::settings::Settings;

/// The first segment of vmpipe's own objects, below the prefix.
const OWN: &str = ".vmpipe";
/// How long one request may take, body included (a voicemail is a few MiB at most).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Retries of a failed request (5xx, timeouts, refused connections) within this time: long
/// enough to ride out a node restarting, short enough that KAZOO gets its 503 and retries.
const RETRIES: usize = 3;
const RETRY_TIMEOUT: Duration = Duration::from_secs(15);

/// Voicemail files in a bucket.
#[derive(Clone, Debug)]
pub struct S3Store {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: AmazonS3,
    bucket: String,
    /// `VMPIPE_S3_PREFIX` without its slashes at either end; empty for none.
    prefix: String,
    /// Local copies for the worker (`{storage_dir}/tmp/copies`).
    copies: PathBuf,
    /// Largest object copied (`VMPIPE_MAX_BODY`).
    max_copy: u64,
}

impl S3Store {
    /// The bucket of `settings`. Sends nothing yet (readiness does).
    pub fn open(settings: &Settings) -> Result<Self, StorageError> {
        let bucket = settings.s3_bucket.clone().unwrap_or_default();
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(&bucket)
            .with_region(&settings.s3_region)
            .with_retry(RetryConfig {
                max_retries: RETRIES,
                retry_timeout: RETRY_TIMEOUT,
                ..RetryConfig::default()
            })
            .with_client_options(
                ClientOptions::new()
                    .with_timeout(REQUEST_TIMEOUT)
                    .with_connect_timeout(CONNECT_TIMEOUT),
            );
        if let Some(endpoint) = &settings.s3_endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"))
                .with_virtual_hosted_style_request(false);
        }
        if let (Some(id), Some(secret)) =
            (&settings.s3_access_key_id, &settings.s3_secret_access_key)
        {
            builder = builder
                .with_access_key_id(id)
                .with_secret_access_key(secret.expose());
        }
        let store = builder
            .build()
            .map_err(|e| refused("configure", &bucket, e))?;
        let copies = settings.storage_dir.join("tmp").join("copies");
        std::fs::create_dir_all(&copies)
            .map_err(|e| StorageError::io("create directory", &copies, e))?;
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                bucket,
                prefix: settings.s3_prefix.trim_matches('/').to_owned(),
                copies,
                max_copy: settings.max_body.0,
            }),
        })
    }

    /// The object of `key`.
    fn path(&self, key: &StorageKey) -> Result<Path, StorageError> {
        if key.segments()[0] == OWN {
            return Err(StorageError::Conflict(format!(
                "{} (keys below {OWN}/ are vmpipe's own)",
                key.as_str()
            )));
        }
        self.object(key.as_str())
    }

    /// The object named `name` below the prefix.
    fn object(&self, name: &str) -> Result<Path, StorageError> {
        let full = match self.inner.prefix.as_str() {
            "" => name.to_owned(),
            prefix => format!("{prefix}/{name}"),
        };
        Path::parse(&full).map_err(|e| refused("name", &full, e))
    }

    /// A new name below `.vmpipe/{kind}/`.
    fn own_object(&self, kind: &str) -> Path {
        let name = format!("{OWN}/{kind}/{}", uuid::Uuid::new_v4().simple());
        self.object(&name).expect("a valid name")
    }

    fn head<'a>(
        &'a self,
        path: &'a Path,
    ) -> BoxFuture<'a, Result<Option<object_store::ObjectMeta>, StorageError>> {
        Box::pin(async move {
            match self.inner.store.head(path).await {
                Ok(meta) => Ok(Some(meta)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(failure("HEAD", path, e)),
            }
        })
    }

    /// Deletes vmpipe's own objects below `.vmpipe/previous/` older than `min_age`: what a
    /// crash between an upload's commit and its answer left.
    async fn remove_stale_previous(&self, min_age: Duration) -> Result<usize, StorageError> {
        let below = self.object(&format!("{OWN}/previous"))?;
        let now = chrono::Utc::now();
        let mut stale = self.inner.store.list(Some(&below));
        let mut removed = 0;
        while let Some(meta) = stale.next().await {
            let meta = meta.map_err(|e| failure("LIST", &below, e))?;
            let age = (now - meta.last_modified).to_std().unwrap_or_default();
            if age >= min_age {
                delete(&self.inner.store, &meta.location).await?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

impl Storage for S3Store {
    fn create(&self, key: &StorageKey) -> Box<dyn ObjectWriter> {
        Box::new(writer::S3Writer::new(self.clone(), key.clone()))
    }

    fn open(&self, key: &StorageKey) -> BoxFuture<'_, Result<Option<StoredObject>, StorageError>> {
        let path = self.path(key);
        Box::pin(async move {
            let path = path?;
            let got = match self.inner.store.get(&path).await {
                Ok(got) => got,
                Err(object_store::Error::NotFound { .. }) => return Ok(None),
                Err(e) => return Err(failure("GET", &path, e)),
            };
            let size = got.meta.size;
            let body = got.into_stream().map_err(std::io::Error::other).boxed();
            Ok(Some(StoredObject { size, body }))
        })
    }

    fn open_range(
        &self,
        key: &StorageKey,
        range: std::ops::Range<u64>,
    ) -> BoxFuture<'_, Result<Option<StoredObject>, StorageError>> {
        let path = self.path(key);
        Box::pin(async move {
            let path = path?;
            let options = object_store::GetOptions {
                range: Some(object_store::GetRange::Bounded(range.clone())),
                ..Default::default()
            };
            let got = match self.inner.store.get_opts(&path, options).await {
                Ok(got) => got,
                Err(object_store::Error::NotFound { .. }) => return Ok(None),
                Err(e) => return Err(failure("GET", &path, e)),
            };
            let size = range.end - range.start;
            let body = got.into_stream().map_err(std::io::Error::other).boxed();
            Ok(Some(StoredObject { size, body }))
        })
    }

    fn check_writable(&self) -> BoxFuture<'_, Result<(), StorageError>> {
        Box::pin(async move {
            let probe = self.own_object("health");
            self.inner
                .store
                .put(&probe, bytes::Bytes::from_static(b"ok").into())
                .await
                .map_err(|e| failure("PUT", &probe, e))?;
            delete(&self.inner.store, &probe).await
        })
    }

    fn find_prefix(
        &self,
        segments: Vec<String>,
    ) -> BoxFuture<'_, Result<Option<StorageKey>, StorageError>> {
        Box::pin(async move {
            for end in 1..=segments.len() {
                let Ok(key) = StorageKey::from_segments(segments[..end].iter().cloned()) else {
                    return Ok(None);
                };
                let Ok(path) = self.path(&key) else { continue };
                if self.head(&path).await?.is_some() {
                    return Ok(Some(key));
                }
            }
            Ok(None)
        })
    }

    fn stat(&self, key: &StorageKey) -> BoxFuture<'_, Result<Option<ObjectInfo>, StorageError>> {
        let path = self.path(key);
        Box::pin(async move {
            let path = path?;
            Ok(self.head(&path).await?.map(|meta| info(&meta)))
        })
    }

    fn list(&self) -> BoxStream<'_, Result<Listed, StorageError>> {
        let prefix =
            (!self.inner.prefix.is_empty()).then(|| Path::from(self.inner.prefix.as_str()));
        let skip = match &prefix {
            Some(prefix) => prefix.as_ref().len() + 1,
            None => 0,
        };
        self.inner
            .store
            .list(prefix.as_ref())
            .filter_map(move |meta| async move {
                match meta {
                    Err(e) => Some(Err(failure("LIST", &Path::default(), e))),
                    Ok(meta) => {
                        let name = meta.location.as_ref().get(skip..)?.to_owned();
                        let own = name.split('/').next() == Some(OWN);
                        (!own).then(|| {
                            Ok(Listed {
                                name,
                                info: info(&meta),
                            })
                        })
                    }
                }
            })
            .boxed()
    }

    fn remove(&self, key: &StorageKey) -> BoxFuture<'_, Result<Removed, StorageError>> {
        let path = self.path(key);
        Box::pin(async move {
            let path = path?;
            // S3's DELETE says nothing of whether there was an object: ask first.
            let file = self.head(&path).await?.is_some();
            if file {
                delete(&self.inner.store, &path).await?;
            }
            Ok(Removed {
                file,
                directories: 0,
            })
        })
    }

    fn local_copy(
        &self,
        key: &StorageKey,
    ) -> BoxFuture<'_, Result<Option<LocalFile>, StorageError>> {
        let path = self.path(key);
        Box::pin(async move { copy::local_copy(self, &path?).await })
    }

    fn location(&self) -> String {
        match self.inner.prefix.as_str() {
            "" => format!("s3://{}", self.inner.bucket),
            prefix => format!("s3://{}/{prefix}", self.inner.bucket),
        }
    }

    fn remove_stale_temp_files(
        &self,
        min_age: Duration,
    ) -> BoxFuture<'_, Result<usize, StorageError>> {
        Box::pin(async move {
            let copies = self.inner.copies.clone();
            let local =
                super::file_io::blocking(move || Ok(copy::remove_stale(&copies, min_age))).await?;
            // The bucket may not answer yet (the store starting with the stack): a start is
            // not refused for that, the copies are removed at a later one.
            let previous = self.remove_stale_previous(min_age).await.unwrap_or_else(|e| {
                tracing::warn!(error = %e, "could not look for stale copies of replaced versions");
                0
            });
            Ok(local + previous)
        })
    }
}

fn info(meta: &object_store::ObjectMeta) -> ObjectInfo {
    ObjectInfo {
        size: meta.size,
        modified: SystemTime::from(meta.last_modified),
    }
}

async fn delete(store: &AmazonS3, path: &Path) -> Result<(), StorageError> {
    match store.delete(path).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(failure("DELETE", path, e)),
    }
}

/// What a failed request means: access refused and bad names need the operator; everything
/// else (no answer, a 5xx, a timeout, retries used up) may pass.
fn failure(op: &'static str, path: &Path, e: object_store::Error) -> StorageError {
    use object_store::Error as E;
    match e {
        E::PermissionDenied { .. }
        | E::Unauthenticated { .. }
        | E::NotSupported { .. }
        | E::NotImplemented { .. }
        | E::InvalidPath { .. }
        | E::UnknownConfigurationKey { .. } => refused(op, path.as_ref(), e),
        e => StorageError::Unavailable {
            op,
            key: path.to_string(),
            source: Box::new(e),
        },
    }
}

fn refused(
    op: &'static str,
    name: &str,
    e: impl std::error::Error + Send + Sync + 'static,
) -> StorageError {
    StorageError::Refused {
        op,
        key: name.to_owned(),
        source: Box::new(e),
    }
}
