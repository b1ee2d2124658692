//! Paths below `voicemails/` resolved one directory at a time, never through a symbolic link.
//!
//! Nothing vmpipe writes there is a link, so a link found there was planted: following it would
//! write (or serve) a file outside the storage root. Each directory is opened relative to the
//! one before it with `O_NOFOLLOW`, and the final rename and open are relative to the last
//! one, so a link swapped in meanwhile is not followed either. The root itself is opened by its
//! path (it may be a link the operator made, to another disk).

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, CWD, FileType, Mode, OFlags};
use rustix::io::Errno;

use super::{Revoked, StorageError};

/// Tries at making a file's directories and renaming it into them (see [`rename_into`]).
const RENAME_ATTEMPTS: u32 = 5;

const DIRECTORY: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// The segments of `relative` (a key's relative path).
fn components(relative: &Path) -> Vec<&OsStr> {
    relative
        .components()
        .filter_map(|c| match c {
            Component::Normal(name) => Some(name),
            _ => None,
        })
        .collect()
}

/// The file name and the parent directory's segments of `relative`.
fn split(relative: &Path) -> Option<(&OsStr, Vec<&OsStr>)> {
    let mut parts = components(relative);
    let name = parts.pop()?;
    Some((name, parts))
}

/// Why a directory below the root could not be opened.
enum Walk {
    Absent,
    Failed(StorageError),
}

/// How [`open_dirs`] treats directories that are not there.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Create {
    /// Absent is absent.
    No,
    /// Made when an open finds nothing.
    IfMissing,
    /// Made (or found made) before each open. `mkdir` takes its parent's lock, which a
    /// concurrent `rmdir` of the same name holds until the directory is gone; an open may still
    /// find a directory being removed (the kernel's lock-free lookup sees it until then), and a
    /// rename into that fails with ENOENT again. A retry after such a failure walks this way,
    /// so it waits for the removal it lost to instead of spinning through its attempts inside
    /// that window.
    First,
}

/// Opens the directory `dirs` below `root`, one at a time without following links, creating
/// the missing ones as `create` says (each new one fsynced into its parent).
fn open_dirs(root: &Path, dirs: &[&OsStr], create: Create) -> Result<OwnedFd, Walk> {
    let mut path = root.to_path_buf();
    let open_root = rustix::fs::open(root, DIRECTORY.difference(OFlags::NOFOLLOW), Mode::empty());
    let mut dir = open_root.map_err(|e| Walk::Failed(StorageError::io("open", root, e.into())))?;
    for name in dirs {
        path.push(name);
        let opened = match create {
            Create::First => Err(Errno::NOENT),
            _ => rustix::fs::openat(&dir, *name, DIRECTORY, Mode::empty()),
        };
        let next = match opened {
            Ok(next) => next,
            Err(e) if e == Errno::NOENT && create != Create::No => {
                make_dir(&dir, name, &path)?;
                rustix::fs::openat(&dir, *name, DIRECTORY, Mode::empty())
                    .map_err(|e| classify(&dir, name, &path, e.into()))?
            }
            Err(e) => return Err(classify(&dir, name, &path, e.into())),
        };
        dir = next;
    }
    Ok(dir)
}

/// Makes the directory `name` in `dir` unless it is there, fsynced into `dir` when new.
fn make_dir(dir: &OwnedFd, name: &OsStr, path: &Path) -> Result<(), Walk> {
    match rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o777)) {
        Ok(()) => rustix::fs::fsync(dir)
            .map_err(|e| Walk::Failed(StorageError::io("fsync directory", path, e.into()))),
        // There already (made by a concurrent upload, or by an earlier one); what it is, the
        // open that follows finds out.
        Err(Errno::EXIST) => Ok(()),
        // The directory it goes in was removed meanwhile (`worker prune` empties directories):
        // the walk starts again.
        Err(Errno::NOENT) => Err(Walk::Absent),
        Err(e) => Err(Walk::Failed(StorageError::io(
            "create directory",
            path,
            e.into(),
        ))),
    }
}

