//! The job journal: every upload's job is appended here, and the upload is answered once its
//! append is on disk. RabbitMQ gets the jobs from here ([`crate::publisher`]), with many
//! confirms in flight, and what it confirms is trimmed. This is the upload's commit point: a
//! job is as durable as its voicemail before the 201, whatever the broker is doing.
//!
//! - **Group commit.** One thread ([`writer`]) makes every append: all the appends waiting
//!   when it comes round go out in one write and one `fdatasync`, and then each is answered.
//! - **Segments** ([`segment`]): append-only files of records ([`record`]), 16 MiB each; one
//!   whose records are all confirmed is deleted. Each records in its header how far RabbitMQ
//!   has confirmed it, so a restart publishes again only what was not confirmed.
//! - **Owners.** Each ingest process writes its own segments and holds a lock on its newest,
//!   so that instances can share the directory: one whose owner is gone (a crash, a restart) is
//!   adopted by whoever sees it first ([`recover`]), and its jobs published.
//! - **Upgrades.** Jobs an earlier version journaled one file each (`*.json`) are appended at
//!   start and their files removed; one that cannot be read goes to `journal/bad/`.
//!
//! The journal keeps a count of its jobs ([`Journal::count`], the `vmpipe_journal_jobs` gauge)
//! and how long they have waited without any being confirmed (`vmpipe_journal_waiting_seconds`).

mod record;
mod recover;
mod segment;
mod writer;

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use tokio::sync::{oneshot, watch};

pub(crate) use self::record::{Record, now_ms};
pub(crate) use self::segment::SegmentId;
use self::writer::Command;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {op} failed for {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("journal task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("the journal's writer has stopped")]
    Stopped,
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> JournalError + 'a {
    move |source| JournalError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// A segment as the publisher sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SegmentState {
    /// Where its last committed record ends.
    pub end: u64,
    /// Where the first record not confirmed yet starts.
    pub ack: u64,
    /// Records from `ack` to `end`.
    pub pending: usize,
    /// No more appends (an older segment of this process, or one adopted).
    pub closed: bool,
}

/// What the writer and the publisher share.
#[derive(Debug)]
struct View {
    dir: PathBuf,
    /// This process's name in segment names.
    owner: String,
    segments: Mutex<BTreeMap<SegmentId, SegmentState>>,
    count: AtomicUsize,
    /// Bumped whenever records are committed or adopted.
    commits: watch::Sender<u64>,
}

impl View {
    fn add_to_count(&self, delta: isize) {
        let previous = self
            .count
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_add_signed(delta))
            })
            .unwrap_or_default();
        metrics::gauge!("vmpipe_journal_jobs").set(previous.saturating_add_signed(delta) as f64);
    }
}

/// Cheap to clone; the writer stops when the last clone is dropped.
#[derive(Clone, Debug)]
pub(crate) struct Journal {
    commands: mpsc::Sender<Command>,
    view: Arc<View>,
}

impl Journal {
    /// Opens (creating) the journal directory: adopts the segments of owners that are gone
    /// (this process's predecessor among them), appends the jobs an earlier version left one
    /// file each, and starts the writer.
    pub(crate) fn open(dir: &Path) -> Result<Self, JournalError> {
        std::fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
        let view = Arc::new(View {
            dir: dir.to_path_buf(),
            owner: uuid::Uuid::now_v7().simple().to_string(),
            segments: Mutex::default(),
            count: AtomicUsize::new(0),
            commits: watch::channel(0).0,
        });
        view.add_to_count(0);
        let (commands, receiver) = mpsc::channel();
        writer::start(view.clone(), receiver)?;
        Ok(Self { commands, view })
    }

    /// Appends `record`; returns once it is on disk (with whatever else was waiting).
    pub(crate) async fn append(&self, record: &Record) -> Result<(), JournalError> {
        let (done, outcome) = oneshot::channel();
        self.commands
            .send(Command::Append {
                frame: record.encode(),
                done,
            })
            .map_err(|_| JournalError::Stopped)?;
        outcome.await.map_err(|_| JournalError::Stopped)?
    }

    /// Jobs not confirmed yet, without touching the disk.
    pub(crate) fn count(&self) -> usize {
        self.view.count.load(Ordering::Relaxed)
    }

    /// Every segment with what it holds, in publishing order.
    pub(crate) fn segments(&self) -> Vec<(SegmentId, SegmentState)> {
        self.view
            .segments
            .lock()
            .map(|s| s.iter().map(|(id, s)| (id.clone(), s.clone())).collect())
            .unwrap_or_default()
    }

    /// Changes whenever there is more to publish.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.view.commits.subscribe()
    }

    /// The whole records of segment `id` from `from` (up to `upto`, about `max_bytes` of
    /// them), each with where it ends; and where the next starts.
    pub(crate) async fn read(
        &self,
        id: &SegmentId,
        from: u64,
        upto: u64,
        max_bytes: usize,
    ) -> Result<(Vec<(Record, u64)>, u64), JournalError> {
        let path = id.path(&self.view.dir);
        vmpipe_common::store::spawn_file_io(move || {
            let file = std::fs::File::open(&path).map_err(io_err("open", &path))?;
            segment::read(&file, from, upto, max_bytes).map_err(io_err("read", &path))
        })
        .await?
    }

    /// RabbitMQ confirmed segment `id` up to `ack` (`records` more of its records).
    pub(crate) fn ack(&self, id: SegmentId, ack: u64, records: usize) {
        let _ = self.commands.send(Command::Ack { id, ack, records });
    }

    /// Segment `id` cannot be read (gone, damaged): dropped, set aside in `journal/bad/`.
    pub(crate) fn forget(&self, id: SegmentId) {
        let _ = self.commands.send(Command::Forget(id));
    }

    /// Stops the writer once everything asked of it so far is done, releasing its segments
    /// (for another process to adopt). Appends after it fail.
    pub(crate) async fn close(&self) {
        let (done, closed) = oneshot::channel();
        if self.commands.send(Command::Close(done)).is_ok() {
            let _ = closed.await;
        }
    }

    /// Waits until everything asked of the writer so far is done (acks recorded).
    pub(crate) async fn flush(&self) {
        let (done, flushed) = oneshot::channel();
        if self.commands.send(Command::Flush(done)).is_ok() {
            let _ = flushed.await;
        }
    }
}

/// The jobs waiting in the journal directory `dir`, read from its files: what a restarted
/// ingest would publish. For inspection (the tests use it); ingest itself keeps a count.
pub fn jobs_on_disk(dir: &Path) -> io::Result<usize> {
    let mut jobs = 0;
    for entry in std::fs::read_dir(dir)?.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if SegmentId::parse(&name).is_some() {
            match std::fs::File::open(entry.path()).and_then(|f| segment::scan(&f)) {
                Ok(scan) => jobs += scan.pending,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        } else if recover::is_legacy_entry(&name) {
            jobs += 1;
        }
    }
    Ok(jobs)
}

#[cfg(test)]
mod tests;
