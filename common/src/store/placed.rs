//! A file just committed, while its upload finds out whether the file's job can be recorded.
//! Kept, it stays; revoked, the commit is taken back (the version it replaced put back, or the
//! key emptied), so that no file stays visible under a key without its job.

use std::fs;
use std::path::PathBuf;

use super::file_io::blocking;
use super::{BoxFuture, Committed, Revoked, StorageError, nofollow};

#[derive(Debug)]
pub(super) struct Placed {
    pub(super) root: PathBuf,
    pub(super) relative: PathBuf,
    /// The committed file's device and inode: only this version is ever taken back.
    pub(super) id: nofollow::FileId,
    /// A hard link (in `tmp/`) to the version this one replaced, until decided.
    pub(super) previous: Option<PathBuf>,
}

impl Committed for Placed {
    fn keep(mut self: Box<Self>) -> BoxFuture<'static, Result<(), StorageError>> {
        let previous = self.previous.take();
        Box::pin(async move {
            if let Some(previous) = previous {
                blocking(move || {
                    fs::remove_file(&previous).map_err(|e| StorageError::io("remove", &previous, e))
                })
                .await?;
            }
            Ok(())
        })
    }

    fn revoke(mut self: Box<Self>) -> BoxFuture<'static, Result<Revoked, StorageError>> {
        let previous = self.previous.take();
        let (root, relative, id) = (self.root.clone(), self.relative.clone(), self.id);
        Box::pin(blocking(move || {
            nofollow::take_back(&root, &relative, id, previous.as_deref())
        }))
    }
}

impl Drop for Placed {
    /// Undecided (the request went away): the file stays as committed. (A previous version's
    /// link that cannot be removed here is removed with the stale temporary files.)
    fn drop(&mut self) {
        if let Some(previous) = self.previous.take() {
            let _ = fs::remove_file(previous);
        }
    }
}
