//! Recovery after a fault clears: how soon the worker indexes again once PostgreSQL or
//! RabbitMQ is back (through the harness's TCP proxy, never stopping the real services), and
//! what it does with the jobs in hand when RabbitMQ goes away while PostgreSQL is down.
//!
//! Each test prints its figures (`recovery:` lines, shown with `--nocapture`) before asserting.

use std::time::{Duration, Instant};

use vmpipe_common::settings::SecretUrl;
use vmpipe_tests::*;

const ACCOUNT: &str = "4e3005310add6229778caf6babfe7cfb";
/// How long each fault lasts: long enough for a per-job backoff to reach its 30 s cap.
const OUTAGE: Duration = Duration::from_secs(40);

async fn upload(client: &Kazoo, tag: &str, range: std::ops::Range<usize>, audio: &[u8]) {
    for i in range {
        let name = format!("{tag}{i}.wav");
        let path = format!("/{ACCOUNT}/202612-{i:032x}/{name}");
        let r = client
            .store_voicemail_at(&path, "d", &name, audio, "audio/wav")
            .await;
        assert_eq!(r.status, 201, "PUT {path}");
    }
}

async fn rows(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM voicemails")
        .fetch_one(pool)
        .await
        .unwrap_or(-1)
}

/// Polls until `check` holds; how long that took, or `None` after `timeout`.
async fn time_until(timeout: Duration, mut check: impl AsyncFnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if check().await {
            return Some(start.elapsed());
        }
        if start.elapsed() > timeout {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Jobs wait on PostgreSQL for 40 s while more arrive; once it is back, every row is written
/// within seconds (one "database is back" signal wakes them all), not after each job's own
/// backoff (up to 30 s) runs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_waiting_on_postgresql_are_indexed_within_seconds_of_its_return() {
    let mut stack = Stack::start(false).await;
    let proxy = Proxy::start(url_addr(&database_admin_url())).await;
    let mut settings = stack.worker_settings();
    settings.database_url = SecretUrl(proxy.url_for(&stack.database.url));
    settings.worker_concurrency = 16;
    let worker = Service::spawn("worker", &settings).await;
    stack.wait_for_schema().await;
    let pool = stack.pool().clone();
    let client = stack.ingest.client();
    let audio = wav_pcm16(8000, 300);
    upload(&client, "d", 0..2, &audio).await;
    wait_for_count(&pool, "SELECT count(*) FROM voicemails", 2, WAIT).await;

    proxy.cut();
    let cut = Instant::now();
    upload(&client, "d", 2..8, &audio).await;
    tokio::time::sleep(OUTAGE / 2).await;
    upload(&client, "d", 8..14, &audio).await;
    tokio::time::sleep(OUTAGE.saturating_sub(cut.elapsed())).await;
    assert_eq!(
        rows(&pool).await,
        2,
        "nothing indexed while PostgreSQL is cut"
    );

    proxy.restore();
    let back = time_until(Duration::from_secs(60), async || rows(&pool).await == 14).await;
    eprintln!("recovery: PostgreSQL restored after {OUTAGE:?}: all rows after {back:?}");
    let back = back.expect("every row written once PostgreSQL is back");
    assert!(
        back <= Duration::from_secs(8),
        "rows took {back:?} after PostgreSQL came back"
    );
    let distinct: i64 = sqlx::query_scalar("SELECT count(DISTINCT storage_key) FROM voicemails")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(distinct, 14);
    assert!(
        stack
            .queue
            .next_dead(Duration::from_millis(300))
            .await
            .is_none(),
        "nothing dead-lettered by the outage"
    );
    worker.sigkill().await;
    stack.finish().await;
}

/// The worker's RabbitMQ connection is cut for 40 s while ingest keeps publishing; once it is
/// back, the worker consumes again within seconds (reconnects are at most a few seconds apart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_consumes_within_seconds_of_rabbitmq_returning() {
    let mut stack = Stack::start(false).await;
    let proxy = Proxy::start(url_addr(&amqp_url())).await;
    let mut settings = stack.worker_settings();
    settings.amqp_url = SecretUrl(proxy.url_for(&amqp_url()));
    let worker = Service::spawn("worker", &settings).await;
    stack.wait_for_schema().await;
    let pool = stack.pool().clone();
    let client = stack.ingest.client();
    let audio = wav_pcm16(8000, 300);
    upload(&client, "r", 0..2, &audio).await;
    wait_for_count(&pool, "SELECT count(*) FROM voicemails", 2, WAIT).await;

    proxy.cut();
    let cut = Instant::now();
    let gone = time_until(WAIT, async || {
        worker
            .get("/readyz")
            .await
            .is_some_and(|(status, body)| status == 503 && body.contains("not connected"))
    })
    .await;
    assert!(gone.is_some(), "/readyz turns 503 without RabbitMQ");
    upload(&client, "r", 2..8, &audio).await;
    tokio::time::sleep(OUTAGE.saturating_sub(cut.elapsed())).await;
    assert_eq!(
        rows(&pool).await,
        2,
        "nothing consumed while RabbitMQ is cut"
    );

    proxy.restore();
    let back = time_until(Duration::from_secs(60), async || rows(&pool).await == 8).await;
    eprintln!("recovery: RabbitMQ restored after {OUTAGE:?}: consuming again after {back:?}");
    let back = back.expect("the jobs published meanwhile are consumed");
    assert!(
        back <= Duration::from_secs(10),
        "consuming again took {back:?} after RabbitMQ came back"
    );
    let ready = time_until(WAIT, async || {
        worker.get("/readyz").await.is_some_and(|(s, _)| s == 200)
    })
    .await;
    assert!(ready.is_some(), "ready again");
    worker.sigkill().await;
    stack.finish().await;
}

