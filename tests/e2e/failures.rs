//! Nothing lost: broker, database and process failures, injected for real. Each scenario
//! counts files stored, jobs published and rows indexed, and asserts they match exactly.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use vmpipe_common::Settings;
use vmpipe_common::settings::SecretUrl;
use vmpipe_tests::*;

const ACCOUNT: &str = "4e3005310add6229778caf6babfe7cfb";

fn voicemail_path(tag: &str, i: usize) -> (String, String) {
    let doc = format!("202611-{i:032x}");
    let name = format!("{tag}{i}.wav");
    (format!("/{ACCOUNT}/{doc}/{name}"), name)
}

async fn upload(client: Kazoo, tag: &str, range: std::ops::Range<usize>, audio: &[u8]) {
    for i in range {
        let (path, name) = voicemail_path(tag, i);
        let document = mailbox_message("d", &name);
        let att = Attachment {
            document_id: "d",
            name: &name,
            content_type: "audio/wav",
            data: audio,
            document: &document,
        };
        let r = client.store(Verb::Put, &path, Body::Multipart, &att).await;
        assert_eq!(r.status, 201, "PUT {path}");
    }
}

async fn count(pool: &sqlx::PgPool, query: &'static str) -> i64 {
    sqlx::query_scalar(query).fetch_one(pool).await.unwrap()
}

/// Drains the queue: the storage keys of the jobs on it (with repeats).
async fn drain_keys(queue: &TestQueue, quiet: Duration) -> Vec<String> {
    let mut keys = Vec::new();
    while let Some((job, _)) = queue.next(quiet).await {
        keys.push(job.storage_key);
    }
    keys
}

/// A storage directory of its own, a queue of its own, and the settings of an ingest on them.
async fn ingest_on_disk() -> (tempfile::TempDir, TestQueue, Settings) {
    let sandbox = tempfile::tempdir().unwrap();
    let queue_name = format!("vmpipe.test.{}", hex32());
    let queue = TestQueue::declare(&queue_name).await;
    let settings = Settings {
        storage_dir: sandbox.path().join("storage"),
        amqp_url: SecretUrl(amqp_url()),
        queue: queue_name,
        ..Settings::default()
    };
    (sandbox, queue, settings)
}

