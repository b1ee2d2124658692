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
use super::segment::{self, Scan, SegmentId, TEMP_EXTENSION};
use super::writer::Writer;
use super::{JournalError, SegmentState, io_err};

/// Where what cannot be read back goes, below the journal.
const BAD_DIR: &str = "bad";

/// An entry of an earlier version: `{job id}.json`.
pub(super) fn is_legacy_entry(name: &str) -> bool {
    name.strip_suffix(".json")
        .is_some_and(|stem| !stem.contains('-') && uuid::Uuid::try_parse(stem).is_ok())
}

/// An owner that is gone, its segments scanned: what [`take`] makes part of the journal.
pub(super) struct Adoption {
    owner: String,
    adopted: Adopted,
    segments: Vec<(SegmentId, io::Result<Scan>)>,
}

/// The lock on an adopted owner's newest segment, held until its segments are gone.
pub(super) struct Adopted {
    pub(super) segment: SegmentId,
    _lock: File,
}

/// Every owner other than `own` whose newest segment nobody holds locked (its process is
/// gone; a process holds its lock from before its segment appears until after its next one
/// does), locked, its segments scanned. Runs on any thread: scanning a large backlog takes a
/// while.
pub(super) fn find(dir: &Path, own: &str) -> Vec<Adoption> {
    let owners = match owners(dir, own) {
        Ok(owners) => owners,
        Err(e) => {
            warn!(journal = %dir.display(), error = %e, "could not list the journal");
            return Vec::new();
        }
    };
    let mut found = Vec::new();
    for (owner, ids) in owners {
        let Some(newest) = ids.last() else { continue };
        let Ok(lock) = OpenOptions::new().read(true).open(newest.path(dir)) else {
            continue;
        };
        if lock.try_lock().is_err() {
            // Its owner is alive, or another process adopted it first.
            continue;
        }
        // Its owner may have moved on to a newer segment since the listing: then it is alive.
        let now = owners_of(dir, &owner);
        if now.last() != Some(newest) {
            continue;
        }
        // A segment it was making when it stopped never took a record.
        remove_temp_files(dir, &owner);
        let segments = now
            .into_iter()
            .map(|id| {
                let scan = File::open(id.path(dir)).and_then(|f| segment::scan(&f));
                (id, scan)
            })
            .collect();
        found.push(Adoption {
            owner,
            adopted: Adopted {
                segment: newest.clone(),
                _lock: lock,
            },
            segments,
        });
    }
    found
}

fn owners(dir: &Path, own: &str) -> io::Result<BTreeMap<String, Vec<SegmentId>>> {
    let mut owners: BTreeMap<String, Vec<SegmentId>> = BTreeMap::new();
    for id in segment::list(dir)? {
        if id.owner != own {
            owners.entry(id.owner.clone()).or_default().push(id);
        }
    }
    Ok(owners)
}

fn owners_of(dir: &Path, owner: &str) -> Vec<SegmentId> {
    segment::list(dir)
        .unwrap_or_default()
        .into_iter()
        .filter(|id| id.owner == owner)
        .collect()
}

/// Makes an adopted owner's segments part of the journal (the writer thread): they are
/// published like this process's own, and deleted once confirmed.
pub(super) fn take(writer: &mut Writer, adoption: Adoption) {
    let Adoption {
        owner,
        adopted,
        segments,
    } = adoption;
    if writer.adopted.contains_key(&owner) {
        return;
    }
    let dir = writer.view.dir.clone();
    let anchor = adopted.segment.clone();
    writer.adopted.insert(owner.clone(), adopted);
    let mut jobs = 0;
    let mut confirmed = Vec::new();
    for (id, scanned) in segments {
        let path = id.path(&dir);
        let scan = match scanned {
            Ok(scan) => scan,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) if id != anchor => {
                set_aside(&dir, &path, &e.to_string());
                continue;
            }
            // The one its lock is on stays in place (see `Writer::tidy_owner`), unpublished.
            Err(e) => {
                error!(segment = %path.display(), error = %e,
                    "journal segment cannot be read back; left out");
                Scan {
                    ack: segment::HEADER_LEN,
                    end: segment::HEADER_LEN,
                    pending: 0,
                    torn: 0,
                }
            }
        };
        if scan.torn > 0 {
            warn!(segment = %path.display(), bytes = scan.torn,
                "the end of a journal segment is not a whole record (a write cut short when \
                 its process stopped: those uploads were not answered); it is left out");
        }
        jobs += scan.pending;
        if scan.pending == 0 && id != anchor {
            confirmed.push(id.clone());
        }
        if let Ok(mut state) = writer.view.segments.lock() {
            state.insert(
                id,
                SegmentState {
                    end: scan.end,
                    ack: scan.ack,
                    pending: scan.pending,
                    closed: true,
                },
            );
        }
        writer.view.add_to_count(scan.pending as isize);
    }
    for id in confirmed {
        writer.delete(&id);
    }
    writer.tidy_owner(&owner);
    if jobs > 0 {
        info!(
            jobs,
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
pub(super) fn set_aside(dir: &Path, path: &Path, reason: &str) {
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
