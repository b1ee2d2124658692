//! Hostile input to the worker: hostile metadata, look-alike files, and clients of its health
//! port. A voicemail that was stored always gets its row. KAZOO tenants upload arbitrary files and documents through KAZOO's API, so every field of
//! the document is attacker-controlled.

use std::time::Duration;

use sqlx::Row;
use vmpipe_tests::*;

const ACCOUNT: &str = "4e3005310add6229778caf6babfe7cfb";

/// Uploads `document` (KAZOO's JSON part) with a short WAV and returns the storage key.
async fn upload_with_document(stack: &Stack, name: &str, document: &serde_json::Value) -> String {
    let document_id = format!("202611-{}", hex32());
    let wav = wav_pcm16(8000, 300);
    let att = Attachment {
        document_id: &document_id,
        name,
        content_type: "audio/wav",
        data: &wav,
        document,
    };
    let path = format!("/{ACCOUNT}/{document_id}/{name}");
    stack.put(&path, Body::Multipart, &att).await;
    path[1..].to_owned()
}

fn nested(depth: usize) -> serde_json::Value {
    let mut value = serde_json::json!("bottom");
    for _ in 0..depth {
        value = serde_json::json!([value]);
    }
    value
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_metadata_is_clamped_and_every_stored_voicemail_gets_its_row() {
    let stack = Stack::start(true).await;
    let mut long_caller = mailbox_message("d", "long.wav");
    long_caller["metadata"]["caller_id_number"] = "9".repeat(3000).into();
    long_caller["metadata"]["caller_id_name"] = "É".repeat(2000).into();
    let mut far_future = mailbox_message("d", "future.wav");
    // Gregorian seconds of the year 12000: a timestamptz cannot hold it.
    far_future["metadata"]["timestamp"] = 378_691_200_000u64.into();
    let mut deep = mailbox_message("d", "deep.wav");
    deep["metadata"]["extra"] = nested(120);
    let keys = [
        upload_with_document(&stack, "long.wav", &long_caller).await,
        upload_with_document(&stack, "future.wav", &far_future).await,
        upload_with_document(&stack, "deep.wav", &deep).await,
    ];
    // A normal voicemail after them is indexed too.
    let normal = mailbox_message("d", "normal.wav");
    let normal_key = upload_with_document(&stack, "normal.wav", &normal).await;
    let pool = stack.pool().clone();
    wait_for_count(&pool, "SELECT count(*) FROM voicemails", 4, WAIT).await;

    let row = |key: &str| {
        sqlx::query(
            "SELECT caller_id_number, caller_id_name, recorded_at IS NULL AS no_time,
                    metadata IS NULL AS no_document, dropped_metadata, duration_ms
             FROM voicemails WHERE storage_key = $1",
        )
        .bind(key.to_owned())
        .fetch_one(&pool)
    };
    let long = row(&keys[0]).await.unwrap();
    let number: String = long.get("caller_id_number");
    let name: String = long.get("caller_id_name");
    assert!(
        number.len() <= 256 && number.starts_with("999"),
        "{}",
        number.len()
    );
    assert!(name.len() <= 256 && name.starts_with('É'), "{}", name.len());
    let dropped: Vec<String> = long.get("dropped_metadata");
    assert!(
        dropped.iter().any(|d| d.starts_with("caller_id_number")),
        "{dropped:?}"
    );
    assert_eq!(long.get::<Option<i32>, _>("duration_ms"), Some(300));

    let future = row(&keys[1]).await.unwrap();
    assert!(future.get::<bool, _>("no_time"));
    let dropped: Vec<String> = future.get("dropped_metadata");
    assert!(
        dropped.iter().any(|d| d.starts_with("recorded_at")),
        "{dropped:?}"
    );

    let deep = row(&keys[2]).await.unwrap();
    assert!(
        deep.get::<bool, _>("no_document"),
        "the over-deep document is not kept"
    );
    let dropped: Vec<String> = deep.get("dropped_metadata");
    assert!(
        dropped.iter().any(|d| d.starts_with("metadata")),
        "{dropped:?}"
    );

    let normal = row(&normal_key).await.unwrap();
    let dropped: Vec<String> = normal.get("dropped_metadata");
    assert!(dropped.is_empty(), "{dropped:?}");
    assert!(!normal.get::<bool, _>("no_document"));
    assert!(stack.queue.dead_reasons().await.is_empty());
    stack.finish().await;
}

/// KAZOO's credentials probe is recognised by what KAZOO really sends, not by its name alone:
/// a voicemail named like a probe file is still a voicemail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voicemail_named_like_a_credentials_probe_is_indexed_as_a_voicemail() {
    let stack = Stack::start(true).await;
    let disguised = format!("{}_test_credentials_file.txt", hex32());
    let document = mailbox_message("d", &disguised);
    let key = upload_with_document(&stack, &disguised, &document).await;
    // A real probe, as KAZOO sends it.
    let probe = stack.ingest.client().store_credentials_probe(ACCOUNT).await;
    assert_eq!(probe.status, 201, "the credentials probe is stored");
    let pool = stack.pool().clone();
    wait_for_count(&pool, "SELECT count(*) FROM credential_probes", 1, WAIT).await;
    wait_for_count(&pool, "SELECT count(*) FROM voicemails", 1, WAIT).await;
    let indexed: String = sqlx::query_scalar("SELECT storage_key FROM voicemails")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(indexed, key);
    stack.finish().await;
}

/// Idle connections to the worker's health port (open to its network, unauthenticated) cannot
/// take the file descriptors jobs need: they are bounded and time out, and a job that meets a
/// shortage of descriptors waits for them instead of being dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_health_connections_cannot_starve_the_worker_of_file_descriptors() {
    let mut stack = Stack::start(false).await;
    let worker = Service::spawn("worker", &stack.worker_settings()).await;
    stack.wait_for_schema().await;
    worker.limit_open_files(96);
    // A slow client: connections that send a byte of a request every second, reconnecting
    // whenever they are closed, as many as it can.
    let port = worker.health_port;
    let stop = tokio_util::sync::CancellationToken::new();
    for _ in 0..300 {
        let stop = stop.clone();
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await
                else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                while !stop.is_cancelled() {
                    use tokio::io::AsyncWriteExt;
                    if stream.write_all(b"G").await.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        });
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let kazoo = stack.ingest.client();
    for i in 0..20 {
        let r = kazoo
            .store_voicemail(
                ACCOUNT,
                &format!("fd{i}.wav"),
                &wav_pcm16(8000, 300),
                "audio/wav",
            )
            .await;
        assert_eq!(r.status, 201);
    }
    let pool = stack.pool().clone();
    wait_for_count(
        &pool,
        "SELECT count(*) FROM voicemails",
        20,
        Duration::from_secs(40),
    )
    .await;
    assert!(
        stack.queue.dead_reasons().await.is_empty(),
        "nothing dead-lettered"
    );
    stop.cancel();
    let mut answered = false;
    for _ in 0..100 {
        if worker
            .get("/healthz")
            .await
            .is_some_and(|(status, _)| status == 200)
        {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        answered,
        "the health port answers once the slow client is gone"
    );
    worker.sigkill().await;
    stack.finish().await;
}