/// PostgreSQL is down with jobs in hand, then RabbitMQ goes too. The worker notices at once
/// (`/readyz`, its log), lets go of the jobs whose channel is gone instead of "acking" them on
/// the dead channel, and once both are back every voicemail is one row, indexed (and counted as
/// indexed) once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_lost_while_postgresql_is_down_is_noticed_at_once_and_counted_once() {
    let mut stack = Stack::start(false).await;
    let database_proxy = Proxy::start(url_addr(&database_admin_url())).await;
    let amqp_proxy = Proxy::start(url_addr(&amqp_url())).await;
    let mut settings = stack.worker_settings();
    settings.database_url = SecretUrl(database_proxy.url_for(&stack.database.url));
    settings.amqp_url = SecretUrl(amqp_proxy.url_for(&amqp_url()));
    settings.worker_concurrency = 8;
    let log = stack.ingest.sandbox.path().join("worker.log");
    let worker = Service::spawn_logging("worker", &settings, Some(&log)).await;
    stack.wait_for_schema().await;
    let pool = stack.pool().clone();
    let client = stack.ingest.client();
    let audio = wav_pcm16(8000, 300);
    upload(&client, "b", 0..3, &audio).await;
    wait_for_count(&pool, "SELECT count(*) FROM voicemails", 3, WAIT).await;

    database_proxy.cut();
    upload(&client, "b", 3..15, &audio).await;
    let db_down = time_until(WAIT, async || {
        worker
            .get("/readyz")
            .await
            .is_some_and(|(status, body)| status == 503 && body.contains("unreachable"))
    })
    .await;
    assert!(db_down.is_some(), "/readyz turns 503 without PostgreSQL");
    // The jobs in hand have failed their upsert at least once and wait on the database.
    tokio::time::sleep(Duration::from_secs(2)).await;

    amqp_proxy.cut();
    let noticed = time_until(Duration::from_secs(10), async || {
        worker.get("/readyz").await.is_some_and(|(status, body)| {
            status == 503 && body.contains(r#""rabbitmq":"not connected""#)
        })
    })
    .await;
    let logged = time_until(Duration::from_secs(5), async || {
        std::fs::read_to_string(&log).is_ok_and(|text| {
            text.lines()
                .any(|line| line.contains("WARN") && line.contains("RabbitMQ connection lost"))
        })
    })
    .await;
    eprintln!(
        "recovery: RabbitMQ cut while PostgreSQL is down: /readyz said so after {noticed:?}, the log after {logged:?}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;

    database_proxy.restore();
    amqp_proxy.restore();
    let all = time_until(Duration::from_secs(60), async || rows(&pool).await == 15).await;
    // Let every delivery settle: the counter must not move any more.
    let mut indexed = -1.0;
    let settled = time_until(Duration::from_secs(30), async || {
        let Some((200, metrics)) = worker.get("/metrics").await else {
            return false;
        };
        let now = sample(&metrics, "vmpipe_jobs_total", &[r#"outcome="indexed""#]);
        let stable = now == indexed;
        indexed = now;
        stable && worker.get("/readyz").await.is_some_and(|(s, _)| s == 200)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let metrics = worker.get("/metrics").await.expect("metrics").1;
    let indexed = sample(&metrics, "vmpipe_jobs_total", &[r#"outcome="indexed""#]);
    eprintln!(
        "recovery: after both returned: all rows after {all:?}, settled {settled:?}, vmpipe_jobs_total{{outcome=\"indexed\"}} = {indexed} for 15 voicemails"
    );

    assert!(
        noticed.is_some_and(|t| t <= Duration::from_secs(3)),
        "/readyz names RabbitMQ within seconds: {noticed:?}"
    );
    assert!(
        logged.is_some(),
        "the log says the RabbitMQ connection is lost"
    );
    assert!(all.is_some(), "every voicemail indexed");
    let distinct: i64 = sqlx::query_scalar("SELECT count(DISTINCT storage_key) FROM voicemails")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!((rows(&pool).await, distinct), (15, 15), "one row each");
    assert_eq!(indexed, 15.0, "each voicemail counted as indexed once");
    assert!(
        stack
            .queue
            .next_dead(Duration::from_millis(300))
            .await
            .is_none(),
        "nothing dead-lettered"
    );
    worker.sigkill().await;
    stack.finish().await;
}

/// RabbitMQ hangs: its connection stays open and nothing is answered (what a SIGSTOPped or
/// wedged broker looks like). The worker's `/readyz` says so within seconds instead of
/// "consuming", is ready again once the broker answers, and consumes as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_rabbitmq_makes_the_worker_unready_until_it_answers_again() {
    let mut stack = Stack::start(false).await;
    let amqp_proxy = Proxy::start(url_addr(&amqp_url())).await;
    let mut settings = stack.worker_settings();
    settings.amqp_url = SecretUrl(amqp_proxy.url_for(&amqp_url()));
    let worker = Service::spawn("worker", &settings).await;
    stack.wait_for_schema().await;
    let ready = time_until(WAIT, async || {
        worker.get("/readyz").await.is_some_and(|(s, _)| s == 200)
    })
    .await;
    assert!(ready.is_some(), "ready before the hang");

    amqp_proxy.pause();
    let noticed = time_until(Duration::from_secs(30), async || {
        worker.get("/readyz").await.is_some_and(|(status, body)| {
            status == 503 && body.contains(r#""rabbitmq":"connected but not answering""#)
        })
    })
    .await;
    eprintln!("recovery: RabbitMQ hung: the worker's /readyz said so after {noticed:?}");
    let last = worker.get("/readyz").await;
    amqp_proxy.resume();
    let noticed = noticed.unwrap_or_else(|| panic!("/readyz during the hang: {last:?}"));
    assert!(
        noticed <= Duration::from_secs(15),
        "noticed after {noticed:?}"
    );

    let back = time_until(Duration::from_secs(30), async || {
        worker.get("/readyz").await.is_some_and(|(s, _)| s == 200)
    })
    .await;
    eprintln!("recovery: RabbitMQ answering again: ready after {back:?}");
    assert!(back.is_some(), "ready again once RabbitMQ answers");
    let pool = stack.pool().clone();
    upload(&stack.ingest.client(), "h", 0..2, &wav_pcm16(8000, 300)).await;
    wait_for_count(&pool, "SELECT count(*) FROM voicemails", 2, WAIT).await;
    worker.sigkill().await;
    stack.finish().await;
}
