//! Events benchmark: `cargo bench -p vmpipe-tests --bench events [-- UPLOADS] [events=N]`
//! (`scripts/bench-events.sh`).
//!
//! Runs ingest and a worker in this process against the local PostgreSQL and RabbitMQ (a
//! database, queue and exchange of the run's own, removed afterwards) and prints:
//! 1. 201 → `voicemail.indexed` at a webhook receiver on loopback (median, p99, max): first
//!    while 4 clients upload as fast as they can (the peak rate), then paced at half of it;
//! 2. the dispatcher's rate to an `amqp` sink: `events=N` (default 50,000) events written
//!    straight into the outbox, delivered (persistent, confirmed) to a durable queue bound to
//!    the exchange, timed from the worker's start to the last delivery recorded.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use vmpipe_common::Settings;
use vmpipe_common::settings::SecretUrl;
use vmpipe_tests::*;

const ACCOUNT: &str = "4e3005310add6229778caf6babfe7cfb";
const SECRET: &str = "the-bench-webhook-secret";

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    bench_logs();
    let uploads: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(2000);
    let events: i64 = std::env::args()
        .find_map(|a| a.strip_prefix("events=")?.parse().ok())
        .unwrap_or(50_000);
    webhook_latency(uploads).await;
    dispatch_rate(events).await;
}

/// Part 1: 201 → the webhook receiver has the event.
async fn webhook_latency(uploads: usize) {
    let queue_name = format!("vmpipe.bench.{}", hex32());
    let queue = TestQueue::declare(&queue_name).await;
    let ingest = TestIngest::start(Options {
        queue: Some(queue_name),
        ..Options::default()
    })
    .await;
    let database = TestDatabase::new();
    let receiver = WebhookReceiver::start(SECRET, vec![]);
    let settings = Settings {
        database_url: SecretUrl(database.url.clone()),
        notify: vec![webhook_sink("bench", &receiver.url, SECRET)],
        ..ingest.settings.clone()
    };
    let worker = TestWorker::start(settings);
    let pool = database.wait_for_schema().await;
    // 10 s of 8 kHz mono 16-bit WAV, as FreeSWITCH records it.
    let wav = wav_pcm16(8000, 10_000);
    println!(
        "events benchmark, part 1: {uploads} uploads of {} KiB, a webhook sink on loopback",
        wav.len() / 1024
    );
    let answered: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();

    let started = Instant::now();
    upload_many(&ingest, &wav, "peak", uploads, 4, &answered).await;
    let peak = uploads as f64 / started.elapsed().as_secs_f64();
    receiver.wait_for(uploads, Duration::from_secs(300)).await;
    let (median, p99, max) = latency(&receiver, &answered, "peak");
    println!(
        "at the peak rate ({peak:.0} uploads/s, 4 clients): 201 -> webhook median {median:.1} ms, p99 {p99:.1} ms, max {max:.1} ms"
    );

    let paced = uploads / 2;
    upload_paced(&ingest, &wav, "paced", paced, peak / 2.0, &answered).await;
    receiver
        .wait_for(uploads + paced, Duration::from_secs(300))
        .await;
    let (median, p99, max) = latency(&receiver, &answered, "paced");
    println!(
        "paced at {:.0} uploads/s (half of the peak): 201 -> webhook median {median:.1} ms, p99 {p99:.1} ms, max {max:.1} ms  (target p99 < 1000 ms)",
        peak / 2.0
    );
    let bad = receiver
        .received()
        .iter()
        .filter(|r| !r.signature_ok)
        .count();
    assert_eq!(bad, 0, "every request signed");

    worker.stop().await;
    receiver.stop().await;
    pool.close().await;
    queue.delete().await;
    ingest.stop().await;
    database.drop().await;
}

/// Median, p99 and max in ms from each `tag` upload's 201 to its event's arrival.
fn latency(
    receiver: &WebhookReceiver,
    answered: &Mutex<HashMap<String, Instant>>,
    tag: &str,
) -> (f64, f64, f64) {
    let answered = answered.lock().unwrap();
    let mut ms: Vec<f64> = receiver
        .received()
        .iter()
        .filter(|r| r.body["type"] == "voicemail.indexed")
        .filter_map(|r| {
            let name = r.body["voicemail"]["attachment_name"].as_str()?;
            if !name.starts_with(tag) {
                return None;
            }
            let at_201 = answered.get(name)?;
            Some(r.at.saturating_duration_since(*at_201).as_secs_f64() * 1000.0)
        })
        .collect();
    assert!(!ms.is_empty(), "no {tag} events");
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() as f64 * q).ceil() as usize).clamp(1, ms.len()) - 1];
    (at(0.5), at(0.99), *ms.last().unwrap())
}

