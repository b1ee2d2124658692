//! The job journal under pressure: a very large backlog that `/readyz` is asked about in a
//! flood, and entries that cannot be read back.

use std::path::Path;
use std::time::{Duration, Instant};

use vmpipe_common::job::JOB_SCHEMA_VERSION;
use vmpipe_common::settings::SecretUrl;
use vmpipe_common::{UploadMode, VoicemailJob};
use vmpipe_tests::*;

use super::{assert_kazoo_round_trip, assert_nothing_outside};

fn job(storage_key: &str) -> VoicemailJob {
    VoicemailJob {
        schema_version: JOB_SCHEMA_VERSION,
        job_id: uuid::Uuid::now_v7(),
        storage_key: storage_key.into(),
        account_id: None,
        document_id: None,
        attachment_name: "x.mp3".into(),
        content_type: Some("audio/mpeg".into()),
        size_bytes: 1,
        sha256: None,
        received_at: chrono::Utc::now(),
        upload_mode: UploadMode::Raw,
        kazoo_document: None,
        request_id: "r".into(),
    }
}

fn readyz_journaled(body: &str) -> Option<u64> {
    serde_json::from_str::<serde_json::Value>(body).ok()?["journaled_jobs"].as_u64()
}

/// With 100,000 jobs journaled (RabbitMQ away), a flood of `/readyz` does not list the journal
/// each time: it answers from a count, fast, and the count is right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_counts_the_journal_instead_of_listing_it() {
    let sandbox = tempfile::tempdir().unwrap();
    let journal = sandbox.path().join("storage/journal");
    std::fs::create_dir_all(&journal).unwrap();
    const JOURNALED: u64 = 100_000;
    let payload = job("a/b/x.mp3").to_json();
    for _ in 0..JOURNALED {
        let id = uuid::Uuid::now_v7().simple();
        std::fs::write(journal.join(format!("{id}.json")), &payload).unwrap();
    }
    let ingest = TestIngest::start(Options {
        sandbox: Some(sandbox),
        // Nothing listens there: every job stays journaled.
        amqp_url: format!("amqp://guest:guest@127.0.0.1:{}/%2f", free_port()),
        ..Options::default()
    })
    .await;
    let started = Instant::now();
    let calls = 100;
    let flood: Vec<_> = (0..calls)
        .map(|_| {
            let port = ingest.port;
            tokio::spawn(async move { http_get(port, "/readyz").await })
        })
        .collect();
    for call in flood {
        let (status, body) = call.await.unwrap().expect("answers");
        assert_eq!(status, 200, "{body}");
        assert_eq!(readyz_journaled(&body), Some(JOURNALED), "{body}");
    }
    let took = started.elapsed();
    println!("{calls} /readyz with {JOURNALED} journaled jobs: {took:?}");
    assert!(
        took < Duration::from_secs(3),
        "{calls} /readyz took {took:?}"
    );
    // The count follows new uploads while RabbitMQ is away.
    assert_kazoo_round_trip(ingest.client(), "").await;
    let (_, body) = http_get(ingest.port, "/readyz").await.unwrap();
    assert_eq!(readyz_journaled(&body), Some(JOURNALED + 1), "{body}");
    assert_nothing_outside(&ingest);
    ingest.stop().await;
}

fn json_entries(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                .count()
        })
        .unwrap_or(0)
}

/// A journal entry that cannot be read (a directory in its place) or parsed (garbage) is moved
/// to `journal/bad/` and counted; the good jobs around it are published. (The unreadable one
/// used to stop every other journaled job from being published, retried every second.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_journal_entry_is_moved_aside_and_the_others_published() {
    let queue_name = format!("vmpipe.test.{}", hex32());
    let queue = TestQueue::declare(&queue_name).await;
    let sandbox = tempfile::tempdir().unwrap();
    let storage = sandbox.path().join("storage");
    let journal = storage.join("journal");
    std::fs::create_dir_all(&journal).unwrap();
    let id = || uuid::Uuid::now_v7().simple().to_string();
    let garbage = format!("{}.json", id());
    std::fs::write(journal.join(&garbage), b"{\"schema_version\": 1, \"trunc").unwrap();
    let directory = format!("{}.json", id());
    std::fs::create_dir(journal.join(&directory)).unwrap();
    let good = job("a/b/good.mp3");
    std::fs::write(
        journal.join(format!("{}.json", good.job_id.simple())),
        good.to_json(),
    )
    .unwrap();

    let settings = vmpipe_common::Settings {
        storage_dir: storage.clone(),
        queue: queue_name,
        amqp_url: SecretUrl(amqp_url()),
        ..vmpipe_common::Settings::default()
    };
    let ingest = Service::spawn("ingest", &settings).await;
    let (published, _) = queue.next(WAIT).await.expect("the good job is published");
    assert_eq!(published.job_id, good.job_id);
    let deadline = Instant::now() + WAIT;
    while json_entries(&journal) > 0 {
        assert!(Instant::now() < deadline, "journal not drained");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let bad = journal.join("bad");
    assert!(bad.join(&garbage).is_file(), "garbage moved aside");
    assert!(
        bad.join(&directory).is_dir(),
        "unreadable entry moved aside"
    );
    // Moved once, not retried: the count stays at 2 over several drain rounds.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, metrics) = ingest.get("/metrics").await.unwrap();
    let bad_count: f64 = metrics
        .lines()
        .find(|l| l.starts_with("vmpipe_journal_bad_entries_total"))
        .and_then(|l| l.rsplit_once(' ')?.1.parse().ok())
        .unwrap_or_else(|| panic!("no bad-entry counter in:\n{metrics}"));
    assert_eq!(bad_count, 2.0);
    let (_, ready) = ingest.get("/readyz").await.unwrap();
    assert_eq!(readyz_journaled(&ready), Some(0), "{ready}");
    assert!(
        queue.next(Duration::from_millis(500)).await.is_none(),
        "published once"
    );
    ingest.sigkill().await;
    queue.delete().await;
}
