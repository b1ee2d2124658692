//! A full disk on the upload path (issue 16, item 3), on a real full file system: a small
//! tmpfs the test mounts (it runs as root), filled to the last byte. Each upload is then 507
//! (KAZOO retries it later) and leaves nothing visible: no file, no job, no journal entry.

use std::path::{Path, PathBuf};
use std::time::Duration;

use vmpipe_common::Settings;
use vmpipe_common::settings::SecretUrl;
use vmpipe_tests::*;

const ACCOUNT: &str = "4e3005310add6229778caf6babfe7cfb";

/// A 2 MiB tmpfs mounted at a directory, unmounted when dropped.
struct SmallFs {
    path: PathBuf,
}

impl SmallFs {
    /// Mounts one at `path`; `None` (with why) where this machine does not let the test mount.
    fn mount(path: &Path) -> Option<Self> {
        std::fs::create_dir_all(path).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
            .arg(path)
            .output();
        match out {
            Ok(out) if out.status.success() => Some(Self {
                path: path.to_path_buf(),
            }),
            Ok(out) => {
                eprintln!(
                    "SKIPPED: cannot mount a small tmpfs to fill (needs root or CAP_SYS_ADMIN): {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("SKIPPED: cannot run mount to make a small file system: {e}");
                None
            }
        }
    }

    /// Fills it to the last byte; the file that does, to remove to free the space.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let filler = self.path.join("filler");
        let mut file = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 64 * 1024];
        loop {
            match file.write(&block) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => panic!("filling: {e}"),
            }
        }
        // The last partial blocks, byte by byte.
        while file.write(&[0u8; 512]).is_ok_and(|n| n > 0) {}
        while file.write(&[0u8]).is_ok_and(|n| n > 0) {}
        filler
    }

    /// Files on it other than the filler (relative paths).
    fn files(&self) -> Vec<PathBuf> {
        all_files(&self.path)
            .into_iter()
            .filter(|p| p != Path::new("filler"))
            .collect()
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

fn attachment<'a>(
    name: &'a str,
    data: &'a [u8],
    document: &'a serde_json::Value,
) -> Attachment<'a> {
    Attachment {
        document_id: "d",
        name,
        content_type: "audio/wav",
        data,
        document,
    }
}

