//! The journal's one writer thread: group commit of appends, the confirmed offsets, segments
//! made, rotated and deleted, and (every [`ADOPT_EVERY`]) the segments of owners that are gone.
//!
//! Commands are taken in order: whatever is waiting when the thread comes round (up to
//! [`MAX_BATCH`]) is one batch, its appends written together and synced once, then answered.
//! A batch that cannot be written (the disk full) fails each of its appends, and the segment
//! is cut back to its last committed record, so nothing of it is ever published.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tracing::{error, warn};

use super::segment::{self, HEADER_LEN, SegmentId};
use super::{JournalError, SegmentState, View, io_err, recover};

/// A segment takes appends until it is this long.
pub(super) const SEGMENT_BYTES: u64 = 16 * 1024 * 1024;
/// The most one batch writes.
const MAX_BATCH: usize = 8 * 1024 * 1024;
/// How often the directory is looked at for the segments of owners that are gone.
const ADOPT_EVERY: Duration = Duration::from_secs(30);
/// How often the thread wakes with nothing to do (the waiting gauge).
const TICK: Duration = Duration::from_secs(1);

pub(super) enum Command {
    Append {
        frame: Vec<u8>,
        done: oneshot::Sender<Result<(), JournalError>>,
    },
    Ack {
        id: SegmentId,
        ack: u64,
        records: usize,
    },
    /// A segment that cannot be read (gone, or damaged): dropped from the journal, its file
    /// (if any) set aside in `journal/bad/`.
    Forget(SegmentId),
    Flush(oneshot::Sender<()>),
    /// Ends the thread (after the commands before it), releasing its files and locks.
    Close(oneshot::Sender<()>),
}

pub(super) struct Writer {
    pub(super) view: Arc<View>,
    /// This process's segment taking appends.
    active: Option<(SegmentId, File)>,
    next_seq: u64,
    buffer: Vec<u8>,
    /// Owners adopted: the lock on each one's newest segment, held until its segments are gone.
    pub(super) adopted: HashMap<String, recover::Adopted>,
    last_adopt: Instant,
    /// Owners found gone, scanned on the file I/O threads (not to hold up appends).
    adoptions: (
        mpsc::Sender<recover::Adoption>,
        mpsc::Receiver<recover::Adoption>,
    ),
    /// A failed write could not be undone: no more appends (see [`Writer::commit`]).
    broken: bool,
    /// When the jobs waiting last made progress (one confirmed, or the first one journaled).
    progress: Instant,
}

/// Starts the writer: adopts, imports the files of an earlier version, then serves `commands`
/// on a thread of its own until every sender is gone.
pub(super) fn start(view: Arc<View>, commands: Receiver<Command>) -> Result<(), JournalError> {
    let mut writer = Writer {
        view,
        active: None,
        next_seq: 0,
        buffer: Vec::new(),
        adopted: HashMap::new(),
        last_adopt: Instant::now(),
        adoptions: mpsc::channel(),
        progress: Instant::now(),
        broken: false,
    };
    for adoption in recover::find(&writer.view.dir, &writer.view.owner) {
        recover::take(&mut writer, adoption);
    }
    recover::import_legacy(&mut writer)?;
    std::thread::Builder::new()
        .name("vmpipe-journal".into())
        .spawn(move || writer.serve(&commands))
        .map_err(io_err(
            "start the writer thread",
            std::path::Path::new("journal"),
        ))?;
    Ok(())
}

