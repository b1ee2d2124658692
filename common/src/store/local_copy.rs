//! [`LocalFile`]: a stored file as a path on this machine, for the code that needs one (the
//! audio probe and decoder, the hash, hooks that are handed a file).

use std::path::{Path, PathBuf};

/// A stored file readable at [`LocalFile::path`]: the stored file itself (a file system), or
/// a temporary copy (an object store) that is deleted when this is dropped.
#[derive(Debug)]
pub struct LocalFile {
    path: PathBuf,
    size: u64,
    _copy: Option<tempfile::TempPath>,
}

impl LocalFile {
    /// The stored file itself: nothing to delete afterwards.
    pub fn stored(path: PathBuf, size: u64) -> Self {
        Self {
            path,
            size,
            _copy: None,
        }
    }

    /// A temporary copy, deleted on drop.
    pub fn copy(path: tempfile::TempPath, size: u64) -> Self {
        Self {
            path: path.to_path_buf(),
            size,
            _copy: Some(path),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its size in bytes when it was stat'ed or copied.
    pub fn size(&self) -> u64 {
        self.size
    }
}
