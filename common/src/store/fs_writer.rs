//! Writing one upload: gathered in pieces, written to `tmp/`, fsynced, renamed into place, and
//! its directory fsynced. The uploads in progress share one budget of write buffers.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;

use super::file_io::blocking;
use super::placed::Placed;
use super::{BoxFuture, Committed, ObjectWriter, StorageError, nofollow};

/// Uploads are written to disk once this much has arrived: a voicemail-sized upload costs one
/// trip to the blocking pool (each trip is two context switches, and ingest is CPU-bound under
/// load), and memory stays flat whatever the body size.
pub(super) const WRITE_CHUNK: usize = 256 * 1024;
/// What the write buffers of all uploads in progress may hold together: with more than 16
/// uploads at once each gets a share of this, down to [`MIN_WRITE_CHUNK`], so that memory
/// stays flat in the number of uploads too.
const WRITE_BUFFERS: usize = 4 * 1024 * 1024;
pub(super) const MIN_WRITE_CHUNK: usize = 32 * 1024;

/// Each upload's share of [`WRITE_BUFFERS`] when `writers` are in progress.
pub(super) fn piece_size(writers: usize) -> usize {
    (WRITE_BUFFERS / writers.max(1)).clamp(MIN_WRITE_CHUNK, WRITE_CHUNK)
}

pub(super) struct FsWriter {
    writers: Arc<AtomicUsize>,
    temp_path: PathBuf,
    /// Where it goes, below `voicemail_root`.
    relative: PathBuf,
    voicemail_root: PathBuf,
    /// Created on the first flush, so a small upload costs one trip to the blocking pool.
    file: Option<File>,
    /// Received bytes not yet written. Copied out of the chunks: a chunk can be a slice of a
    /// much larger buffer (the multipart parser's), which holding it would keep alive.
    buffer: Vec<u8>,
    committed: bool,
}

impl FsWriter {
    /// A writer for `relative` below `voicemail_root`, gathering its bytes in `temp_path` until
    /// committed; counted in `writers` (the uploads in progress) while it lives.
    pub(super) fn new(
        writers: Arc<AtomicUsize>,
        temp_path: PathBuf,
        relative: PathBuf,
        voicemail_root: PathBuf,
    ) -> Self {
        writers.fetch_add(1, Ordering::Relaxed);
        Self {
            writers,
            temp_path,
            relative,
            voicemail_root,
            file: None,
            buffer: Vec::new(),
            committed: false,
        }
    }

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

    fn commit(mut self: Box<Self>) -> BoxFuture<'static, Result<Box<dyn Committed>, StorageError>> {
        Box::pin(async move {
            let (file, buffer, temp_path) = self.take_state();
            let relative = self.relative.clone();
            let root = self.voicemail_root.clone();
            // Where the version this one replaces is kept until the upload decides.
            let previous = temp_path.with_extension("prev");
            let placed = blocking(move || {
                let file = write_out(file, &buffer, &temp_path)?;
                file.sync_data()
                    .map_err(|e| StorageError::io("fsync", &temp_path, e))?;
                let id = nofollow::file_id(&file)
                    .map_err(|e| StorageError::io("stat", &temp_path, e.into()))?;
                drop(file);
                // Its directories made durably, never through a link (see nofollow.rs).
                let kept = nofollow::rename_into(&root, &relative, &temp_path, id, &previous)?;
                Ok(Placed {
                    root,
                    relative,
                    id,
                    previous: kept.then_some(previous),
                })
            })
            .await?;
            self.committed = true;
            Ok(Box::new(placed) as Box<dyn Committed>)
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

pub fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StorageError::io("fsync directory", dir, e))
}
