//! Segment files: `{owner}-{seq:08}.wal` in the journal directory, a 64-byte header then
//! records ([`super::record`]). `owner` is the ingest process that wrote it (a UUIDv7, so
//! older owners sort first); `seq` counts its segments.
//!
//! The header holds a magic and the *ack offset*: where the first record RabbitMQ has not
//! confirmed starts. It is rewritten in place as confirms come, without an fsync: losing it
//! in a power cut only means publishing again what was confirmed since (a repeat, which the
//! worker absorbs).
//!
//! An owner holds an exclusive lock on its newest segment while it runs, so another process
//! sharing the directory can tell a live owner from a dead one (whose segments it adopts). A
//! new segment is made under a temporary name, locked, then renamed into place, so it is
//! never seen unlocked.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::record::{Decoded, Record};

pub(crate) const HEADER_LEN: u64 = 64;
const MAGIC: &[u8; 8] = b"VMPJRNL1";
const EXTENSION: &str = "wal";
/// A segment being made.
pub(crate) const TEMP_EXTENSION: &str = "tmp";

/// A segment: its owner and number. Ordered as they are to be published.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct SegmentId {
    pub owner: String,
    pub seq: u64,
}

impl SegmentId {
    pub(crate) fn file_name(&self) -> String {
        format!("{}-{:08}.{EXTENSION}", self.owner, self.seq)
    }

    pub(crate) fn path(&self, dir: &Path) -> PathBuf {
        dir.join(self.file_name())
    }

    /// The segment a file name is, if it is one.
    pub(crate) fn parse(name: &str) -> Option<Self> {
        let stem = name.strip_suffix(&format!(".{EXTENSION}"))?;
        let (owner, seq) = stem.rsplit_once('-')?;
        if owner.is_empty() || !owner.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        Some(Self {
            owner: owner.to_owned(),
            seq: seq.parse().ok()?,
        })
    }
}

/// Makes segment `id` in `dir`: header written and synced, locked, renamed into place, the
/// directory synced.
pub(crate) fn create(dir: &Path, id: &SegmentId) -> io::Result<File> {
    let path = id.path(dir);
    let temp = path.with_extension(TEMP_EXTENSION);
    let made = (|| {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&temp)?;
        file.try_lock().map_err(io::Error::other)?;
        let mut header = [0u8; HEADER_LEN as usize];
        header[..8].copy_from_slice(MAGIC);
        header[8..16].copy_from_slice(&HEADER_LEN.to_le_bytes());
        file.write_all_at(&header, 0)?;
        file.sync_data()?;
        fs::rename(&temp, &path)?;
        File::open(dir)?.sync_all()?;
        Ok(file)
    })();
    if made.is_err() {
        let _ = fs::remove_file(&temp);
    }
    made
}

/// Records `ack` (the offset of the first unconfirmed record) in the header.
pub(crate) fn write_ack(file: &File, ack: u64) -> io::Result<()> {
    file.write_all_at(&ack.to_le_bytes(), 8)
}

/// What a segment holds, read from its start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Scan {
    pub ack: u64,
    /// Where its last whole record ends.
    pub end: u64,
    /// Records from `ack` to `end`.
    pub pending: usize,
    /// Bytes past `end` that are not a record (a write cut short by a crash).
    pub torn: u64,
}

/// Reads a segment through, to find its ack offset, its end and how many records wait.
pub(crate) fn scan(file: &File) -> io::Result<Scan> {
    let len = file.metadata()?.len();
    let mut header = [0u8; HEADER_LEN as usize];
    file.read_exact_at(&mut header, 0)?;
    if &header[..8] != MAGIC {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a journal segment",
        ));
    }
    let ack =
        u64::from_le_bytes(header[8..16].try_into().unwrap_or_default()).clamp(HEADER_LEN, len);
    let mut offset = HEADER_LEN;
    let mut pending = 0;
    // Where a record ends at or before the recorded offset (a damaged header cannot point
    // into the middle of one).
    let mut snapped = HEADER_LEN;
    loop {
        let (records, next) = read(file, offset, len, SCAN_CHUNK)?;
        if records.is_empty() {
            break;
        }
        for (_, end) in &records {
            if *end > ack {
                pending += 1;
            } else {
                snapped = *end;
            }
        }
        offset = next;
    }
    Ok(Scan {
        ack: snapped,
        end: offset,
        pending,
        torn: len - offset,
    })
}

const SCAN_CHUNK: usize = 1024 * 1024;

