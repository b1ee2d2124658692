//! Memory under hostile uploads: a release ingest and worker (real processes, real RabbitMQ and
//! PostgreSQL) take uploads at once whose KAZOO document is a large JSON array of zeros (`[0,0,…]`
//! expands about 20× when parsed), and their peak RSS is printed: after start-up, then after
//! each round. Run with `scripts/bench-hostile.sh [UPLOADS]` (default 64 at once).

use std::time::{Duration, Instant};

use vmpipe_common::Settings;
use vmpipe_common::settings::SecretUrl;
use vmpipe_tests::*;

const ACCOUNT: &str = "4e3005310add6229778caf6babfe7cfb";

fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(field))
                .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// `n` uploads at once, each a WAV with a document of `document_bytes` of `[0,0,…]`.
async fn round(kazoo: u16, n: usize, document_bytes: usize, tag: &str) -> (usize, Duration) {
    let wav = wav_pcm16(8000, 1000);
    let zeros = format!("[{}0]", "0,".repeat(document_bytes / 2));
    let document: serde_json::Value = serde_json::from_str(&zeros).expect("JSON");
    let started = Instant::now();
    let uploads = (0..n).map(|i| {
        let (wav, document) = (wav.clone(), document.clone());
        let tag = tag.to_owned();
        tokio::spawn(async move {
            let doc_id = format!("202612-{}", hex32());
            let name = format!("{tag}{i}.wav");
            let att = Attachment {
                document_id: &doc_id,
                name: &name,
                content_type: "audio/wav",
                data: &wav,
                document: &document,
            };
            let path = format!("/{ACCOUNT}/{doc_id}/{name}");
            Kazoo { port: kazoo }
                .store(Verb::Put, &path, Body::Multipart, &att)
                .await
                .status
        })
    });
    let mut stored = 0;
    for upload in uploads.collect::<Vec<_>>() {
        if upload.await.expect("upload task") == 201 {
            stored += 1;
        }
    }
    (stored, started.elapsed())
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(64);
    let database = TestDatabase::new();
    let queue_name = format!("vmpipe.bench.{}", hex32());
    let queue = TestQueue::declare(&queue_name).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let settings = Settings {
        storage_dir: dir.path().to_path_buf(),
        queue: queue_name,
        amqp_url: SecretUrl(amqp_url()),
        database_url: SecretUrl(database.url.clone()),
        max_uploads: 1024,
        ..Settings::default()
    };
    let ingest = Service::spawn("ingest", &settings).await;
    let worker = Service::spawn("worker", &settings).await;
    let pool = loop {
        let pool = database.pool().await;
        if migrated(&pool).await {
            break pool;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (ingest_pid, worker_pid) = (ingest.pid(), worker.pid());
    println!(
        "after start-up: ingest {} RSS, worker {} RSS",
        mib(rss_kib(ingest_pid, "VmRSS:")),
        mib(rss_kib(worker_pid, "VmRSS:"))
    );
    let mut expected = 0i64;
    for (label, bytes) in [
        ("60 KiB", 60 << 10),
        ("1 MiB", (1 << 20) - 64),
        ("4 MiB", 4 << 20),
    ] {
        let (stored, took) = round(ingest.health_port, n, bytes, &label.replace(' ', "")).await;
        expected += stored as i64;
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM voicemails")
                .fetch_one(&pool)
                .await
                .unwrap_or(0);
            if rows >= expected {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        println!(
            "{n} uploads at once, document of {label} [0,0,…]: {stored} stored in {:.1} s; \
             peak RSS so far: ingest {}, worker {}",
            took.as_secs_f64(),
            mib(rss_kib(ingest_pid, "VmHWM:")),
            mib(rss_kib(worker_pid, "VmHWM:"))
        );
    }
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM voicemails")
        .fetch_one(&pool)
        .await
        .unwrap_or(0);
    println!("rows: {rows} of {expected} stored");
    pool.close().await;
    worker.sigkill().await;
    ingest.sigkill().await;
    queue.delete().await;
    database.drop().await;
}
