use std::fs;
use std::os::unix::fs::FileExt;

use uuid::Uuid;

use super::*;

fn record(payload: &[u8]) -> Record {
    Record {
        held: false,
        appended_ms: now_ms(),
        job_id: Uuid::now_v7(),
        received_secs: 1,
        request_id: "req".into(),
        payload: payload.to_vec(),
    }
}

/// Everything the journal would publish now, in order: (segment, record, end).
async fn unconfirmed(journal: &Journal) -> Vec<(SegmentId, Record, u64)> {
    let mut out = Vec::new();
    for (id, state) in journal.segments() {
        let mut from = state.ack;
        while from < state.end {
            let (records, next) = journal.read(&id, from, state.end, 4096).await.unwrap();
            out.extend(records.into_iter().map(|(r, end)| (id.clone(), r, end)));
            from = next;
        }
    }
    out
}

fn segment_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".wal"))
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn appends_wait_for_the_disk_and_a_restart_publishes_only_what_was_not_confirmed() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path()).unwrap();
    assert!(
        segment_files(dir.path()).is_empty(),
        "made at the first append"
    );
    // Appends at once share their sync; each is answered.
    let records: Vec<Record> = (0..50).map(|i| record(format!("{i}").as_bytes())).collect();
    let appended = futures_util::future::join_all(records.iter().map(|r| journal.append(r))).await;
    assert!(appended.iter().all(Result::is_ok));
    assert_eq!(journal.count(), 50);
    assert_eq!(jobs_on_disk(dir.path()).unwrap(), 50);

    let waiting = unconfirmed(&journal).await;
    let mut payloads: Vec<_> = waiting.iter().map(|(_, r, _)| r.payload.clone()).collect();
    payloads.sort();
    let mut expected: Vec<_> = records.iter().map(|r| r.payload.clone()).collect();
    expected.sort();
    assert_eq!(payloads, expected, "each record once");
    // The first 20 confirmed.
    let (id, _, end) = waiting[19].clone();
    journal.ack(id, end, 20);
    journal.flush().await;
    assert_eq!(journal.count(), 30);
    assert_eq!(
        jobs_on_disk(dir.path()).unwrap(),
        30,
        "the confirm is on disk"
    );
    journal.close().await;
    assert!(journal.append(&record(b"late")).await.is_err(), "closed");

    // The next process adopts the segment, and publishes the 30 not confirmed.
    let next = Journal::open(dir.path()).unwrap();
    assert_eq!(next.count(), 30);
    let again = unconfirmed(&next).await;
    assert_eq!(
        again.iter().map(|(_, r, _)| r).collect::<Vec<_>>(),
        waiting[20..].iter().map(|(_, r, _)| r).collect::<Vec<_>>()
    );
    let (id, _, end) = again.last().unwrap().clone();
    next.ack(id, end, 30);
    next.flush().await;
    assert_eq!(next.count(), 0);
    assert!(
        segment_files(dir.path()).is_empty(),
        "an adopted segment all confirmed is deleted"
    );
}

#[tokio::test]
async fn a_live_owners_segments_are_left_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let first = Journal::open(dir.path()).unwrap();
    first.append(&record(b"one")).await.unwrap();
    let second = Journal::open(dir.path()).unwrap();
    assert_eq!(second.count(), 0, "its owner is alive");
    second.append(&record(b"two")).await.unwrap();
    assert_eq!(segment_files(dir.path()).len(), 2);
    first.close().await;
    let third = Journal::open(dir.path()).unwrap();
    assert_eq!(third.count(), 1, "only the one whose owner is gone");
    assert_eq!(unconfirmed(&third).await[0].1.payload, b"one");
}

#[tokio::test]
async fn a_write_cut_short_is_left_out_and_full_segments_rotate_and_go_once_confirmed() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path()).unwrap();
    let big = vec![7u8; 6 * 1024 * 1024];
    for _ in 0..3 {
        journal.append(&record(&big)).await.unwrap();
    }
    let files = segment_files(dir.path());
    assert_eq!(files.len(), 2, "16 MiB segments: {files:?}");
    let waiting = unconfirmed(&journal).await;
    assert_eq!(waiting.len(), 3);
    // The first segment confirmed through: deleted, as it takes no more appends.
    let (id, _, end) = waiting[1].clone();
    journal.ack(id, end, 2);
    journal.flush().await;
    assert_eq!(segment_files(dir.path()), files[1..]);
    journal.close().await;

    // A crash in the middle of a write: the segment ends with part of a record.
    let path = dir.path().join(&files[1]);
    let file = fs::OpenOptions::new().write(true).open(&path).unwrap();
    let len = file.metadata().unwrap().len();
    let partial = record(b"never answered").encode();
    file.write_all_at(&partial[..partial.len() - 3], len)
        .unwrap();
    let next = Journal::open(dir.path()).unwrap();
    assert_eq!(next.count(), 1, "the whole record only");
    assert_eq!(unconfirmed(&next).await[0].1.payload, big);
}