/// What stands at `name` in `dir` where a directory was expected.
fn classify(dir: &OwnedFd, name: &OsStr, path: &Path, error: io::Error) -> Walk {
    if error.kind() == io::ErrorKind::NotFound {
        return Walk::Absent;
    }
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat) if FileType::from_raw_mode(stat.st_mode).is_symlink() => {
            Walk::Failed(StorageError::Symlink(path.to_path_buf()))
        }
        // A stored file where a folder of files would go.
        Ok(stat) if !FileType::from_raw_mode(stat.st_mode).is_dir() => {
            Walk::Failed(StorageError::Conflict(path.display().to_string()))
        }
        _ => Walk::Failed(StorageError::io("open directory", path, error)),
    }
}

/// A file's device and inode.
pub(super) type FileId = (u64, u64);

pub(super) fn file_id(file: &File) -> Result<FileId, rustix::io::Errno> {
    rustix::fs::fstat(file).map(|stat| id_of(&stat))
}

// `st_dev` and `st_ino` are not u64 on every target.
#[allow(clippy::unnecessary_cast)]
fn id_of(stat: &rustix::fs::Stat) -> FileId {
    (stat.st_dev as u64, stat.st_ino as u64)
}

/// Renames `temp` (the file `id`) to `relative` below `root` (its directories created as
/// needed), then fsyncs the directory it went into. A link at `relative` itself is replaced,
/// not followed. The version it replaces, if any, is first hard-linked to `keep_previous`, so
/// that the commit can be taken back ([`take_back`]); returns whether there was one.
pub(super) fn rename_into(
    root: &Path,
    relative: &Path,
    temp: &Path,
    id: FileId,
    keep_previous: &Path,
) -> Result<bool, StorageError> {
    let final_path = root.join(relative);
    let Some((name, dirs)) = split(relative) else {
        return Err(StorageError::Conflict(final_path.display().to_string()));
    };
    // `worker prune` removes directories it empties: one may go between its creation here and
    // the rename into it (ENOENT). It is made again, a few times; each retry waits for the
    // removal it lost to, so each try is lost only to another removal.
    let mut attempts = 0;
    let (parent, kept) = loop {
        attempts += 1;
        // The first walk opens what is there; a retry makes each directory first (see
        // `Create::First`).
        let create = if attempts == 1 {
            Create::IfMissing
        } else {
            Create::First
        };
        let parent = match open_dirs(root, &dirs, create) {
            Ok(parent) => parent,
            Err(Walk::Absent) if attempts < RENAME_ATTEMPTS => continue,
            Err(Walk::Absent) => {
                return Err(StorageError::io(
                    "create directory",
                    &final_path,
                    io::ErrorKind::NotFound.into(),
                ));
            }
            Err(Walk::Failed(e)) => return Err(e),
        };
        let kept = match rustix::fs::linkat(&parent, name, CWD, keep_previous, AtFlags::empty()) {
            Ok(()) => true,
            // Nothing stored there yet; or a directory (EPERM), which the rename refuses below.
            Err(e) if e == Errno::NOENT || e == Errno::PERM => false,
            Err(e) => {
                return Err(StorageError::io(
                    "link the previous version",
                    &final_path,
                    e.into(),
                ));
            }
        };
        match rustix::fs::renameat(CWD, temp, &parent, name) {
            Ok(()) => break (parent, kept),
            Err(e) => {
                if kept {
                    let _ = std::fs::remove_file(keep_previous);
                }
                if e == Errno::NOENT && attempts < RENAME_ATTEMPTS && temp.exists() {
                    continue;
                }
                let e = io::Error::from(e);
                // ENOTDIR, EISDIR: one key cannot be both a file and a folder of files.
                return Err(if matches!(e.raw_os_error(), Some(20 | 21)) {
                    StorageError::Conflict(final_path.display().to_string())
                } else {
                    StorageError::io("rename", &final_path, e)
                });
            }
        }
    };
    if let Err(e) = rustix::fs::fsync(&parent) {
        // Not durable: not committed either.
        let previous = kept.then_some(keep_previous);
        let _ = take_back(root, relative, id, previous);
        let dir = final_path
            .parent()
            .map_or_else(PathBuf::new, Path::to_path_buf);
        return Err(StorageError::io("fsync directory", &dir, e.into()));
    }
    Ok(kept)
}