/// The whole records in `from..upto` (at least one, if one starts at `from`, even one longer
/// than `max_bytes`), each with the offset where it ends; and where the next one starts.
pub(crate) fn read(
    file: &File,
    from: u64,
    upto: u64,
    max_bytes: usize,
) -> io::Result<(Vec<(Record, u64)>, u64)> {
    let mut records = Vec::new();
    let mut offset = from;
    let mut want = (upto.saturating_sub(from) as usize).min(max_bytes);
    while want > 0 {
        let mut buffer = vec![0; want];
        let read = read_at_most(file, &mut buffer, offset)?;
        buffer.truncate(read);
        let mut at = 0;
        let mut incomplete_len = None;
        while at < buffer.len() {
            match Record::decode(&buffer[at..]) {
                Decoded::Record(record, len) => {
                    at += len;
                    records.push((*record, offset + at as u64));
                }
                Decoded::Incomplete => {
                    incomplete_len = frame_len(&buffer[at..]);
                    break;
                }
                Decoded::Invalid => break,
            }
        }
        offset += at as u64;
        // A first record longer than the chunk: read it whole, once.
        match incomplete_len {
            Some(len) if records.is_empty() && (offset + len as u64) <= upto => want = len,
            _ => want = 0,
        }
    }
    Ok((records, offset))
}

/// The length of the frame that starts `bytes`, if its header is there.
fn frame_len(bytes: &[u8]) -> Option<usize> {
    let header = bytes.get(..super::record::FRAME_HEADER)?;
    let body = u32::from_le_bytes(header[..4].try_into().ok()?) as usize;
    Some(super::record::FRAME_HEADER + body)
}

fn read_at_most(file: &File, buffer: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut read = 0;
    while read < buffer.len() {
        match file.read_at(&mut buffer[read..], offset + read as u64) {
            Ok(0) => break,
            Ok(n) => read += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(read)
}

/// Segments in `dir`, in publishing order.
pub(crate) fn list(dir: &Path) -> io::Result<Vec<SegmentId>> {
    let mut ids: Vec<SegmentId> = fs::read_dir(dir)?
        .flatten()
        .filter_map(|e| SegmentId::parse(e.file_name().to_str()?))
        .collect();
    ids.sort();
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn record(i: u8, payload_len: usize) -> Record {
        Record {
            held: false,
            appended_ms: 1,
            job_id: Uuid::from_bytes([i; 16]),
            received_secs: 2,
            request_id: "r".into(),
            payload: vec![i; payload_len],
        }
    }

    #[test]
    fn names_parse_back() {
        let id = SegmentId {
            owner: Uuid::now_v7().simple().to_string(),
            seq: 7,
        };
        assert_eq!(SegmentId::parse(&id.file_name()), Some(id));
        for other in [
            "x.json",
            "bad",
            "-1.wal",
            "zz-1.wal",
            "ab-x.wal",
            "ab-1.wal.tmp",
        ] {
            assert_eq!(SegmentId::parse(other), None, "{other}");
        }
    }

    #[test]
    fn reads_in_chunks_stop_at_a_torn_tail_and_scans_count_past_the_ack() {
        let dir = tempfile::tempdir().unwrap();
        let id = SegmentId {
            owner: "ab".into(),
            seq: 0,
        };
        let file = create(dir.path(), &id).unwrap();
        let mut bytes = Vec::new();
        for i in 0..5 {
            record(i, 100 + i as usize * 1000).encode_into(&mut bytes);
        }
        let whole = HEADER_LEN + bytes.len() as u64;
        // A record cut short at the end.
        let torn = record(9, 50).encode();
        bytes.extend_from_slice(&torn[..20]);
        file.write_all_at(&bytes, HEADER_LEN).unwrap();

        // Small chunks: one record at a time, even one longer than the chunk.
        let mut offset = HEADER_LEN;
        let mut seen = Vec::new();
        loop {
            let (records, next) = read(&file, offset, whole + 20, 10).unwrap();
            if records.is_empty() {
                break;
            }
            seen.extend(records.into_iter().map(|(r, _)| r.job_id.as_bytes()[0]));
            offset = next;
        }
        assert_eq!(seen, [0, 1, 2, 3, 4]);
        assert_eq!(offset, whole);

        let (first, end_of_first) = read(&file, HEADER_LEN, whole, 1 << 20).unwrap().0[0].clone();
        assert_eq!(first, record(0, 100));
        write_ack(&file, end_of_first).unwrap();
        let scan = scan(&file).unwrap();
        assert_eq!(
            scan,
            Scan {
                ack: end_of_first,
                end: whole,
                pending: 4,
                torn: 20
            }
        );
    }

    #[test]
    fn a_new_segment_is_locked_while_its_file_is_open() {
        let dir = tempfile::tempdir().unwrap();
        let id = SegmentId {
            owner: "cd".into(),
            seq: 3,
        };
        let file = create(dir.path(), &id).unwrap();
        let other = File::open(id.path(dir.path())).unwrap();
        assert!(other.try_lock().is_err(), "locked by its owner");
        drop(file);
        assert!(other.try_lock().is_ok(), "free once its owner is gone");
        assert_eq!(list(dir.path()).unwrap(), vec![id]);
    }
}
