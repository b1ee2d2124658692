//! Object-store benchmark: `scripts/bench-s3.sh [SECONDS_PER_RUN]`.
//!
//! A release ingest storing in a bucket of a real Garage (single node, loopback), against the
//! same bodies PUT straight to that Garage by an S3 client (object_store, what ingest itself
//! uses), at 16 connections: 16 KiB, 128 KiB and 1 MiB bodies, the two alternating round by
//! round so that machine noise hits both alike. Prints uploads/s, p50/p99 latency and the
//! ratio. First, ingest's resident memory before and during one 1 MiB and one 100 MiB upload
//! (streamed, so ingest never has the whole body), sampled every 10 ms.
//! `BENCH_ONLY_KIB=128` runs one body size.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use object_store::ObjectStoreExt;
use vmpipe_common::Settings;
use vmpipe_common::settings::{ByteSize, SecretUrl};
use vmpipe_tests::*;

const ACCOUNT: &str = "4e3005310add6229778caf6babfe7cfb";
const CONNECTIONS: usize = 16;
const ROUNDS: usize = 3;

struct Run {
    uploads: u64,
    elapsed: Duration,
    latencies: Vec<Duration>,
    /// CPU seconds of ingest, Garage and RabbitMQ during the run.
    cpu: [f64; 3],
}

/// utime + stime of `pid`, in seconds.
fn cpu_of(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
        .sum();
    ticks as f64 / 100.0
}

/// CPU seconds of every process named `name` (RabbitMQ's `beam.smp`).
fn cpu_named(name: &str) -> f64 {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == name)
        })
        .map(cpu_of)
        .sum()
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let seconds: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(3);
    let garage = Garage::start();
    let bucket = garage.bucket("bench");
    let sandbox = tempfile::tempdir().unwrap();
    let queue = TestQueue::declare(&format!("vmpipe.bench.{}", hex32())).await;
    let mut settings = Settings {
        storage_dir: sandbox.path().join("storage"),
        amqp_url: SecretUrl(amqp_url()),
        queue: queue.name.clone(),
        max_uploads: 1024,
        max_body: ByteSize(256 << 20),
        ..Settings::default()
    };
    garage.use_bucket(&mut settings, &bucket);
    let ingest = Service::spawn("ingest", &settings).await;
    let port = ingest.health_port;
    let direct = Arc::new(
        object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(&bucket)
            .with_region("garage")
            .with_endpoint(&garage.endpoint)
            .with_allow_http(true)
            .with_access_key_id(settings.s3_access_key_id.clone().unwrap())
            .with_secret_access_key(settings.s3_secret_access_key.as_ref().unwrap().expose())
            .build()
            .unwrap(),
    );
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(CONNECTIONS)
        .build()
        .unwrap();
    // Memory first, on a fresh ingest (later, the allocator keeps what the load used).
    for mib in [1, 100] {
        memory(port, ingest.pid(), mib).await;
    }
    let pids = [ingest.pid(), garage.pid().expect("running")];
    let counter = Arc::new(AtomicU64::new(0));
    let only: Option<usize> = std::env::var("BENCH_ONLY_KIB")
        .ok()
        .and_then(|v| v.parse().ok());
    println!(
        "uploads/s at {CONNECTIONS} connections, {ROUNDS} alternating rounds of {seconds} s each, pooled"
    );
    println!(
        "{:>8} | {:>20} | {:>20} | {:>6}",
        "body", "ingest → Garage", "PUT to Garage", "ratio"
    );
    for kib in [16usize, 128, 1024] {
        if only.is_some_and(|only| only != kib) {
            continue;
        }
        let body = Bytes::from(nasty_audio(kib * 1024));
        let (mut through, mut straight) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            through.push(
                drive(seconds, pids, {
                    let (client, body, counter) = (client.clone(), body.clone(), counter.clone());
                    move || {
                        let (client, body, counter) =
                            (client.clone(), body.clone(), counter.clone());
                        async move {
                            let n = counter.fetch_add(1, Ordering::Relaxed);
                            let response = client
                                .put(format!(
                                    "http://127.0.0.1:{port}/{ACCOUNT}/bench-{n}/{n}.wav"
                                ))
                                .header("content-type", "audio/wav")
                                .body(body)
                                .send()
                                .await
                                .expect("ingest answers");
                            assert_eq!(response.status(), 201);
                        }
                    }
                })
                .await,
            );
            straight.push(
                drive(seconds, pids, {
                    let (direct, body, counter) = (direct.clone(), body.clone(), counter.clone());
                    move || {
                        let (direct, body, counter) =
                            (direct.clone(), body.clone(), counter.clone());
                        async move {
                            let n = counter.fetch_add(1, Ordering::Relaxed);
                            let path = object_store::path::Path::from(format!(
                                "{ACCOUNT}/direct-{n}/{n}.wav"
                            ));
                            direct
                                .put(&path, body.into())
                                .await
                                .expect("Garage answers");
                        }
                    }
                })
                .await,
            );
        }
        let (a, b) = (pool(through), pool(straight));
        println!(
            "{:>5} KiB | {:>7.0}/s p50 {:>3} p99 {:>3} | {:>7.0}/s p50 {:>3} p99 {:>3} | {:>6.2}",
            kib,
            a.0,
            a.1,
            a.2,
            b.0,
            b.1,
            b.2,
            a.0 / b.0
        );
        println!(
            "          CPU ms per upload: ingest {:.2}, Garage {:.2} vs {:.2}, RabbitMQ {:.2}",
            a.3[0], a.3[1], b.3[1], a.3[2]
        );
    }
    println!("(latencies in ms)");
    drop(ingest);
    queue.delete().await;
}