#[tokio::test]
async fn jobs_an_earlier_version_journaled_are_taken_in_and_bad_ones_set_aside() {
    let dir = tempfile::tempdir().unwrap();
    let job = vmpipe_common::VoicemailJob {
        schema_version: vmpipe_common::job::JOB_SCHEMA_VERSION,
        job_id: Uuid::now_v7(),
        storage_key: "a/b/c.mp3".into(),
        account_id: None,
        document_id: None,
        attachment_name: "c.mp3".into(),
        content_type: None,
        size_bytes: 3,
        sha256: None,
        received_at: chrono::Utc::now(),
        upload_mode: vmpipe_common::UploadMode::Raw,
        kazoo_document: None,
        request_id: "r1".into(),
    };
    let payload = job.to_json();
    fs::write(
        dir.path().join(format!("{}.json", job.job_id.simple())),
        &payload,
    )
    .unwrap();
    let bad = Uuid::now_v7().simple().to_string();
    fs::write(dir.path().join(format!("{bad}.json")), b"not a job").unwrap();
    fs::write(
        dir.path().join(format!("{}.tmp", Uuid::now_v7().simple())),
        b"half",
    )
    .unwrap();
    assert_eq!(jobs_on_disk(dir.path()).unwrap(), 2);

    let journal = Journal::open(dir.path()).unwrap();
    assert_eq!(journal.count(), 1);
    let waiting = unconfirmed(&journal).await;
    assert_eq!(waiting[0].1.payload, payload);
    assert_eq!(waiting[0].1.job_id, job.job_id);
    assert_eq!(waiting[0].1.request_id, "r1");
    assert!(waiting[0].1.held);
    let left: Vec<String> = fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".wal"))
        .collect();
    assert_eq!(
        left,
        vec!["bad".to_owned()],
        "imported, set aside or removed"
    );
    assert!(dir.path().join(format!("bad/{bad}.json")).exists());
    assert_eq!(jobs_on_disk(dir.path()).unwrap(), 1);
}

#[tokio::test]
async fn an_adopted_owner_stays_adopted_while_its_older_segments_hold_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let first = Journal::open(dir.path()).unwrap();
    let big = vec![1u8; 9 * 1024 * 1024];
    first.append(&record(&big)).await.unwrap();
    first.append(&record(&big)).await.unwrap();
    // The newest segment's record confirmed, the older one's not.
    let waiting = unconfirmed(&first).await;
    assert_eq!(segment_files(dir.path()).len(), 2);
    let (newest, _, end) = waiting[1].clone();
    first.ack(newest, end, 1);
    first.close().await;

    let second = Journal::open(dir.path()).unwrap();
    assert_eq!(second.count(), 1);
    assert_eq!(
        segment_files(dir.path()).len(),
        2,
        "the segment its lock is on stays while an older one holds a job"
    );
    let third = Journal::open(dir.path()).unwrap();
    assert_eq!(third.count(), 0, "adopted already: not twice");
    // Confirmed through: both go.
    let (older, _, end) = unconfirmed(&second).await[0].clone();
    second.ack(older, end, 1);
    second.flush().await;
    assert!(segment_files(dir.path()).is_empty());
}

#[tokio::test]
async fn a_segment_that_cannot_be_read_is_set_aside_and_no_longer_counted() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path()).unwrap();
    journal.append(&record(b"x")).await.unwrap();
    journal.close().await;
    let next = Journal::open(dir.path()).unwrap();
    assert_eq!(next.count(), 1);
    let (id, _) = next.segments()[0].clone();
    next.forget(id.clone());
    next.flush().await;
    assert_eq!(next.count(), 0);
    assert!(next.segments().is_empty());
    assert!(dir.path().join("bad").join(id.file_name()).exists());
}