async fn eventually(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_cut_while_uploading_loses_nothing() {
    let proxy = Proxy::start(url_addr(&amqp_url())).await;
    let queue_name = format!("vmpipe.test.{}", hex32());
    let queue = TestQueue::declare(&queue_name).await;
    let mut options = Options {
        queue: Some(queue_name),
        ..Options::default()
    };
    options.amqp_url = proxy.url_for(&amqp_url());
    let ingest = TestIngest::start(options).await;
    let audio = wav_pcm16(8000, 500);

    upload(ingest.client(), "a", 0..10, &audio).await;
    proxy.cut();
    upload(ingest.client(), "a", 10..25, &audio).await;
    assert!(
        ingest.journal_entries() >= 15,
        "jobs wait on disk: {}",
        ingest.journal_entries()
    );
    let (status, body) = http_get(ingest.port, "/readyz").await.unwrap();
    assert_eq!(status, 200, "journaling is ready: {body}");
    assert!(body.contains("journaled"), "{body}");

    proxy.restore();
    eventually("journal drained", WAIT, async || {
        ingest.journal_entries() == 0
    })
    .await;
    let keys = drain_keys(&queue, Duration::from_millis(700)).await;
    let distinct: BTreeSet<_> = keys.iter().cloned().collect();
    assert_eq!(distinct.len(), 25, "every upload's job published");
    assert!(keys.len() >= 25);
    assert_eq!(
        all_files(&ingest.storage_dir().join("voicemails")).len(),
        25
    );
    queue.delete().await;
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_outage_pauses_indexing_and_dead_letters_nothing() {
    let mut stack = Stack::start(false).await;
    let proxy = Proxy::start(url_addr(&database_admin_url())).await;
    let mut settings = stack.worker_settings();
    settings.database_url = SecretUrl(proxy.url_for(&stack.database.url));
    let worker = Service::spawn("worker", &settings).await;
    stack.wait_for_schema().await;
    let pool = stack.pool().clone();
    let audio = wav_pcm16(8000, 400);

    upload(stack.ingest.client(), "p", 0..5, &audio).await;
    wait_for_count(&pool, "SELECT count(*) FROM voicemails", 5, WAIT).await;
    proxy.cut();
    upload(stack.ingest.client(), "p", 5..20, &audio).await;
    eventually(
        "worker reports the database unreachable",
        WAIT,
        async || {
            worker
                .get("/readyz")
                .await
                .is_some_and(|(status, body)| status == 503 && body.contains("unreachable"))
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        count(&pool, "SELECT count(*) FROM voicemails").await,
        5,
        "nothing indexed while down"
    );

    proxy.restore();
    wait_for_count(
        &pool,
        "SELECT count(*) FROM voicemails",
        20,
        Duration::from_secs(60),
    )
    .await;
    eventually("worker ready again", WAIT, async || {
        worker
            .get("/readyz")
            .await
            .is_some_and(|(status, _)| status == 200)
    })
    .await;
    assert!(
        stack
            .queue
            .next_dead(Duration::from_millis(300))
            .await
            .is_none(),
        "no job dead-lettered by an outage"
    );
    assert_eq!(
        count(&pool, "SELECT count(DISTINCT storage_key) FROM voicemails").await,
        20
    );
    worker.sigkill().await;
    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_killed_mid_jobs_indexes_every_job_exactly_once() {
    let mut stack = Stack::start(false).await;
    let mut settings = stack.worker_settings();
    settings.worker_concurrency = 8;
    let worker = Service::spawn("worker", &settings).await;
    stack.wait_for_schema().await;
    let pool = stack.pool().clone();
    let audio = wav_pcm16(8000, 2000);

    let client = stack.ingest.client();
    let uploads = tokio::spawn({
        let audio = audio.clone();
        async move { upload(client, "k", 0..120, &audio).await }
    });
    eventually("some rows indexed", WAIT, async || {
        count(&pool, "SELECT count(*) FROM voicemails").await >= 5
    })
    .await;
    worker.sigkill().await;
    uploads.await.unwrap();
    let indexed_before = count(&pool, "SELECT count(*) FROM voicemails").await;
    assert!(
        indexed_before < 120,
        "the kill came mid-stream ({indexed_before} indexed)"
    );

    let worker = Service::spawn("worker", &settings).await;
    wait_for_count(&pool, "SELECT count(*) FROM voicemails", 120, WAIT).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(count(&pool, "SELECT count(*) FROM voicemails").await, 120);
    assert_eq!(
        count(&pool, "SELECT count(DISTINCT storage_key) FROM voicemails").await,
        120
    );
    assert_eq!(
        all_files(&stack.ingest.storage_dir().join("voicemails")).len(),
        120
    );
    assert!(
        stack
            .queue
            .next_dead(Duration::from_millis(300))
            .await
            .is_none()
    );
    worker.sigkill().await;
    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_killed_mid_upload_shows_no_partial_file_and_the_retry_succeeds() {
    let (_sandbox, queue, settings) = ingest_on_disk().await;
    let ingest = Service::spawn("ingest", &settings).await;
    let data = nasty_audio(3_000_000);
    let (path, name) = voicemail_path("x", 1);
    let stream = start_partial_put(ingest.health_port, &path, &data, 1_500_000).await;
    let tmp = settings.storage_dir.join("tmp");
    eventually("partial upload on disk", WAIT, async || {
        !all_files(&tmp).is_empty()
    })
    .await;
    ingest.sigkill().await;
    drop(stream);
    assert!(
        all_files(&settings.storage_dir.join("voicemails")).is_empty(),
        "no partial file visible"
    );

    let ingest = Service::spawn("ingest", &settings).await;
    let kazoo = Kazoo {
        port: ingest.health_port,
    };
    assert_eq!(kazoo.get(&path).await.status, 404, "nothing fetchable");
    let document = mailbox_message("d", &name);
    let att = Attachment {
        document_id: "d",
        name: &name,
        content_type: "audio/mpeg",
        data: &data,
        document: &document,
    };
    assert_eq!(
        kazoo.store(Verb::Put, &path, Body::Raw, &att).await.status,
        201
    );
    assert!(kazoo.get(&path).await.body == data);
    let keys = drain_keys(&queue, Duration::from_secs(2)).await;
    assert_eq!(keys.len(), 1, "one job, for the upload that succeeded");
    ingest.sigkill().await;
    queue.delete().await;
}

/// Starts ingest, begins a 2 MB upload, sends `signal` (`TERM`, `INT`) halfway through the
/// body and then sends the rest: the upload gets its 201, ingest exits cleanly, and the file is
/// stored whole. Returns the upload's path.
async fn upload_survives_signal(settings: &Settings, signal: &str, tag: &str) -> String {
    let ingest = Service::spawn("ingest", settings).await;
    let data = nasty_audio(2_000_000);
    let (path, _) = voicemail_path(tag, 1);
    let mut stream = start_partial_put(ingest.health_port, &path, &data, 1_000_000).await;
    let tmp = settings.storage_dir.join("tmp");
    eventually("upload in progress", WAIT, async || {
        !all_files(&tmp).is_empty()
    })
    .await;
    let signal = signal.to_owned();
    let exit = tokio::spawn(async move { ingest.signal(&signal, Duration::from_secs(40)).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    stream.write_all(&data[1_000_000..]).await.unwrap();
    let response = read_response(&mut stream, false).await;
    assert_eq!(response.status, 201, "the in-flight upload completes");
    assert!(exit.await.unwrap().success(), "ingest exits cleanly");
    let stored = std::fs::read(settings.storage_dir.join("voicemails").join(&path[1..])).unwrap();
    assert!(stored == data);
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_uploads_and_jobs_finish() {
    let mut stack = Stack::start(false).await;
    let mut settings = stack.ingest.settings.clone();
    settings.storage_dir = stack.ingest.storage_dir().to_path_buf();
    upload_survives_signal(&settings, "TERM", "t").await;

    // The worker: SIGTERM with jobs in hand exits cleanly, and a new worker finds all the rest.
    upload(stack.ingest.client(), "t", 2..40, &wav_pcm16(8000, 300)).await;
    let worker_settings = stack.worker_settings();
    let worker = Service::spawn("worker", &worker_settings).await;
    stack.wait_for_schema().await;
    let pool = stack.pool().clone();
    eventually("indexing started", WAIT, async || {
        count(&pool, "SELECT count(*) FROM voicemails").await > 0
    })
    .await;
    assert!(
        worker.sigterm(Duration::from_secs(30)).await.success(),
        "worker exits cleanly"
    );
    let worker = Service::spawn("worker", &worker_settings).await;
    wait_for_count(&pool, "SELECT count(*) FROM voicemails", 39, WAIT).await;
    worker.sigkill().await;
    stack.finish().await;
}

/// Ctrl-C, `scripts/run.sh` and many supervisors stop ingest with SIGINT: it must stop as
/// gracefully as with SIGTERM, finishing the upload in flight (and its publish) with a 201.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_lets_an_in_flight_upload_finish() {
    let (queue_name, queue) = {
        let name = format!("vmpipe.test.{}", uuid::Uuid::new_v4().simple());
        let queue = TestQueue::declare(&name).await;
        (name, queue)
    };
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings {
        storage_dir: dir.path().to_path_buf(),
        queue: queue_name,
        amqp_url: SecretUrl(amqp_url()),
        ..Settings::default()
    };
    let path = upload_survives_signal(&settings, "INT", "int").await;
    let (job, _) = queue.next(WAIT).await.expect("its job was published");
    assert_eq!(job.storage_key, path[1..]);
    queue.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failures_are_dead_lettered_and_replayed_after_a_fix() {
    let mut stack = Stack::start(false).await;
    let audio = wav_pcm16(8000, 800);
    // A job delivered over and over without completing (a worker crash loop).
    upload(stack.ingest.client(), "r", 2..3, &audio).await;
    stack.queue.redeliver_unacked(3).await;
    // A job whose file is missing.
    upload(stack.ingest.client(), "r", 1..2, &audio).await;
    let (path, _) = voicemail_path("r", 1);
    let stored = stack.ingest.stored_path(&path[1..]);
    let held = stack.ingest.sandbox.path().join("held");
    std::fs::rename(&stored, &held).unwrap();

    let mut settings = stack.worker_settings();
    settings.max_deliveries = 3;
    stack.worker = Some(TestWorker::start(settings.clone()));
    stack.wait_for_schema().await;
    let mut reasons = Vec::new();
    eventually("both jobs dead-lettered", WAIT, async || {
        reasons = stack.queue.dead_reasons().await;
        reasons.len() == 2
    })
    .await;
    assert!(
        reasons.iter().any(|r| r.contains("delivered 4 times")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("file missing")),
        "{reasons:?}"
    );
    assert_eq!(
        count(stack.pool(), "SELECT count(*) FROM voicemails").await,
        0
    );

    // The fix, then the replay: both are indexed.
    std::fs::rename(&held, &stored).unwrap();
    let replayed = vmpipe_worker::admin::replay_dead(&settings).await.unwrap();
    assert_eq!(replayed, 2);
    wait_for_count(stack.pool(), "SELECT count(*) FROM voicemails", 2, WAIT).await;
    assert!(stack.queue.dead_reasons().await.is_empty());
    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_enqueues_orphan_files_and_reports_rows_without_files() {
    let mut stack = Stack::start(true).await;
    let audio = wav_pcm16(8000, 600);
    upload(stack.ingest.client(), "c", 0..3, &audio).await;
    wait_for_count(stack.pool(), "SELECT count(*) FROM voicemails", 3, WAIT).await;
    stack.stop_worker().await;
    // Files that reached storage but whose jobs never did, and a row whose file was removed.
    for i in 10..12 {
        let (path, _) = voicemail_path("c", i);
        let file = stack.ingest.stored_path(&path[1..]);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, &audio).unwrap();
    }
    let (gone, _) = voicemail_path("c", 0);
    std::fs::remove_file(stack.ingest.stored_path(&gone[1..])).unwrap();

    let settings = stack.worker_settings();
    let progress = Duration::from_secs(5);
    let dry = vmpipe_worker::admin::reconcile(&settings, true, false, progress)
        .await
        .unwrap();
    assert_eq!((dry.files, dry.indexed, dry.enqueued.count), (4, 2, 2));
    assert!(
        stack.queue.next(Duration::from_millis(300)).await.is_none(),
        "a dry run publishes nothing"
    );
    let report = vmpipe_worker::admin::reconcile(&settings, false, false, progress)
        .await
        .unwrap();
    assert_eq!(report.enqueued.count, 2);
    assert_eq!(report.rows_without_file.keys, vec![gone[1..].to_owned()]);
    stack.start_worker().await;
    wait_for_count(
        stack.pool(),
        "SELECT count(*) FROM voicemails WHERE upload_mode = 'reconciled'",
        2,
        WAIT,
    )
    .await;
    let durations: Vec<Option<i32>> =
        sqlx::query_scalar("SELECT duration_ms FROM voicemails WHERE upload_mode = 'reconciled'")
            .fetch_all(stack.pool())
            .await
            .unwrap();
    assert_eq!(durations, vec![Some(600), Some(600)]);
    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unwritable_storage_answers_a_5xx_kazoo_retries_never_201() {
    let (ingest, queue) = TestIngest::start_with_queue(Options::default()).await;
    // Running as root, permissions would not stop us: make the upload area unusable instead.
    let tmp = ingest.storage_dir().join("tmp");
    std::fs::remove_dir_all(&tmp).unwrap();
    std::fs::write(&tmp, b"not a directory").unwrap();
    let audio = wav_pcm16(8000, 300);
    let (path, name) = voicemail_path("w", 1);
    let document = mailbox_message("d", &name);
    let att = Attachment {
        document_id: "d",
        name: &name,
        content_type: "audio/wav",
        data: &audio,
        document: &document,
    };
    let r = ingest
        .client()
        .store(Verb::Put, &path, Body::Raw, &att)
        .await;
    assert!(
        (500..=508).contains(&r.status),
        "a 5xx KAZOO knows, got {}",
        r.status
    );
    assert_eq!(r.json()["error"], "storage_error");
    let (status, body) = http_get(ingest.port, "/readyz").await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(
        queue.next(Duration::from_millis(300)).await.is_none(),
        "no job for an upload that failed"
    );
    // Fixed: the retry succeeds.
    std::fs::remove_file(&tmp).unwrap();
    std::fs::create_dir(&tmp).unwrap();
    assert_eq!(
        ingest
            .client()
            .store(Verb::Put, &path, Body::Raw, &att)
            .await
            .status,
        201
    );
    queue.delete().await;
    ingest.stop().await;
}

/// A worker started while PostgreSQL is down waits for it (under docker compose, exiting is a
/// crash loop): `/healthz` answers meanwhile, `/readyz` is 503, and it is ready once the
/// database is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_started_while_postgresql_is_down_waits_for_it() {
    let database = TestDatabase::new();
    let proxy = Proxy::start(url_addr(&database.url)).await;
    proxy.cut();
    let dir = tempfile::tempdir().unwrap();
    let queue = format!("vmpipe.test.{}", hex32());
    let settings = Settings {
        storage_dir: dir.path().to_path_buf(),
        database_url: SecretUrl(proxy.url_for(&database.url)),
        amqp_url: SecretUrl(amqp_url()),
        queue: queue.clone(),
        ..Settings::default()
    };
    let worker = Service::spawn("worker", &settings).await;
    let (status, body) = worker.get("/readyz").await.expect("readyz answers");
    assert_eq!(status, 503, "{body}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        worker.get("/healthz").await.is_some_and(|(s, _)| s == 200),
        "still alive while the database is down"
    );
    proxy.restore();
    eventually(
        "ready once PostgreSQL is back",
        Duration::from_secs(30),
        async || worker.get("/readyz").await.is_some_and(|(s, _)| s == 200),
    )
    .await;
    worker.sigkill().await;
    TestQueue::declare(&queue).await.delete().await;
    database.drop().await;
}

/// Uploads `keys` to `port` one after another until one fails (the server gone): the keys
/// answered 201.
async fn upload_until_refused(port: u16, keys: Vec<String>, audio: bytes::Bytes) -> Vec<String> {
    let client = reqwest::Client::new();
    let mut accepted = Vec::new();
    for key in keys {
        let sent = client
            .put(format!("http://127.0.0.1:{port}/{key}"))
            .header("content-type", "audio/wav")
            .body(audio.clone())
            .timeout(Duration::from_secs(30))
            .send()
            .await;
        match sent {
            Ok(response) if response.status() == 201 => accepted.push(key),
            _ => break,
        }
    }
    accepted
}

/// The journal is the upload's commit point on a file system: ingest SIGKILLed under load (8
/// clients), then started again on the same disk, publishes every job it answered 201 for,
/// whatever RabbitMQ had confirmed before the kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_killed_under_load_publishes_every_201_after_its_restart() {
    const CLIENTS: usize = 8;
    let (_sandbox, queue, settings) = ingest_on_disk().await;
    let ingest = Service::spawn("ingest", &settings).await;
    let audio = bytes::Bytes::from(wav_pcm16(8000, 400));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let keys = (0..10_000)
                .map(|n| format!("{ACCOUNT}/202612-{c:08x}{n:024x}/k{n}.wav"))
                .collect();
            tokio::spawn(upload_until_refused(
                ingest.health_port,
                keys,
                audio.clone(),
            ))
        })
        .collect();
    let voicemails = settings.storage_dir.join("voicemails");
    eventually("uploads under way", WAIT, async || {
        all_files(&voicemails).len() >= 200
    })
    .await;
    ingest.sigkill().await;
    let mut accepted = BTreeSet::new();
    for client in clients {
        accepted.extend(client.await.unwrap());
    }
    let unconfirmed = vmpipe_ingest::jobs_on_disk(&settings.storage_dir.join("journal")).unwrap();
    let ingest = Service::spawn("ingest", &settings).await;
    let mut published = BTreeSet::new();
    let deadline = Instant::now() + WAIT;
    while !accepted.is_subset(&published) && Instant::now() < deadline {
        if let Some((job, _)) = queue.next(Duration::from_secs(2)).await {
            published.insert(job.storage_key);
        }
    }
    let missing: Vec<_> = accepted.difference(&published).collect();
    eprintln!(
        "killed under load: {} answered 201 ({unconfirmed} not confirmed at the kill), {} \
         published, missing {}",
        accepted.len(),
        published.len(),
        missing.len()
    );
    assert!(accepted.len() >= 200, "the load was under way");
    assert!(missing.is_empty(), "every 201's job published: {missing:?}");
    eventually("the journal confirmed through", WAIT, async || {
        vmpipe_ingest::jobs_on_disk(&settings.storage_dir.join("journal")).unwrap_or(1) == 0
    })
    .await;
    ingest.sigkill().await;
    queue.delete().await;
}
