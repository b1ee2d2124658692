//! Soak test: `scripts/soak.sh [UPLOADS] [SECONDS] [RATE]` (default 3000 uploads at 60 per
//! second, at most 600 s).
//!
//! Runs the real ingest and worker binaries against the local PostgreSQL and RabbitMQ (own
//! database and queue, removed afterwards), uploads voicemails while cutting the broker
//! connection and SIGKILLing the worker at random moments, then checks that storage, queue
//! and index agree: every upload stored once, indexed once, nothing lost, nothing dead-lettered.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use vmpipe_common::settings::SecretUrl;
use vmpipe_tests::*;

const ACCOUNT: &str = "4e3005310add6229778caf6babfe7cfb";

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let numbers: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let uploads = numbers.first().copied().unwrap_or(3000) as usize;
    let budget = Duration::from_secs(numbers.get(1).copied().unwrap_or(600));
    // Paced, so that faults land throughout the run rather than after it.
    let rate = numbers.get(2).copied().unwrap_or(60).max(1);
    let pause = Duration::from_secs_f64(8.0 / rate as f64);
    let started = Instant::now();

    let queue_name = format!("vmpipe.soak.{}", hex32());
    let queue = TestQueue::declare(&queue_name).await;
    let database = TestDatabase::new();
    let broker = Proxy::start(url_addr(&amqp_url())).await;
    let sandbox = tempfile::tempdir().unwrap();
    let settings = vmpipe_common::Settings {
        storage_dir: sandbox.path().join("storage"),
        amqp_url: SecretUrl(broker.url_for(&amqp_url())),
        queue: queue_name,
        database_url: SecretUrl(database.url.clone()),
        publish_timeout_ms: 1000,
        ..vmpipe_common::Settings::default()
    };
    let ingest = Service::spawn("ingest", &settings).await;
    let kazoo = Kazoo {
        port: ingest.health_port,
    };
    let mut worker = Some(Service::spawn("worker", &settings).await);
    let pool = loop {
        if let Ok(pool) = sqlx::PgPool::connect(&database.url).await
            && migrated(&pool).await
        {
            break pool;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!(
        "soak: {uploads} uploads at {rate}/s, broker cuts and worker kills at random, budget {budget:?}"
    );

    // Uploaders.
    let audio = Arc::new(wav_pcm16(8000, 3000));
    let done = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(AtomicU64::new(0));
    let mut lanes = Vec::new();
    for lane in 0..8 {
        let audio = audio.clone();
        let accepted = accepted.clone();
        lanes.push(tokio::spawn(async move {
            for i in (lane..uploads).step_by(8) {
                let doc = format!("202611-{i:032x}");
                let name = format!("soak{i}.wav");
                let document = mailbox_message(&doc, &name);
                let att = Attachment {
                    document_id: &doc,
                    name: &name,
                    content_type: "audio/wav",
                    data: &audio,
                    document: &document,
                };
                let path = format!("/{ACCOUNT}/{doc}/{name}");
                // KAZOO retries a failed store; so do we (a 201 is what counts).
                loop {
                    if kazoo
                        .store(Verb::Put, &path, Body::Multipart, &att)
                        .await
                        .status
                        == 201
                    {
                        accepted.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                tokio::time::sleep(pause).await;
            }
        }));
    }

    // Faults, at random moments, until the uploads are in.
    let mut random = Xorshift(started.elapsed().as_nanos() as u64 | 1);
    let (mut cuts, mut kills) = (0u32, 0u32);
    let uploaders = tokio::spawn({
        let done = done.clone();
        async move {
            for lane in lanes {
                lane.await.unwrap();
            }
            done.store(true, Ordering::SeqCst);
        }
    });
    while !done.load(Ordering::SeqCst) && started.elapsed() < budget {
        tokio::time::sleep(Duration::from_millis(200 + random.below(800))).await;
        if random.below(2) == 0 {
            broker.cut();
            cuts += 1;
            tokio::time::sleep(Duration::from_millis(200 + random.below(1500))).await;
            broker.restore();
        } else if let Some(w) = worker.take() {
            w.sigkill().await;
            kills += 1;
            tokio::time::sleep(Duration::from_millis(100 + random.below(700))).await;
            worker = Some(Service::spawn("worker", &settings).await);
        }
    }
    uploaders.await.unwrap();
    let upload_secs = started.elapsed().as_secs_f64();
    broker.restore();
    if worker.is_none() {
        worker = Some(Service::spawn("worker", &settings).await);
    }

    // Convergence: every accepted upload indexed, or the budget runs out.
    let expected = accepted.load(Ordering::Relaxed) as i64;
    let mut rows = 0;
    while started.elapsed() < budget + Duration::from_secs(120) {
        rows = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM voicemails")
            .fetch_one(&pool)
            .await
            .unwrap();
        if rows >= expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let distinct: i64 = sqlx::query_scalar("SELECT count(DISTINCT storage_key) FROM voicemails")
        .fetch_one(&pool)
        .await
        .unwrap();
    let files = all_files(&settings.storage_dir.join("voicemails")).len();
    let journal = vmpipe_ingest::jobs_on_disk(&settings.storage_dir.join("journal")).unwrap_or(0);
    let dead = queue.dead_reasons().await.len();
    println!("uploads accepted (201): {expected} in {upload_secs:.1} s");
    println!("faults injected: {cuts} broker cuts, {kills} worker SIGKILLs");
    println!("files stored: {files}; rows indexed: {rows}; distinct keys: {distinct}");
    println!("journal left: {journal}; dead-lettered: {dead}");
    println!(
        "lost: {}; duplicate rows: {}",
        expected - distinct,
        rows - distinct
    );
    let ok = files as i64 == expected
        && rows == expected
        && distinct == expected
        && dead == 0
        && journal == 0;
    println!("{}", if ok { "soak: OK" } else { "soak: MISMATCH" });

    if let Some(w) = worker {
        w.sigkill().await;
    }
    ingest.sigkill().await;
    pool.close().await;
    queue.delete().await;
    database.drop().await;
    if !ok {
        std::process::exit(1);
    }
}

struct Xorshift(u64);

impl Xorshift {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}
