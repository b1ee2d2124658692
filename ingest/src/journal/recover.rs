//! What a journal directory holds besides this process's own segments: those of owners that
//! are gone (adopted, and published by this process), and the one-file-per-job entries of
//! earlier versions (appended as records, then removed).

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::Path;

use tracing::{error, info, warn};
use vmpipe_common::VoicemailJob;

use super::record::{Record, now_ms};
use super::segment::{self, SegmentId, TEMP_EXTENSION};
use super::writer::Writer;
use super::{JournalError, SegmentState, io_err};

/// Where what cannot be read back goes, below the journal.
const BAD_DIR: &str = "bad";

/// An entry of an earlier version: `{job id}.json`.
pub(super) fn is_legacy_entry(name: &str) -> bool {
    name.strip_suffix(".json")
        .is_some_and(|stem| !stem.contains('-') && uuid::Uuid::try_parse(stem).is_ok())
}

/// Adopts the segments of every owner whose newest segment nobody holds locked: its process
/// is gone. They are published like this process's own, and deleted once confirmed.
pub(super) fn adopt(writer: &mut Writer) {
    let dir = writer.view.dir.clone();
    let ids = match segment::list(&dir) {
        Ok(ids) => ids,
        Err(e) => {
            warn!(journal = %dir.display(), error = %e, "could not list the journal");
            return;
        }
    };
    let mut owners: BTreeMap<String, Vec<SegmentId>> = BTreeMap::new();
    for id in ids {
        if id.owner != writer.view.owner && !writer.adopted.contains_key(&id.owner) {
            owners.entry(id.owner.clone()).or_default().push(id);
        }
    }
    let mut adopted_jobs = 0;
    for (owner, ids) in owners {
        let Some(newest) = ids.last() else { continue };
        let lock = match OpenOptions::new().read(true).open(newest.path(&dir)) {
            Ok(file) => file,
            Err(_) => continue,
        };
        if lock.try_lock().is_err() {
            // Its owner is alive (or another process adopted it first).
            continue;
        }
        // A segment it was making when it stopped never took a record.
        remove_temp_files(&dir, &owner);
        writer.adopted.insert(owner.clone(), lock);
        for id in &ids {
            let path = id.path(&dir);
            let scanned = File::open(&path).and_then(|f| segment::scan(&f));
            match scanned {
                Ok(scan) => {
                    if scan.torn > 0 {
                        warn!(segment = %path.display(), bytes = scan.torn,
                            "the end of a journal segment is not a whole record (a write cut \
                             short when its process stopped: those uploads were not answered); \
                             it is left out");
                    }
                    adopted_jobs += scan.pending;
                    if let Ok(mut segments) = writer.view.segments.lock() {
                        segments.insert(
                            id.clone(),
                            SegmentState {
                                end: scan.end,
                                ack: scan.ack,
                                pending: scan.pending,
                                closed: true,
                            },
                        );
                    }
                    writer.view.add_to_count(scan.pending as isize);
                    if scan.pending == 0 {
                        writer.delete(id);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => set_aside(&dir, &path, &e.to_string()),
            }
        }
        if !writer
            .view
            .segments
            .lock()
            .is_ok_and(|s| s.keys().any(|id| id.owner == owner))
        {
            writer.adopted.remove(&owner);
        }
    }
    if adopted_jobs > 0 {
        info!(
            jobs = adopted_jobs,
            "journaled jobs of an earlier run (or of an instance that is gone) to publish"
        );
        writer.view.commits.send_modify(|n| *n += 1);
    }
}

fn remove_temp_files(dir: &Path, owner: &str) {
    let prefix = format!("{owner}-");
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(&prefix) && name.ends_with(&format!(".{TEMP_EXTENSION}")) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Moves what cannot be read back to `journal/bad/`, for inspection, so that it is not tried
/// again and again.
fn set_aside(dir: &Path, path: &Path, reason: &str) {
    metrics::counter!("vmpipe_journal_bad_entries_total").increment(1);
    let bad = dir.join(BAD_DIR);
    let moved = fs::create_dir_all(&bad)
        .and_then(|()| fs::rename(path, bad.join(path.file_name().unwrap_or_default())));
    match moved {
        Ok(()) => warn!(entry = %path.display(), %reason,
            "journal entry cannot be read back; moved to journal/bad/"),
        Err(e) => error!(entry = %path.display(), %reason, error = %e,
            "journal entry cannot be read back, nor moved aside; left out"),
    }
}

/// Appends the jobs an earlier version journaled one file each, then removes their files
/// (a crash in between only publishes them twice). Their half-written files (`*.tmp`) were
/// never answered: removed.
pub(super) fn import_legacy(writer: &mut Writer) -> Result<(), JournalError> {
    let dir = writer.view.dir.clone();
    let mut entries = Vec::new();
    for entry in fs::read_dir(&dir).map_err(io_err("list", &dir))?.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if is_legacy_entry(&name) {
            entries.push(entry.path());
        } else if name
            .strip_suffix(&format!(".{TEMP_EXTENSION}"))
            .is_some_and(|stem| uuid::Uuid::try_parse(stem).is_ok())
        {
            let _ = fs::remove_file(entry.path());
        }
    }
    entries.sort();
    for group in entries.chunks(1024) {
        let mut frames = Vec::with_capacity(group.len());
        let mut imported = Vec::with_capacity(group.len());
        for path in group {
            let read = fs::read(path);
            match read.map(|payload| (VoicemailJob::from_json(&payload), payload)) {
                Ok((Ok(job), payload)) => {
                    frames.push(
                        Record {
                            held: true,
                            appended_ms: now_ms(),
                            job_id: job.job_id,
                            received_secs: job.received_at.timestamp().max(0) as u64,
                            request_id: job.request_id,
                            payload,
                        }
                        .encode(),
                    );
                    imported.push(path);
                }
                // Published and removed by another instance sharing the journal.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => set_aside(&dir, path, &format!("cannot read it: {e}")),
                Ok((Err(e), _)) => set_aside(&dir, path, &format!("not a job: {e}")),
            }
        }
        if frames.is_empty() {
            continue;
        }
        writer
            .commit(&frames)
            .map_err(|(op, path, source)| JournalError::Io { op, path, source })?;
        for path in &imported {
            let _ = fs::remove_file(path);
        }
        info!(
            jobs = imported.len(),
            "journaled jobs of an earlier version taken into the journal"
        );
    }
    Ok(())
}