/// Takes back the commit of the file `id` at `relative` below `root`: `previous` (a link to
/// the version it replaced) is put back, or else the file is removed; the directory is fsynced.
/// A file that is not `id` any more (a newer upload of the same key) is left alone.
pub(super) fn take_back(
    root: &Path,
    relative: &Path,
    id: FileId,
    previous: Option<&Path>,
) -> Result<Revoked, StorageError> {
    let final_path = root.join(relative);
    let forget_previous = || {
        if let Some(previous) = previous {
            let _ = std::fs::remove_file(previous);
        }
    };
    let Some((name, dirs)) = split(relative) else {
        forget_previous();
        return Ok(Revoked::Superseded);
    };
    let parent = match open_dirs(root, &dirs, Create::No) {
        Ok(parent) => parent,
        Err(Walk::Absent) => {
            forget_previous();
            return Ok(Revoked::Superseded);
        }
        Err(Walk::Failed(e)) => {
            forget_previous();
            return Err(e);
        }
    };
    let current = match rustix::fs::statat(&parent, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat) => id_of(&stat),
        Err(e) if e == Errno::NOENT => (0, 0),
        Err(e) => {
            forget_previous();
            return Err(StorageError::io("stat", &final_path, e.into()));
        }
    };
    if current != id {
        forget_previous();
        return Ok(Revoked::Superseded);
    }
    let revoked = match previous {
        Some(previous) => rustix::fs::renameat(CWD, previous, &parent, name)
            .map(|()| Revoked::Restored)
            .map_err(|e| StorageError::io("put back the previous version", &final_path, e.into())),
        None => rustix::fs::unlinkat(&parent, name, AtFlags::empty())
            .map(|()| Revoked::Removed)
            .map_err(|e| StorageError::io("remove", &final_path, e.into())),
    };
    if revoked.is_err() {
        forget_previous();
    }
    let revoked = revoked?;
    rustix::fs::fsync(&parent).map_err(|e| {
        let dir = final_path
            .parent()
            .map_or_else(PathBuf::new, Path::to_path_buf);
        StorageError::io("fsync directory", &dir, e.into())
    })?;
    Ok(revoked)
}

/// Opens the regular file at `relative` below `root`; `None` when there is none (or only a
/// link, or a directory, stands there).
pub(super) fn open_file(root: &Path, relative: &Path) -> Result<Option<File>, StorageError> {
    let path = root.join(relative);
    let Some((name, dirs)) = split(relative) else {
        return Ok(None);
    };
    let parent = match open_dirs(root, &dirs, Create::No) {
        Ok(parent) => parent,
        Err(Walk::Absent | Walk::Failed(StorageError::Conflict(_))) => return Ok(None),
        Err(Walk::Failed(StorageError::Symlink(link))) => {
            tracing::warn!(link = %link.display(), "not following a symbolic link below voicemails/");
            return Ok(None);
        }
        Err(Walk::Failed(e)) => return Err(e),
    };
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
    let fd = match rustix::fs::openat(&parent, name, flags, Mode::empty()) {
        Ok(fd) => fd,
        // ELOOP: a link; ENOENT: nothing; ENOTDIR: a file above it.
        Err(e) if matches!(e.raw_os_error(), 2 | 20 | 40) => return Ok(None),
        Err(e) => return Err(StorageError::io("open", &path, e.into())),
    };
    let stat = rustix::fs::fstat(&fd).map_err(|e| StorageError::io("stat", &path, e.into()))?;
    if !FileType::from_raw_mode(stat.st_mode).is_file() {
        return Ok(None);
    }
    // Opened non-blocking so that a planted FIFO could not hang the open; reads of a regular
    // file are not affected.
    Ok(Some(File::from(fd)))
}
