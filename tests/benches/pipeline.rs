//! Pipeline benchmark: `cargo bench -p vmpipe-tests --bench pipeline [-- UPLOADS] [s3] [whisper]`.
//!
//! Runs ingest and worker in this process against the local PostgreSQL and RabbitMQ (each run
//! gets its own database and queue, removed afterwards) and prints:
//! 1. latency from 201 to indexed row (median, p99) while uploads arrive as fast as 4 clients
//!    send them, then paced at half of that rate;
//! 2. indexing rate: jobs per second a worker drains from a backlog.
//!
//! With `s3`, the voicemails are stored in a bucket of a real Garage (started for the run)
//! instead of a directory. With `hook=COMMAND`, the worker runs `sh -c COMMAND` as a hook on every voicemail
//! (`hook_concurrency=N` at a time). `worker_concurrency=N` sets the worker's prefetch.
//! With `whisper`, the worker also runs the Whisper transcriber on every voicemail (the venv and
//! model of `scripts/python-env.sh --test-env`: VMPIPE_TEST_PYTHON, VMPIPE_TEST_WHISPER_MODEL),
//! the voicemails are spoken (tests/fixtures/spoken/invoice.wav) instead of a tone, and the
//! backlog is drained twice, by a worker without the transcriber and then by one with it, so
//! that the two indexing rates compare in one run; the hook's own figures, over the
//! transcriptions finished by then, come last.

use std::time::{Duration, Instant};

use vmpipe_common::Settings;
use vmpipe_common::settings::{HookAudio, HookKind, HookSettings, SecretUrl, Transcriber};
use vmpipe_tests::*;

const ACCOUNT: &str = "4e3005310add6229778caf6babfe7cfb";

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    bench_logs();
    let uploads: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1000);
    let transcribe = std::env::args().any(|a| a == "whisper");
    // `hook=COMMAND`: a command hook (run by `sh -c`) on every voicemail, for comparison.
    let hooks: Vec<HookSettings> = std::env::args()
        .filter_map(|a| a.strip_prefix("hook=").map(str::to_owned))
        .map(|command| HookSettings {
            name: "bench".into(),
            kind: HookKind::Command,
            command: vec!["sh".into(), "-c".into(), command],
            url: None,
            headers: Default::default(),
            model: None,
            language: None,
            api_key: None,
            api_key_file: None,
            audio: HookAudio::Original,
            timeout_secs: 600,
            max_attempts: 1,
            retry_delay_ms: 1000,
            concurrency: None,
        })
        .collect();
    let queue_name = format!("vmpipe.bench.{}", hex32());
    let queue = TestQueue::declare(&queue_name).await;
    // `s3`: the voicemails go to a bucket of a Garage started for the run.
    let backend = if std::env::args().any(|a| a == "s3") {
        Backend::S3
    } else {
        Backend::Fs
    };
    let ingest = TestIngest::start(Options {
        queue: Some(queue_name),
        backend,
        ..Options::default()
    })
    .await;
    println!("storage: {backend:?}");
    let database = TestDatabase::new();
    let settings = Settings {
        database_url: SecretUrl(database.url.clone()),
        hooks,
        worker_concurrency: std::env::args()
            .find_map(|a| a.strip_prefix("worker_concurrency=")?.parse().ok())
            .unwrap_or(Settings::default().worker_concurrency),
        hook_concurrency: std::env::args()
            .find_map(|a| a.strip_prefix("hook_concurrency=")?.parse().ok())
            .unwrap_or(Settings::default().hook_concurrency),
        ..ingest.settings.clone()
    };
    let settings = if transcribe {
        vmpipe_tests::worker::with_whisper(settings)
    } else {
        settings
    };
    // 10 s of 8 kHz mono speech-sized WAV, as FreeSWITCH records it; real speech for Whisper
    // (a tone is silence to its voice-activity filter, which would leave it nothing to do).
    let wav = if transcribe {
        std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fixtures/spoken/invoice.wav"
        ))
        .unwrap()
    } else {
        wav_pcm16(8000, 10_000)
    };
    println!(
        "pipeline benchmark: {uploads} uploads of {} KiB, worker concurrency {}, transcriber {:?}, hooks {:?}",
        wav.len() / 1024,
        settings.worker_concurrency,
        settings.transcriber,
        settings
            .hooks
            .iter()
            .map(|h| h.command.last().cloned().unwrap_or_default())
            .collect::<Vec<_>>(),
    );

    // 1. Latency at a steady rate: 4 uploaders one after the other, worker keeping up.
    let worker = TestWorker::start(settings.clone());
    let pool = database.wait_for_schema().await;
    let started = Instant::now();
    upload_many(&ingest, &wav, "steady", uploads, 4).await;
    let upload_secs = started.elapsed().as_secs_f64();
    wait_for_rows(&pool, uploads as i64, Duration::from_secs(300)).await;
    let peak = uploads as f64 / upload_secs;
    let (median, p99) = latency(&pool, "steady%").await;
    println!(
        "steady load: {peak:.0} uploads/s through ingest; 201 -> indexed row: median {median:.1} ms, p99 {p99:.1} ms"
    );

    // 1b. Latency at half of that rate, paced (what a busy PBX sends, with headroom).
    let paced = uploads / 2;
    upload_paced(&ingest, &wav, "paced", paced, peak / 2.0).await;
    wait_for_rows(&pool, (uploads + paced) as i64, Duration::from_secs(300)).await;
    let (median, p99) = latency(&pool, "paced%").await;
    println!(
        "paced at {:.0} uploads/s (half of that): 201 -> indexed row: median {median:.1} ms, p99 {p99:.1} ms",
        peak / 2.0
    );

    // 2. Indexing rate from a backlog: worker stopped while uploads queue up. With the
    // transcriber, first by a worker without it, for comparison.
    worker.stop().await;
    let mut before = (uploads + paced) as i64;
    if transcribe {
        let without = Settings {
            transcriber: Transcriber::None,
            ..settings.clone()
        };
        let (worker, rate) =
            drain_backlog(&ingest, &pool, &wav, "plain", uploads, before, without).await;
        worker.stop().await;
        println!("  (that was without the transcriber; {rate:.0} jobs/s after the first row)");
        before += uploads as i64;
    }
    let (worker, rate) = drain_backlog(
        &ingest,
        &pool,
        &wav,
        "backlog",
        uploads,
        before,
        settings.clone(),
    )
    .await;
    if transcribe {
        println!("  (that was with the transcriber; {rate:.0} jobs/s after the first row)");
    }

    if transcribe || !settings.hooks.is_empty() {
        let (done, median, p95, wait): (i64, Option<f64>, Option<f64>, Option<f64>) = sqlx::query_as(
            "SELECT count(*), percentile_cont(0.5) WITHIN GROUP (ORDER BY run_ms),
                    percentile_cont(0.95) WITHIN GROUP (ORDER BY run_ms),
                    percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - queued_at) * 1000)
             FROM transcriptions WHERE status = 'done'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        println!(
            "hooks: {done} transcriptions done meanwhile; run median {:.0} ms, p95 {:.0} ms; \
             indexed -> transcript median {:.0} ms (the rest wait their turn)",
            median.unwrap_or_default(),
            p95.unwrap_or_default(),
            wait.unwrap_or_default()
        );
    }

    worker.stop().await;
    pool.close().await;
    queue.delete().await;
    ingest.stop().await;
    database.drop().await;
}