/// RabbitMQ away, the journal's file system full: the upload is 507 `storage_full`, its file is
/// not fetchable (a replaced file keeps its previous version), no entry is left in the journal
/// and no job reaches the queue. With space again, the same upload is 201, has exactly one job,
/// and is indexed once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_at_the_journal_write_is_507_and_leaves_nothing_visible() {
    let sandbox = tempfile::tempdir().unwrap();
    let Some(small) = SmallFs::mount(&sandbox.path().join("storage/journal")) else {
        return;
    };
    let broker = Proxy::start(url_addr(&amqp_url())).await;
    broker.cut();
    let queue_name = format!("vmpipe.test.{}", hex32());
    let queue = TestQueue::declare(&queue_name).await;
    let ingest = TestIngest::start(Options {
        sandbox: Some(sandbox),
        queue: Some(queue_name.clone()),
        amqp_url: broker.url_for(&amqp_url()),
        ..Options::default()
    })
    .await;
    let kazoo = ingest.client();
    let audio = wav_pcm16(8000, 300);
    let newer = wav_pcm16(8000, 400);
    let document = serde_json::json!({});
    // A voicemail stored while there is room: its job is journaled.
    let replaced = format!("/{ACCOUNT}/202612-{}/replaced.wav", hex32());
    let att = attachment("replaced.wav", &audio, &document);
    assert_eq!(
        kazoo
            .store(Verb::Put, &replaced, Body::Raw, &att)
            .await
            .status,
        201
    );
    assert_eq!(small.files().len(), 1, "its job is journaled");

    let filler = small.fill();
    // The journal appends to its segment while its last page has room: a job with a large
    // KAZOO document needs more.
    let large = serde_json::json!({ "notes": "x".repeat(16 * 1024) });
    let path = format!("/{ACCOUNT}/202612-{}/new.wav", hex32());
    let att = attachment("new.wav", &audio, &large);
    let r = kazoo.store(Verb::Put, &path, Body::Multipart, &att).await;
    let fetched = kazoo.get(&path).await.status;
    eprintln!(
        "disk full at the journal write: new key {} {:?}, then GET {fetched}",
        r.status,
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(r.status, 507, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["error"], "storage_full");
    assert_eq!(fetched, 404, "no file without its job");
    // A new version of a stored file: refused, and the previous version stays.
    let att = attachment("replaced.wav", &newer, &large);
    let r = kazoo
        .store(Verb::Put, &replaced, Body::Multipart, &att)
        .await;
    let fetched = kazoo.get(&replaced).await;
    eprintln!(
        "disk full at the journal write: replacement {}, then GET {} ({} bytes, previous {})",
        r.status,
        fetched.status,
        fetched.body.len(),
        audio.len()
    );
    assert_eq!(r.status, 507);
    assert!(
        fetched.status == 200 && fetched.body == audio,
        "the previous version"
    );
    assert_eq!(small.files().len(), 1, "no half-written journal entry");
    assert_eq!(ingest.temp_files(), 0, "nothing left in tmp/");

    // Space again: both uploads succeed; then RabbitMQ is back and the jobs are published.
    std::fs::remove_file(filler).unwrap();
    let att = attachment("new.wav", &audio, &document);
    assert_eq!(
        kazoo.store(Verb::Put, &path, Body::Raw, &att).await.status,
        201
    );
    let att = attachment("replaced.wav", &newer, &document);
    assert_eq!(
        kazoo
            .store(Verb::Put, &replaced, Body::Raw, &att)
            .await
            .status,
        201
    );
    assert!(kazoo.get(&replaced).await.body == newer);
    broker.restore();
    let mut jobs = Vec::new();
    while let Some((job, _)) = queue.next(Duration::from_secs(5)).await {
        jobs.push(job);
    }
    let mut keys: Vec<&str> = jobs.iter().map(|j| j.storage_key.as_str()).collect();
    keys.sort_unstable();
    let mut expected = vec![&path[1..], &replaced[1..], &replaced[1..]];
    expected.sort_unstable();
    assert_eq!(keys, expected, "one job per 201, none for a 507");

    // Indexed once: the jobs, given to a worker.
    for job in &jobs {
        queue.publish(&job.to_json()).await;
    }
    let database = TestDatabase::new();
    let worker = TestWorker::start(Settings {
        database_url: SecretUrl(database.url.clone()),
        worker_listen: "127.0.0.1:0".into(),
        amqp_url: SecretUrl(amqp_url()),
        ..ingest.settings.clone()
    });
    let mut pool = None;
    for _ in 0..400 {
        if let Ok(p) = sqlx::PgPool::connect(&database.url).await
            && migrated(&p).await
        {
            pool = Some(p);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pool = pool.expect("the worker migrated its database");
    wait_for_count(&pool, "SELECT count(*) FROM voicemails", 2, WAIT).await;
    let size: i64 = sqlx::query_scalar("SELECT size_bytes FROM voicemails WHERE storage_key = $1")
        .bind(&replaced[1..])
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(size as usize, newer.len(), "the row is the new version's");
    worker.stop().await;
    pool.close().await;
    database.drop().await;
    let sandbox = ingest.stop().await;
    queue.delete().await;
    drop(small);
    drop(sandbox);
}

/// ENOSPC while the upload itself is written (the whole storage directory full): 507, nothing
/// stored, nothing journaled; with space again the retry is 201.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_while_writing_the_upload_is_507() {
    let sandbox = tempfile::tempdir().unwrap();
    let Some(small) = SmallFs::mount(&sandbox.path().join("storage")) else {
        return;
    };
    let (ingest, queue) = TestIngest::start_with_queue(Options {
        sandbox: Some(sandbox),
        ..Options::default()
    })
    .await;
    let kazoo = ingest.client();
    let filler = small.fill();
    let audio = wav_pcm16(8000, 300);
    let document = serde_json::json!({});
    let path = format!("/{ACCOUNT}/202612-{}/full.wav", hex32());
    let att = attachment("full.wav", &audio, &document);
    let r = kazoo.store(Verb::Put, &path, Body::Raw, &att).await;
    assert_eq!(r.status, 507, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["error"], "storage_full");
    assert_eq!(kazoo.get(&path).await.status, 404);
    assert_eq!(ingest.temp_files(), 0);
    assert_eq!(ingest.journal_entries(), 0);
    assert!(queue.next(Duration::from_millis(300)).await.is_none());
    std::fs::remove_file(filler).unwrap();
    assert_eq!(
        kazoo.store(Verb::Put, &path, Body::Raw, &att).await.status,
        201
    );
    let (job, _) = queue.next(WAIT).await.expect("its job");
    assert_eq!(job.storage_key, path[1..]);
    assert!(queue.next(Duration::from_millis(300)).await.is_none());
    let sandbox = ingest.stop().await;
    queue.delete().await;
    drop(small);
    drop(sandbox);
}