impl Writer {
    fn serve(mut self, commands: &Receiver<Command>) {
        let mut appends = Vec::new();
        let mut flushed = Vec::new();
        let mut closing = false;
        while !closing {
            let first = match commands.recv_timeout(TICK) {
                Ok(command) => Some(command),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut bytes = 0;
            let mut next = first;
            while let Some(command) = next.take() {
                match command {
                    Command::Append { frame, done } => {
                        bytes += frame.len();
                        appends.push((frame, done));
                    }
                    Command::Ack { id, ack, records } => self.ack(&id, ack, records),
                    Command::Forget(id) => self.forget(&id),
                    Command::Flush(done) => flushed.push(done),
                    Command::Close(done) => {
                        flushed.push(done);
                        closing = true;
                    }
                }
                if bytes < MAX_BATCH && !closing {
                    next = commands.try_recv().ok();
                }
            }
            if !appends.is_empty() {
                let (frames, waiters): (Vec<_>, Vec<_>) = appends.drain(..).unzip();
                match self.commit(&frames) {
                    Ok(()) => waiters.into_iter().for_each(|w| {
                        let _ = w.send(Ok(()));
                    }),
                    Err((op, path, e)) => waiters.into_iter().for_each(|w| {
                        let _ = w.send(Err(JournalError::Io {
                            op,
                            path: path.clone(),
                            source: copy_of(&e),
                        }));
                    }),
                }
            }
            if closing {
                // Files and locks released before the closer hears of it.
                self.active = None;
                self.adopted.clear();
            }
            for done in flushed.drain(..) {
                let _ = done.send(());
            }
            while let Ok(adoption) = self.adoptions.1.try_recv() {
                recover::take(&mut self, adoption);
            }
            if self.last_adopt.elapsed() >= ADOPT_EVERY {
                self.last_adopt = Instant::now();
                let (dir, owner) = (self.view.dir.clone(), self.view.owner.clone());
                let found = self.adoptions.0.clone();
                drop(vmpipe_common::store::spawn_file_io(move || {
                    for adoption in recover::find(&dir, &owner) {
                        let _ = found.send(adoption);
                    }
                }));
            }
            self.report_waiting();
        }
    }

    /// Writes `frames` at the end of the active segment (a new one if it is full) and syncs.
    pub(super) fn commit(
        &mut self,
        frames: &[Vec<u8>],
    ) -> Result<(), (&'static str, std::path::PathBuf, io::Error)> {
        if self.broken {
            return Err((
                "write",
                self.view.dir.clone(),
                io::Error::other("an earlier failed write could not be undone; restart ingest"),
            ));
        }
        let total: u64 = frames.iter().map(|f| f.len() as u64).sum();
        let full = |end: u64| end > HEADER_LEN && end + total > SEGMENT_BYTES;
        // A closed active segment (a failed write that could not be cut back) takes no more.
        let end = self
            .active
            .as_ref()
            .map(|(id, _)| self.state(id))
            .filter(|s| !s.closed);
        if end.is_none_or(|s| full(s.end)) {
            self.rotate()?;
        }
        let Some((id, file)) = &self.active else {
            unreachable!("rotate makes the active segment");
        };
        let path = id.path(&self.view.dir);
        let at = self.state(id).end;
        self.buffer.clear();
        for frame in frames {
            self.buffer.extend_from_slice(frame);
        }
        let written = file
            .write_all_at(&self.buffer, at)
            .map_err(|e| ("write", e))
            .and_then(|()| file.sync_data().map_err(|e| ("fsync", e)));
        if self.buffer.capacity() > MAX_BATCH * 2 {
            self.buffer = Vec::new();
        }
        if let Err((op, e)) = written {
            // Nothing of this batch may be read back: cut back to the last committed record,
            // or else end the segment's records there (a frame of zeros is no record). Either
            // way the segment takes no more appends after a failure it could not undo.
            let cut = file.set_len(at).and_then(|()| file.sync_data());
            if let Err(cut) = cut {
                let ended = file
                    .write_all_at(&[0; super::record::FRAME_HEADER], at)
                    .and_then(|()| file.sync_data());
                error!(segment = %path.display(), error = %cut, ended = ended.is_ok(),
                    "could not cut a failed journal write back; the segment is closed");
                if ended.is_err() {
                    // Neither: what follows may be read back after a restart. Refuse
                    // appends rather than risk publishing a job whose upload was refused.
                    self.broken = true;
                }
                let id = id.clone();
                self.close_segment(&id);
            }
            return Err((op, path, e));
        }
        let id = id.clone();
        let records = frames.len();
        if self.view.count.load(std::sync::atomic::Ordering::Relaxed) == 0 {
            self.progress = Instant::now();
        }
        if let Ok(mut segments) = self.view.segments.lock()
            && let Some(state) = segments.get_mut(&id)
        {
            state.end = at + total;
            state.pending += records;
        }
        self.view.add_to_count(records as isize);
        self.view.commits.send_modify(|n| *n += 1);
        Ok(())
    }

    fn state(&self, id: &SegmentId) -> SegmentState {
        self.view
            .segments
            .lock()
            .ok()
            .and_then(|s| s.get(id).cloned())
            .unwrap_or(SegmentState {
                end: HEADER_LEN,
                ack: HEADER_LEN,
                pending: 0,
                closed: true,
            })
    }

    /// Makes the next segment and closes the current one (the new one is locked first).
    fn rotate(&mut self) -> Result<(), (&'static str, std::path::PathBuf, io::Error)> {
        let id = SegmentId {
            owner: self.view.owner.clone(),
            seq: self.next_seq,
        };
        let file = segment::create(&self.view.dir, &id)
            .map_err(|e| ("create", id.path(&self.view.dir), e))?;
        self.next_seq += 1;
        if let Ok(mut segments) = self.view.segments.lock() {
            segments.insert(
                id.clone(),
                SegmentState {
                    end: HEADER_LEN,
                    ack: HEADER_LEN,
                    pending: 0,
                    closed: false,
                },
            );
        }
        if let Some((previous, _)) = self.active.replace((id, file)) {
            self.close_segment(&previous);
        }
        Ok(())
    }

    /// No more appends to `id`: deleted now if all of it is confirmed.
    fn close_segment(&mut self, id: &SegmentId) {
        let done = self.view.segments.lock().ok().and_then(|mut s| {
            let state = s.get_mut(id)?;
            state.closed = true;
            Some(state.ack >= state.end)
        });
        if done == Some(true) {
            self.delete(id);
        }
    }

    /// Records a confirm; a closed segment confirmed to its end is deleted.
    fn ack(&mut self, id: &SegmentId, ack: u64, records: usize) {
        let state = self.view.segments.lock().ok().and_then(|mut s| {
            let state = s.get_mut(id)?;
            if ack <= state.ack {
                return None;
            }
            state.ack = ack;
            state.pending = state.pending.saturating_sub(records);
            Some(state.clone())
        });
        let Some(state) = state else { return };
        self.view.add_to_count(-(records as isize));
        self.progress = Instant::now();
        if state.closed && state.ack >= state.end {
            self.delete(id);
            return;
        }
        let written = match &self.active {
            Some((active, file)) if active == id => segment::write_ack(file, ack),
            _ => OpenOptions::new()
                .write(true)
                .open(id.path(&self.view.dir))
                .and_then(|file| segment::write_ack(&file, ack)),
        };
        if let Err(e) = written {
            // Only means publishing these again after a restart.
            warn!(segment = %id.file_name(), error = %e, "could not record a journal confirm");
        }
    }

    /// Deletes a segment all of whose records are confirmed.
    pub(super) fn delete(&mut self, id: &SegmentId) {
        let path = id.path(&self.view.dir);
        if let Err(e) = fs::remove_file(&path)
            && e.kind() != io::ErrorKind::NotFound
        {
            warn!(segment = %path.display(), error = %e,
                "could not delete a confirmed journal segment");
        }
        if let Ok(mut segments) = self.view.segments.lock() {
            segments.remove(id);
        }
        self.tidy_owner(&id.owner);
    }

    /// An adopted owner's lock goes with its last segment; the segment it is on is kept while
    /// older ones remain, so that nobody else takes the owner for unadopted.
    pub(super) fn tidy_owner(&mut self, owner: &str) {
        let Some(anchor) = self.adopted.get(owner).map(|a| a.segment.clone()) else {
            return;
        };
        let left: Vec<(SegmentId, SegmentState)> = self
            .view
            .segments
            .lock()
            .map(|s| {
                s.iter()
                    .filter(|(id, _)| id.owner == owner)
                    .map(|(id, state)| (id.clone(), state.clone()))
                    .collect()
            })
            .unwrap_or_default();
        match left.as_slice() {
            // An adopted owner's last segment: its lock goes with it.
            [] => {
                self.adopted.remove(owner);
            }
            // Only the segment its lock is on (kept while older ones remain, so that nobody
            // takes the owner for unadopted), all confirmed: it goes too.
            [(only, state)] if *only == anchor && state.ack >= state.end => self.delete(&anchor),
            _ => {}
        }
    }

    /// Drops a segment that cannot be read: set aside, its jobs no longer counted.
    fn forget(&mut self, id: &SegmentId) {
        let state = self
            .view
            .segments
            .lock()
            .ok()
            .and_then(|s| s.get(id).cloned());
        let Some(state) = state else { return };
        self.view.add_to_count(-(state.pending as isize));
        if let Ok(mut segments) = self.view.segments.lock()
            && let Some(state) = segments.get_mut(id)
        {
            state.pending = 0;
            state.ack = state.end;
        }
        let path = id.path(&self.view.dir);
        if path.exists() && self.active.as_ref().is_none_or(|(active, _)| active != id) {
            recover::set_aside(&self.view.dir, &path, "cannot be read back");
        }
        self.close_segment(id);
        self.delete(id);
    }

    /// `vmpipe_journal_waiting_seconds`: how long jobs have waited without one confirmed.
    fn report_waiting(&self) {
        let waiting = if self.view.count.load(std::sync::atomic::Ordering::Relaxed) == 0 {
            0.0
        } else {
            self.progress.elapsed().as_secs_f64()
        };
        metrics::gauge!("vmpipe_journal_waiting_seconds").set(waiting);
    }
}

/// The same error again (the OS's code kept: a full disk is told by it), for each waiter.
fn copy_of(e: &io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::new(e.kind(), e.to_string()),
    }
}
