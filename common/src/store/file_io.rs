//! The threads that make file-system calls for the whole process.

use std::sync::LazyLock;

use super::StorageError;

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

pub(super) async fn blocking<T, F>(f: F) -> Result<T, StorageError>
where
    F: FnOnce() -> Result<T, StorageError> + Send + 'static,
    T: Send + 'static,
{
    spawn_file_io(f).await.map_err(StorageError::Task)?
}
