//! A hung RabbitMQ (a SIGSTOPped broker: connections open, nothing answered), played by the
//! TCP proxy's pause: uploads never wait for it (their jobs are in the journal); after a few
//! confirm timeouts ingest says so in `/readyz` and its metrics, and once the broker is back
//! every voicemail's job is on the queue exactly once.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use vmpipe_common::Settings;
use vmpipe_common::settings::SecretUrl;
use vmpipe_tests::*;

const ACCOUNT: &str = "4e3005310add6229778caf6babfe7cfb";
/// How long the broker stays hung.
const HANG: Duration = Duration::from_secs(12);
/// Confirm timeouts in a row before ingest says the broker is not confirming (the default).
const DEGRADED_AFTER: usize = 3;
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);
/// Time for the publisher to notice confirms overdue.
const TICKS: Duration = Duration::from_secs(1);

/// Uploads one voicemail; its latency.
async fn upload(kazoo: &Kazoo, audio: &[u8], i: usize) -> Duration {
    let name = format!("hung{i}.wav");
    let started = Instant::now();
    let r = kazoo
        .store_voicemail(ACCOUNT, &name, audio, "audio/wav")
        .await;
    assert_eq!(
        r.status,
        201,
        "upload {i}: {}",
        String::from_utf8_lossy(&r.body)
    );
    started.elapsed()
}

async fn eventually(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_broker_costs_uploads_no_wait_and_its_jobs_arrive_once() {
    let proxy = Proxy::start(url_addr(&amqp_url())).await;
    let queue_name = format!("vmpipe.test.{}", hex32());
    let queue = TestQueue::declare(&queue_name).await;
    let sandbox = tempfile::tempdir().unwrap();
    let settings = Settings {
        storage_dir: sandbox.path().join("storage"),
        amqp_url: SecretUrl(proxy.url_for(&amqp_url())),
        queue: queue_name,
        publish_timeout_ms: PUBLISH_TIMEOUT.as_millis() as u64,
        ..Settings::default()
    };
    // A process of its own: its counters are this test's alone.
    let ingest = Service::spawn("ingest", &settings).await;
    let kazoo = Kazoo {
        port: ingest.health_port,
    };
    let audio = wav_pcm16(8000, 300);
    let mut uploaded = 0;
    for _ in 0..5 {
        upload(&kazoo, &audio, uploaded).await;
        uploaded += 1;
    }

    // Their confirms in (uploads do not wait for them).
    let journal = settings.storage_dir.join("journal");
    let journal_entries = || vmpipe_ingest::jobs_on_disk(&journal).unwrap_or(0);
    eventually("confirmed before the hang", WAIT, async || {
        journal_entries() == 0
    })
    .await;

    proxy.pause();
    let hang_started = Instant::now();
    let mut latencies = Vec::new();
    let mut readyz_during = None;
    while hang_started.elapsed() < HANG {
        latencies.push(upload(&kazoo, &audio, uploaded).await);
        uploaded += 1;
        // Once confirms are overdue (the uploads themselves do not wait for them).
        if readyz_during.is_none() && hang_started.elapsed() > PUBLISH_TIMEOUT + TICKS {
            readyz_during = ingest.get("/readyz").await;
        }
    }
    let during_hang = latencies.len();
    let (_, metrics_during) = ingest.get("/metrics").await.expect("metrics");
    proxy.resume();

    let waited = &latencies[..DEGRADED_AFTER.min(during_hang)];
    let after_degraded = &latencies[DEGRADED_AFTER.min(during_hang)..];
    let slowest_after = after_degraded.iter().max().copied().unwrap_or_default();
    let mean_after = after_degraded.iter().sum::<Duration>() / after_degraded.len().max(1) as u32;
    eprintln!(
        "hung broker: {during_hang} uploads in {HANG:?}; the first {DEGRADED_AFTER}: {waited:?}; \
         the {} after: mean {mean_after:?}, slowest {slowest_after:?}",
        after_degraded.len()
    );

    // Every job reaches the queue once the broker is back, and the journal empties.
    eventually("journal drained", Duration::from_secs(60), async || {
        journal_entries() == 0
    })
    .await;
    let mut deliveries: BTreeMap<String, usize> = BTreeMap::new();
    while let Some((job, _)) = queue.next(Duration::from_secs(3)).await {
        *deliveries.entry(job.job_id.to_string()).or_default() += 1;
    }
    let twice = deliveries.values().filter(|n| **n > 1).count();
    let total: usize = deliveries.values().sum();
    eprintln!(
        "after the resume: {} jobs, {total} messages, {twice} jobs delivered more than once",
        deliveries.len()
    );

    assert_eq!(
        deliveries.len(),
        uploaded,
        "every voicemail's job delivered"
    );
    assert_eq!(twice, 0, "no job delivered twice: {deliveries:?}");
    assert!(
        after_degraded.len() >= 5,
        "uploads kept flowing during the hang: {latencies:?}"
    );
    assert!(
        slowest_after < Duration::from_millis(1000),
        "after {DEGRADED_AFTER} confirm timeouts uploads do not wait for the broker: {latencies:?}"
    );
    let (status, body) = readyz_during.expect("readyz answered during the hang");
    assert_eq!(status, 200, "uploads are still accepted: {body}");
    let readyz: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(readyz["publisher_degraded"], true, "{body}");
    assert!(
        readyz["rabbitmq"]
            .as_str()
            .is_some_and(|s| s.contains("not confirming")),
        "{body}"
    );
    assert_eq!(
        sample(&metrics_during, "vmpipe_publisher_degraded", &[]),
        1.0,
        "{metrics_during}"
    );
    assert_eq!(
        sample(&metrics_during, "vmpipe_jobs_journaled_total", &[]),
        during_hang as f64,
        "every upload during the hang was journaled: {metrics_during}"
    );

    // Confirms come in time again: no longer degraded, and uploads are published directly.
    eventually("publisher healthy again", WAIT, async || {
        ingest.get("/readyz").await.is_some_and(|(_, body)| {
            serde_json::from_str::<serde_json::Value>(&body)
                .is_ok_and(|r| r["publisher_degraded"] == false)
        })
    })
    .await;
    upload(&kazoo, &audio, uploaded).await;
    let (_, metrics) = ingest.get("/metrics").await.expect("metrics");
    assert_eq!(sample(&metrics, "vmpipe_publisher_degraded", &[]), 0.0);
    assert_eq!(
        sample(&metrics, "vmpipe_jobs_journaled_total", &[]),
        during_hang as f64,
        "the upload after the resume was not journaled: {metrics}"
    );
    assert!(queue.next(WAIT).await.is_some(), "its job was published");
    ingest.sigkill().await;
    queue.delete().await;
}
