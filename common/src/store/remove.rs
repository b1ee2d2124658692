//! Deleting a stored file (retention), and the directories that leaves empty, never through a
//! symbolic link.
//!
//! Each directory is opened relative to the one before it with `O_NOFOLLOW` (as in
//! [`super::nofollow`]), the file is unlinked relative to its directory, and each emptied
//! directory is removed with `rmdir` relative to its parent: `rmdir` only ever removes an
//! empty directory, so a file an upload puts there meanwhile keeps it, and a link swapped in
//! is refused rather than followed. `voicemails/` itself is never removed.

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::path::{Component, Path};

use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;

use super::{FsStore, StorageError};
use crate::key::StorageKey;

const DIRECTORY: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// What removing a stored file did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Removed {
    /// Whether a file was there (and is gone now).
    pub file: bool,
    /// Directories removed because the removal left them empty.
    pub directories: usize,
}

impl FsStore {
    /// Deletes the file stored under `key` (if any), then every directory above it that is
    /// empty now, up to but never including `voicemails/`.
    pub fn remove_blocking(&self, key: &StorageKey) -> Result<Removed, StorageError> {
        let root = self.voicemail_root();
        let relative = key.relative_path();
        let parts: Vec<&OsStr> = relative
            .components()
            .filter_map(|c| match c {
                Component::Normal(name) => Some(name),
                _ => None,
            })
            .collect();
        let Some((name, dirs)) = parts.split_last() else {
            return Ok(Removed {
                file: false,
                directories: 0,
            });
        };
        // fds[0] is voicemails/, fds[i] the directory dirs[i - 1].
        let open_root =
            rustix::fs::open(root, DIRECTORY.difference(OFlags::NOFOLLOW), Mode::empty());
        let mut fds: Vec<OwnedFd> =
            vec![open_root.map_err(|e| StorageError::io("open", root, e.into()))?];
        for dir in dirs {
            let parent = fds.last().expect("the root at least");
            match rustix::fs::openat(parent, *dir, DIRECTORY, Mode::empty()) {
                Ok(fd) => fds.push(fd),
                // Nothing there, a link (ELOOP) or a file (ENOTDIR): no file of this key.
                Err(Errno::NOENT | Errno::LOOP | Errno::NOTDIR) => break,
                Err(e) => {
                    return Err(StorageError::io(
                        "open directory",
                        &root.join(&relative),
                        e.into(),
                    ));
                }
            }
        }
        let mut file = false;
        if fds.len() == dirs.len() + 1 {
            let parent = fds.last().expect("the root at least");
            match rustix::fs::unlinkat(parent, *name, AtFlags::empty()) {
                Ok(()) => file = true,
                Err(Errno::NOENT) => {}
                Err(Errno::ISDIR) => {
                    return Err(StorageError::Conflict(
                        root.join(&relative).display().to_string(),
                    ));
                }
                Err(e) => return Err(StorageError::io("remove", &root.join(&relative), e.into())),
            }
        }
        let directories = remove_emptied(root, &fds, dirs);
        Ok(Removed { file, directories })
    }
}