/// The backlog phase: `uploads` jobs queued while no worker runs, then drained by a worker with
/// `settings`. Prints the overall rate and the rate after the first row (the worker's start-up,
/// which includes loading a transcriber's model, timed apart); returns the worker, still
/// running, and that second rate.
async fn drain_backlog(
    ingest: &TestIngest,
    pool: &sqlx::PgPool,
    wav: &[u8],
    tag: &str,
    uploads: usize,
    before: i64,
    settings: Settings,
) -> (TestWorker, f64) {
    upload_many(ingest, wav, tag, uploads, 8).await;
    let worker = TestWorker::start(settings);
    let started = Instant::now();
    wait_for_rows(pool, before + 1, Duration::from_secs(600)).await;
    let first_row = started.elapsed().as_secs_f64();
    let first_count: i64 = sqlx::query_scalar("SELECT count(*) FROM voicemails")
        .fetch_one(pool)
        .await
        .unwrap();
    wait_for_rows(pool, before + uploads as i64, Duration::from_secs(600)).await;
    let secs = started.elapsed().as_secs_f64();
    let after_first = (before + uploads as i64 - first_count) as f64 / (secs - first_row).max(1e-9);
    println!(
        "backlog: {uploads} jobs indexed in {secs:.2} s = {:.0} jobs/s (each probes a {} KiB WAV); \
         after the first row ({first_row:.2} s from start): {after_first:.0} jobs/s",
        uploads as f64 / secs,
        wav.len() / 1024,
    );
    (worker, after_first)
}

/// Median and p99, in ms, from 201 (the file stored) to the row written, of the voicemails
/// whose attachment name is `like`.
async fn latency(pool: &sqlx::PgPool, like: &str) -> (f64, f64) {
    sqlx::query_as(
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ms), percentile_cont(0.99) WITHIN GROUP (ORDER BY ms)
         FROM (SELECT extract(epoch FROM indexed_at - received_at) * 1000 AS ms FROM voicemails
               WHERE attachment_name LIKE $1) t",
    )
    .bind(like)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// `count` uploads started at `rate` per second, whatever the answers take.
async fn upload_paced(ingest: &TestIngest, wav: &[u8], tag: &str, count: usize, rate: f64) {
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for i in 0..count {
        tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / rate)).await;
        let client = ingest.client();
        let wav = wav.to_vec();
        let tag = tag.to_owned();
        tasks.push(tokio::spawn(async move {
            upload_one(&client, &wav, &format!("{tag}{i}.wav")).await;
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

async fn wait_for_rows(pool: &sqlx::PgPool, expected: i64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM voicemails")
            .fetch_one(pool)
            .await
            .unwrap();
        if count >= expected {
            return;
        }
        assert!(Instant::now() < deadline, "only {count} of {expected} rows");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn upload_many(ingest: &TestIngest, wav: &[u8], tag: &str, count: usize, concurrency: usize) {
    let mut tasks = Vec::new();
    for lane in 0..concurrency {
        let client = ingest.client();
        let wav = wav.to_vec();
        let tag = tag.to_owned();
        tasks.push(tokio::spawn(async move {
            for i in (lane..count).step_by(concurrency) {
                upload_one(&client, &wav, &format!("{tag}{i}.wav")).await;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

async fn upload_one(client: &Kazoo, wav: &[u8], name: &str) {
    let r = client
        .store_voicemail(ACCOUNT, name, wav, "audio/wav")
        .await;
    assert_eq!(r.status, 201);
}