/// Runs `upload` on [`CONNECTIONS`] tasks for `seconds`, charging CPU to `pids` (ingest,
/// Garage) and RabbitMQ.
async fn drive<F, Fut>(seconds: u64, pids: [u32; 2], upload: F) -> Run
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let cpu = || [cpu_of(pids[0]), cpu_of(pids[1]), cpu_named("beam.smp")];
    let cpu_before = cpu();
    let start = Instant::now();
    let until = start + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let upload = upload.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while Instant::now() < until {
                    let sent = Instant::now();
                    upload().await;
                    latencies.push(sent.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.unwrap());
    }
    let cpu_after = cpu();
    Run {
        uploads: latencies.len() as u64,
        elapsed: start.elapsed(),
        latencies,
        cpu: [0, 1, 2].map(|i| cpu_after[i] - cpu_before[i]),
    }
}

/// Uploads per second, p50 and p99 in ms, and CPU ms per upload of ingest, Garage and
/// RabbitMQ, over all rounds.
fn pool(runs: Vec<Run>) -> (f64, u128, u128, [f64; 3]) {
    let uploads: u64 = runs.iter().map(|r| r.uploads).sum();
    let cpu = [0, 1, 2]
        .map(|i| runs.iter().map(|r| r.cpu[i]).sum::<f64>() * 1000.0 / uploads.max(1) as f64);
    let seconds: f64 = runs.iter().map(|r| r.elapsed.as_secs_f64()).sum();
    let mut latencies: Vec<Duration> = runs.into_iter().flat_map(|r| r.latencies).collect();
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    (
        uploads as f64 / seconds,
        at(0.5).as_millis(),
        at(0.99).as_millis(),
        cpu,
    )
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Ingest's RSS before and at its peak during one streamed upload of `mib` MiB.
async fn memory(port: u16, pid: u32, mib: usize) {
    let size: usize = mib << 20;
    const PIECE: usize = 64 * 1024;
    let before = rss_kib(pid);
    let peak = Arc::new(AtomicU64::new(before));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let piece = Bytes::from(vec![0x55u8; PIECE]);
    let body = futures_util::stream::iter(
        (0..size / PIECE).map(move |_| Ok::<_, std::io::Error>(piece.clone())),
    );
    let started = Instant::now();
    let response = reqwest::Client::new()
        .put(format!(
            "http://127.0.0.1:{port}/{ACCOUNT}/big-{}/big.wav",
            hex32()
        ))
        .header("content-type", "audio/wav")
        .header("content-length", size.to_string())
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .expect("ingest answers");
    assert_eq!(response.status(), 201, "{:?}", response.text().await);
    done.store(true, Ordering::Relaxed);
    sampler.await.unwrap();
    let peak = peak.load(Ordering::Relaxed);
    println!(
        "one {mib} MiB upload in {:.2} s: ingest RSS {:.1} MiB before, {:.1} MiB at its peak (+{:.1} MiB)",
        started.elapsed().as_secs_f64(),
        before as f64 / 1024.0,
        peak as f64 / 1024.0,
        (peak - before) as f64 / 1024.0
    );
}