/// Removes `dirs[..fds.len() - 1]` from the deepest up, while each is empty; how many went.
fn remove_emptied(root: &Path, fds: &[OwnedFd], dirs: &[&OsStr]) -> usize {
    let mut removed = 0;
    for depth in (1..fds.len()).rev() {
        match rustix::fs::unlinkat(&fds[depth - 1], dirs[depth - 1], AtFlags::REMOVEDIR) {
            Ok(()) => removed += 1,
            // Removed by someone else meanwhile: its parent may be empty now too.
            Err(Errno::NOENT) => {}
            // Not empty (ENOTEMPTY, EEXIST), or no longer a directory (ENOTDIR: a link swapped
            // in), or busy: it stays, and so does everything above it.
            Err(e) => {
                if !matches!(e, Errno::NOTEMPTY | Errno::EXIST) {
                    let path: std::path::PathBuf = dirs[..depth].iter().collect();
                    tracing::warn!(directory = %root.join(path).display(), error = %e,
                        "could not remove an emptied directory");
                }
                break;
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::super::nofollow;
    use super::*;
    use crate::key::decode_path;

    fn key(raw: &str) -> StorageKey {
        StorageKey::from_segments(decode_path(raw).unwrap()).unwrap()
    }

    fn put(store: &FsStore, raw: &str) {
        let path = store.path_of(&key(raw));
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, b"audio").unwrap();
    }

    #[test]
    fn removes_the_file_and_the_directories_it_empties_but_never_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path()).unwrap();
        put(&store, "acct/doc1/a.mp3");
        put(&store, "acct/doc2/b.mp3");
        assert_eq!(
            store
                .stat_blocking(&key("acct/doc1/a.mp3"))
                .unwrap()
                .map(|info| info.size),
            Some(5)
        );
        let removed = store.remove_blocking(&key("acct/doc1/a.mp3")).unwrap();
        assert_eq!(
            removed,
            Removed {
                file: true,
                directories: 1
            }
        );
        assert!(!store.voicemail_root().join("acct/doc1").exists());
        let removed = store.remove_blocking(&key("acct/doc2/b.mp3")).unwrap();
        assert_eq!(
            removed,
            Removed {
                file: true,
                directories: 2
            }
        );
        assert!(store.voicemail_root().is_dir());
        assert_eq!(fs::read_dir(store.voicemail_root()).unwrap().count(), 0);
        // Nothing there: nothing to do.
        let removed = store.remove_blocking(&key("acct/doc2/b.mp3")).unwrap();
        assert_eq!(
            removed,
            Removed {
                file: false,
                directories: 0
            }
        );
        assert_eq!(
            store
                .stat_blocking(&key("acct/doc2/b.mp3"))
                .unwrap()
                .map(|info| info.size),
            None
        );
    }

    #[test]
    fn never_goes_through_a_symbolic_link() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        fs::create_dir(outside.path().join("doc")).unwrap();
        fs::write(outside.path().join("doc/a.mp3"), b"not ours").unwrap();
        let store = FsStore::open(dir.path()).unwrap();
        std::os::unix::fs::symlink(outside.path(), store.voicemail_root().join("acct")).unwrap();
        let k = key("acct/doc/a.mp3");
        assert_eq!(store.stat_blocking(&k).unwrap().map(|info| info.size), None);
        let removed = store.remove_blocking(&k).unwrap();
        assert_eq!(
            removed,
            Removed {
                file: false,
                directories: 0
            }
        );
        assert!(outside.path().join("doc/a.mp3").is_file(), "left alone");
        assert!(store.voicemail_root().join("acct").is_symlink());
    }

    /// An upload into the directory prune is emptying: the directory may go between the
    /// upload's making it and renaming into it; the upload makes it again.
    #[test]
    fn an_upload_racing_the_removal_of_its_directory_lands() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path()).unwrap();
        let root = store.voicemail_root().to_path_buf();
        for i in 0..300 {
            // Odd rounds: the account's directory empties too, so the upload's walk can find
            // the directory it is in removed as well as the one it goes into.
            let account = if i % 2 == 0 {
                "acct".to_owned()
            } else {
                format!("acct{i}")
            };
            put(&store, &format!("{account}/d{i}/old.mp3"));
            let temp = dir.path().join(format!("tmp/0/{i}.part"));
            fs::write(&temp, b"new").unwrap();
            let barrier = std::sync::Barrier::new(2);
            std::thread::scope(|scope| {
                let pruning = scope.spawn(|| {
                    barrier.wait();
                    store
                        .remove_blocking(&key(&format!("{account}/d{i}/old.mp3")))
                        .unwrap()
                });
                barrier.wait();
                let relative = std::path::PathBuf::from(format!("{account}/d{i}/new.mp3"));
                let id = nofollow::file_id(&fs::File::open(&temp).unwrap()).unwrap();
                let previous = temp.with_extension("prev");
                let kept = nofollow::rename_into(&root, &relative, &temp, id, &previous)
                    .unwrap_or_else(|e| panic!("upload {i}: {e}"));
                assert!(!kept, "upload {i}: nothing was stored at its key before");
                pruning.join().unwrap();
            });
            assert_eq!(
                store
                    .stat_blocking(&key(&format!("{account}/d{i}/new.mp3")))
                    .unwrap()
                    .map(|info| info.size),
                Some(3)
            );
        }
    }
}
