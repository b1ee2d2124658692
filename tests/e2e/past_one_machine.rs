//! Past one machine: voicemails in a bucket of a real Garage, shared by several ingests; the
//! store going away and coming back; the admin commands on a bucket.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use vmpipe_common::Settings;
use vmpipe_common::settings::HookAudio;
use vmpipe_tests::*;

use crate::scripting::worker;

const ACCOUNT: &str = "4e3005310add6229778caf6babfe7cfb";

/// Points `settings` at the bucket `from` uses.
fn same_bucket(from: &Settings) -> Tweak {
    let from = from.clone();
    Box::new(move |settings: &mut Settings| {
        settings.storage = from.storage;
        settings.s3_bucket = from.s3_bucket.clone();
        settings.s3_prefix = from.s3_prefix.clone();
        settings.s3_endpoint = from.s3_endpoint.clone();
        settings.s3_region = from.s3_region.clone();
        settings.s3_access_key_id = from.s3_access_key_id.clone();
        settings.s3_secret_access_key = from.s3_secret_access_key.clone();
    })
}

/// A second ingest on the stack's bucket and queue, with its own local disk (its journal).
async fn second_ingest(stack: &Stack) -> TestIngest {
    TestIngest::start(Options {
        queue: Some(stack.queue.name.clone()),
        tweak: Some(same_bucket(&stack.ingest.settings)),
        ..Options::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voicemail_stored_through_one_ingest_is_fetched_through_another_and_indexed_once() {
    let mut stack = Stack::start_on(Backend::S3, true).await;
    let other = second_ingest(&stack).await;
    let audio = wav_pcm16(8000, 1200);
    let document_id = format!("202611-{}", hex32());
    let key = format!("{ACCOUNT}/{document_id}/vm.wav");
    let store_through = async |kazoo: Kazoo| {
        let path = format!("/{key}");
        let stored = kazoo
            .store_voicemail_at(&path, &document_id, "vm.wav", &audio, "audio/wav")
            .await;
        assert_eq!(stored.status, 201);
    };
    store_through(stack.ingest.client()).await;
    // KAZOO's doubled fetch path, through the ingest that did not store it.
    let fetched = other
        .client()
        .get(&format!("/{key}/{key}?{VOICEMAIL_FETCH_QUERY}"))
        .await;
    assert_eq!(fetched.status, 200);
    assert!(fetched.body == audio, "the same bytes");
    let head = other.client().head(&format!("/{key}")).await;
    assert_eq!(
        head.header("content-length"),
        Some(audio.len().to_string().as_str())
    );
    // KAZOO retries the upload through the other one: still one voicemail.
    store_through(other.client()).await;
    wait_for_count(stack.pool(), "SELECT count(*) FROM voicemails", 1, WAIT).await;
    // Both jobs done: the row is the one row, measured and hashed from the bucket's copy.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let row = sqlx::query("SELECT storage_key, duration_ms, sha256 FROM voicemails")
        .fetch_all(stack.pool())
        .await
        .unwrap();
    assert_eq!(row.len(), 1, "indexed once");
    assert_eq!(text(&row[0], "storage_key"), key);
    assert_eq!(text(&row[0], "sha256"), sha256_hex(&audio));
    let duration: Option<i32> = sqlx::Row::get(&row[0], "duration_ms");
    assert_eq!(duration, Some(1200));
    assert_eq!(stack.ingest.stored_keys().await, [key]);
    other.stop().await;
    stack.stop_worker().await;
    stack.finish().await;
}

/// Uploads `keys` as a load balancer in front of `ports` sends them: to the first ingest
/// that is up, and, when an upload fails there (no answer, a 5xx), KAZOO's retry goes to the
/// next, up to five tries. Returns the keys that got their 201.
async fn upload_behind_a_balancer(
    ports: Arc<Vec<u16>>,
    down: Arc<Vec<AtomicBool>>,
    keys: Vec<String>,
    audio: Bytes,
) -> Vec<String> {
    let client = reqwest::Client::new();
    let mut accepted = Vec::new();
    for key in keys {
        for attempt in 0..5 {
            let pick = (0..ports.len())
                .map(|i| (i + attempt) % ports.len())
                .find(|&i| !down[i].load(Ordering::SeqCst))
                .unwrap_or(0);
            let sent = client
                .put(format!("http://127.0.0.1:{}/{key}", ports[pick]))
                .header("content-type", "audio/wav")
                .body(audio.clone())
                .timeout(Duration::from_secs(30))
                .send()
                .await;
            match sent {
                Ok(response) if response.status() == 201 => {
                    accepted.push(key.clone());
                    break;
                }
                Ok(response) => assert!(
                    response.status().is_server_error(),
                    "{key}: {}",
                    response.status()
                ),
                Err(_) => {}
            }
            // The balancer notices the dead one.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    accepted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ingest_killed_mid_load_loses_nothing_and_the_retries_go_to_the_other() {
    const UPLOADS: usize = 240;
    const CLIENTS: usize = 8;
    let mut stack = Stack::start_on(Backend::S3, true).await;
    let disks = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let mut ingests = Vec::new();
    for disk in &disks {
        let settings = Settings {
            storage_dir: disk.path().join("storage"),
            ..stack.ingest.settings.clone()
        };
        ingests.push(Service::spawn("ingest", &settings).await);
    }
    let ports = Arc::new(ingests.iter().map(|i| i.health_port).collect::<Vec<_>>());
    let down = Arc::new(vec![AtomicBool::new(false), AtomicBool::new(false)]);
    let audio = Bytes::from(wav_pcm16(8000, 400));
    let all: Vec<String> = (0..UPLOADS)
        .map(|n| format!("{ACCOUNT}/202612-{n:032x}/lb{n}.wav"))
        .collect();
    let clients: Vec<_> = all
        .chunks(UPLOADS / CLIENTS)
        .map(|keys| {
            tokio::spawn(upload_behind_a_balancer(
                ports.clone(),
                down.clone(),
                keys.to_vec(),
                audio.clone(),
            ))
        })
        .collect();
    // Mid-load, the first ingest dies: what it answered 201 is in the bucket, its job on the
    // queue; what it did not answer, KAZOO sends again.
    let pool = stack.pool().clone();
    let deadline = Instant::now() + WAIT;
    while count(&pool).await < (UPLOADS / 4) as i64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first = ingests.remove(0);
    first.sigkill().await;
    down[0].store(true, Ordering::SeqCst);
    let mut accepted = BTreeSet::new();
    for client in clients {
        accepted.extend(client.await.unwrap());
    }
    assert_eq!(
        accepted.len(),
        UPLOADS,
        "every upload got its 201, here or there"
    );
    wait_for_count(
        stack.pool(),
        "SELECT count(*) FROM voicemails",
        UPLOADS as i64,
        WAIT,
    )
    .await;
    let survivor = Kazoo { port: ports[1] };
    for key in all.iter().step_by(7) {
        // KAZOO's doubled path, for what either of the two stored.
        let fetched = survivor
            .get(&format!("/{key}/{key}?{VOICEMAIL_FETCH_QUERY}"))
            .await;
        assert_eq!(fetched.status, 200, "{key} through the survivor");
        assert_eq!(fetched.body.len(), audio.len());
    }
    let stored: BTreeSet<String> = stack.ingest.stored_keys().await.into_iter().collect();
    assert_eq!(
        stored,
        all.iter().cloned().collect(),
        "every voicemail in the bucket"
    );
    drop(ingests);
    stack.stop_worker().await;
    stack.finish().await;
}

async fn count(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM voicemails")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_get_503_while_the_store_is_down_and_everything_resumes_when_it_is_back() {
    let mut garage = Garage::start();
    let mut bucket = Settings::default();
    garage.use_bucket(&mut bucket, &garage.bucket("outage"));
    let mut stack = Stack::start_with(
        Options {
            tweak: Some(same_bucket(&bucket)),
            ..Options::default()
        },
        true,
    )
    .await;
    let kazoo = stack.ingest.client();
    let audio = wav_pcm16(8000, 300);
    let put = async |name: &str| {
        kazoo
            .store_voicemail(ACCOUNT, name, &audio, "audio/wav")
            .await
    };
    assert_eq!(put("before.wav").await.status, 201);
    wait_for_count(stack.pool(), "SELECT count(*) FROM voicemails", 1, WAIT).await;

    // Two more stored while the worker is away; then the store goes down.
    stack.stop_worker().await;
    assert_eq!(put("queued1.wav").await.status, 201);
    assert_eq!(put("queued2.wav").await.status, 201);
    let before: String = sqlx::query_scalar("SELECT storage_key FROM voicemails")
        .fetch_one(stack.pool())
        .await
        .unwrap();
    garage.stop();
    for n in 0..4 {
        let refused = put(&format!("down{n}.wav")).await;
        assert_eq!(refused.status, 503, "never a 201 while the store is down");
        assert_eq!(
            refused.header("retry-after"),
            Some("2"),
            "KAZOO retries by itself"
        );
        assert_eq!(refused.json()["error"], "storage_unavailable");
    }
    assert_eq!(kazoo.get(&format!("/{before}")).await.status, 503);
    let (ready, _) = http_get(stack.ingest.port, "/readyz").await.unwrap();
    assert_eq!(ready, 503, "not ready while the store is down");
    // The worker's jobs wait for the store: none fails, none is dead-lettered.
    stack.start_worker().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(count(stack.pool()).await, 1);
    assert_eq!(
        stack.queue.dead_reasons().await,
        Vec::<String>::new(),
        "no job gave up"
    );

    garage.restart();
    assert_eq!(put("after.wav").await.status, 201);
    assert_eq!(kazoo.get(&format!("/{before}")).await.status, 200);
    // The two queued ones and the new one: nothing the store's outage refused was kept.
    wait_for_count(stack.pool(), "SELECT count(*) FROM voicemails", 4, WAIT).await;
    let names: Vec<String> =
        sqlx::query_scalar("SELECT attachment_name FROM voicemails ORDER BY attachment_name")
            .fetch_all(stack.pool())
            .await
            .unwrap();
    assert_eq!(
        names,
        ["after.wav", "before.wav", "queued1.wav", "queued2.wav"]
    );
    stack.stop_worker().await;
    stack.finish().await;
    drop(garage);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_reindex_and_prune_work_on_a_bucket() {
    let mut stack = Stack::start_on(Backend::S3, true).await;
    for name in ["a.wav", "b.wav", "c.wav"] {
        stack.upload_wav(ACCOUNT, name).await;
    }
    wait_for_count(stack.pool(), "SELECT count(*) FROM voicemails", 3, WAIT).await;
    // Two objects in the bucket without a row (an ingest whose jobs were lost, say).
    let store = vmpipe_common::store::open(&stack.ingest.settings).unwrap();
    for n in 0..2 {
        let key = vmpipe_common::StorageKey::parse(&format!("{ACCOUNT}/lost{n}/m.wav")).unwrap();
        let mut writer = store.create(&key);
        writer
            .write(Bytes::from(wav_pcm16(8000, 200)))
            .await
            .unwrap();
        writer.commit().await.unwrap().keep().await.unwrap();
    }
    let settings = stack.worker_settings();
    let output = worker(&settings, &["reconcile"])
        .output()
        .expect("worker runs");
    assert!(output.status.success(), "{output:?}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["files"], 5, "{report}");
    assert_eq!(report["enqueued"]["count"], 2, "{report}");
    wait_for_count(stack.pool(), "SELECT count(*) FROM voicemails", 5, WAIT).await;
    // Reindex measures every object again, from the bucket.
    sqlx::query("UPDATE voicemails SET duration_ms = NULL")
        .execute(stack.pool())
        .await
        .unwrap();
    let output = worker(&settings, &["reindex"])
        .output()
        .expect("worker runs");
    assert!(output.status.success(), "{output:?}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["reprobed"], 5, "{report}");
    let measured: i64 = sqlx::query_scalar("SELECT count(*) FROM voicemails WHERE duration_ms > 0")
        .fetch_one(stack.pool())
        .await
        .unwrap();
    assert_eq!(measured, 5);

    sqlx::query("UPDATE voicemails SET received_at = now() - interval '100 days'")
        .execute(stack.pool())
        .await
        .unwrap();
    let prune = ["prune", "--older-than", "90d", "--apply", "--pause-ms", "0"];
    // A prefix with nothing below it looks like the wrong bucket: nothing is deleted.
    let wrong = Settings {
        s3_prefix: "elsewhere".into(),
        ..settings.clone()
    };
    let output = worker(&wrong, &prune).output().expect("worker runs");
    assert!(!output.status.success(), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("storage looks wrong"));
    assert_eq!(count(stack.pool()).await, 5);

    let output = worker(&settings, &prune).output().expect("worker runs");
    assert!(output.status.success(), "{output:?}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["voicemails"], 5, "{report}");
    assert!(
        report["storage_dir"]
            .as_str()
            .unwrap()
            .starts_with("s3://vm-ingest-")
    );
    assert_eq!(count(stack.pool()).await, 0);
    assert!(
        stack.ingest.stored_keys().await.is_empty(),
        "the bucket is empty"
    );
    stack.stop_worker().await;
    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_get_a_temporary_copy_of_the_audio_in_the_bucket_deleted_afterwards() {
    let mut stack = Stack::start_on(Backend::S3, false).await;
    let size = "wc -c < \"$1\" | tr -d ' '";
    let original = shell_hook("original", HookAudio::Original, size);
    let decoded = shell_hook("decoded", HookAudio::Wav16k, size);
    let settings = Settings {
        hooks: vec![original, decoded],
        ..stack.worker_settings()
    };
    stack.start_worker_with(settings).await;
    let wav = wav_pcm16(8000, 1500);
    stack.upload(ACCOUNT, "hooked.wav", &wav, "audio/wav").await;
    for (hook, bytes) in [("original", wav.len()), ("decoded", 44 + 1500 * 32)] {
        let row = stack.finished_transcription("hooked.wav", hook, WAIT).await;
        assert_eq!(
            text(&row, "status"),
            "done",
            "{hook}: {}",
            text(&row, "error")
        );
        assert_eq!(text(&row, "text"), bytes.to_string(), "{hook}");
    }
    let storage = stack.ingest.storage_dir().to_path_buf();
    assert!(
        all_files(&storage.join("tmp")).is_empty(),
        "every local copy deleted: {:?}",
        all_files(&storage.join("tmp"))
    );
    assert!(
        !storage.join("voicemails").exists(),
        "nothing stored on the local disk"
    );
    stack.stop_worker().await;
    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_and_worker_start_while_the_store_is_down_and_serve_once_it_is_up() {
    let mut garage = Garage::start();
    let mut bucket = Settings::default();
    garage.use_bucket(&mut bucket, &garage.bucket("late"));
    garage.stop();
    // Both start (compose starts them with the store): uploads get 503 meanwhile.
    let stack = Stack::start_with(
        Options {
            tweak: Some(same_bucket(&bucket)),
            ..Options::default()
        },
        true,
    )
    .await;
    let kazoo = stack.ingest.client();
    let audio = wav_pcm16(8000, 300);
    let early = kazoo
        .store_voicemail(ACCOUNT, "early.wav", &audio, "audio/wav")
        .await;
    assert_eq!(early.status, 503);
    garage.restart();
    let late = kazoo
        .store_voicemail(ACCOUNT, "late.wav", &audio, "audio/wav")
        .await;
    assert_eq!(late.status, 201);
    wait_for_count(stack.pool(), "SELECT count(*) FROM voicemails", 1, WAIT).await;
    stack.finish().await;
    drop(garage);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_in_flight_when_the_store_dies_get_a_5xx_and_every_201_is_indexed() {
    let mut garage = Garage::start();
    let mut bucket = Settings::default();
    garage.use_bucket(&mut bucket, &garage.bucket("dies"));
    let stack = Stack::start_with(
        Options {
            tweak: Some(same_bucket(&bucket)),
            ..Options::default()
        },
        true,
    )
    .await;
    let port = stack.ingest.port;
    let stop = Arc::new(AtomicBool::new(false));
    let audio = Bytes::from(wav_pcm16(8000, 400));
    let clients: Vec<_> = (0..4)
        .map(|client| {
            let (stop, audio) = (stop.clone(), audio.clone());
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                let mut outcomes = Vec::new();
                for n in 0.. {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let key = format!("{ACCOUNT}/202612-{client:08x}{n:024x}/d{n}.wav");
                    let status = http
                        .put(format!("http://127.0.0.1:{port}/{key}"))
                        .header("content-type", "audio/wav")
                        .body(audio.clone())
                        .timeout(Duration::from_secs(30))
                        .send()
                        .await
                        .map(|r| r.status().as_u16())
                        .unwrap_or(0);
                    outcomes.push((key, status));
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                outcomes
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    garage.stop();
    tokio::time::sleep(Duration::from_millis(2000)).await;
    garage.restart();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::SeqCst);
    let mut per_client = Vec::new();
    for client in clients {
        per_client.push(client.await.unwrap());
    }
    for outcomes in &per_client {
        let last = outcomes.last().map(|(_, status)| *status);
        assert_eq!(last, Some(201), "uploads resume once the store is back");
    }
    let outcomes: Vec<(String, u16)> = per_client.into_iter().flatten().collect();
    let accepted: BTreeSet<String> = outcomes
        .iter()
        .filter(|(_, status)| *status == 201)
        .map(|(key, _)| key.clone())
        .collect();
    let refused = outcomes
        .iter()
        .filter(|(_, s)| (500..600).contains(s))
        .count();
    let other: Vec<_> = outcomes
        .iter()
        .filter(|(_, s)| *s != 201 && !(500..600).contains(s))
        .collect();
    assert!(other.is_empty(), "only 201 or a 5xx: {other:?}");
    assert!(refused > 0, "the outage was seen");
    // Every 201 is indexed; nothing refused is.
    wait_for_count(
        stack.pool(),
        "SELECT count(*) FROM voicemails",
        accepted.len() as i64,
        WAIT,
    )
    .await;
    let indexed: BTreeSet<String> = sqlx::query_scalar("SELECT storage_key FROM voicemails")
        .fetch_all(stack.pool())
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(indexed, accepted);
    stack.finish().await;
    drop(garage);
}