/// Part 2: the dispatcher's rate to an `amqp` sink.
async fn dispatch_rate(events: i64) {
    let database = TestDatabase::new();
    let exchange = format!("vmpipe.bench.events.{}", hex32());
    let settings = Settings {
        database_url: SecretUrl(database.url.clone()),
        // No jobs: a queue of its own that nobody publishes to.
        queue: format!("vmpipe.bench.{}", hex32()),
        worker_listen: "127.0.0.1:0".into(),
        notify: vec![amqp_sink("bus", &exchange)],
        ..Settings::default()
    };
    // The schema first (a worker without sinks applies it), then the events, then the worker.
    let migrating = TestWorker::start(Settings {
        notify: Vec::new(),
        ..settings.clone()
    });
    let pool = database.wait_for_schema().await;
    migrating.stop().await;
    sqlx::query(
        "INSERT INTO events (type, voicemail_id, account_id, voicemail)
         SELECT 'voicemail.indexed', gen_random_uuid(), $2,
                jsonb_build_object('id', gen_random_uuid(), 'storage_key', $2 || '/doc/' || i || '.wav',
                    'account_id', $2, 'caller_id_number', '+14155550100',
                    'caller_id_name', 'Alice Example', 'to_user', '1010', 'duration_ms', 5320,
                    'codec', 'mp3', 'size_bytes', 85148, 'sha256', md5(i::text) || md5(i::text),
                    'received_at', now(), 'recorded_at', now())
         FROM generate_series(1, $1) AS i",
    )
    .bind(events)
    .bind(ACCOUNT)
    .execute(&pool)
    .await
    .unwrap();
    // A durable queue bound to the exchange, drained by a consumer: RabbitMQ stores each
    // persistent event, as it would for a real subscriber.
    let connection = vmpipe_common::amqp::connect(&amqp_url(), "vmpipe-bench events")
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let consumer = EventConsumer::bind(&exchange).await; // declares the exchange
    let queue = format!("{exchange}.q");
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            queue.as_str().into(),
            exchange.as_str().into(),
            "voicemail.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel.basic_qos(1000, Default::default()).await.unwrap();
    let mut deliveries = channel
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let received = Arc::new(std::sync::atomic::AtomicI64::new(0));
    let counter = received.clone();
    let draining = tokio::spawn(async move {
        while let Some(Ok(delivery)) = deliveries.next().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let _ = delivery.ack(BasicAckOptions::default()).await;
        }
    });
    println!(
        "events benchmark, part 2: {events} events in the outbox, an amqp sink (concurrency 512)"
    );

    let started = Instant::now();
    let worker = TestWorker::start(settings);
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let delivered: i64 =
            sqlx::query_scalar("SELECT count(*) FROM event_deliveries WHERE status = 'delivered'")
                .fetch_one(&pool)
                .await
                .unwrap();
        if delivered >= events {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {delivered} of {events} delivered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "dispatcher: {events} events fanned out, published with confirms and recorded in {secs:.2} s = {:.0} events/s  (target >= 2000/s)",
        events as f64 / secs
    );
    while received.load(std::sync::atomic::Ordering::Relaxed) < events {
        assert!(Instant::now() < deadline, "the consumer got them all");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    worker.stop().await;
    draining.abort();
    let _ = channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    let _ = channel
        .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
        .await;
    drop(consumer);
    pool.close().await;
    database.drop().await;
}

async fn upload_many(
    ingest: &TestIngest,
    wav: &[u8],
    tag: &str,
    count: usize,
    concurrency: usize,
    answered: &Arc<Mutex<HashMap<String, Instant>>>,
) {
    let mut tasks = Vec::new();
    for lane in 0..concurrency {
        let client = ingest.client();
        let wav = wav.to_vec();
        let tag = tag.to_owned();
        let answered = answered.clone();
        tasks.push(tokio::spawn(async move {
            for i in (lane..count).step_by(concurrency) {
                upload_one(&client, &wav, &format!("{tag}{i}.wav"), &answered).await;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

/// `count` uploads started at `rate` per second, whatever the answers take.
async fn upload_paced(
    ingest: &TestIngest,
    wav: &[u8],
    tag: &str,
    count: usize,
    rate: f64,
    answered: &Arc<Mutex<HashMap<String, Instant>>>,
) {
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for i in 0..count {
        tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / rate)).await;
        let client = ingest.client();
        let wav = wav.to_vec();
        let name = format!("{tag}{i}.wav");
        let answered = answered.clone();
        tasks.push(tokio::spawn(async move {
            upload_one(&client, &wav, &name, &answered).await;
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

async fn upload_one(
    client: &Kazoo,
    wav: &[u8],
    name: &str,
    answered: &Mutex<HashMap<String, Instant>>,
) {
    let r = client
        .store_voicemail(ACCOUNT, name, wav, "audio/wav")
        .await;
    assert_eq!(r.status, 201);
    answered
        .lock()
        .unwrap()
        .insert(name.to_owned(), Instant::now());
}
