//! Operating vmpipe: Prometheus counters that match what happened, and one request id from the
//! upload's log line to the worker's log line to the row.

use vmpipe_tests::*;

const ACCOUNT: &str = "4e3005310add6229778caf6babfe7cfb";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_happened_and_a_request_id_runs_from_put_to_row() {
    let mut stack = Stack::start(false).await;
    let logs = stack.ingest.sandbox.path().to_path_buf();
    // Separate processes: each has its own counters.
    let ingest = Service::spawn_logging(
        "ingest",
        &stack.ingest.settings,
        Some(&logs.join("ingest.log")),
    )
    .await;
    let worker = Service::spawn_logging(
        "worker",
        &stack.worker_settings(),
        Some(&logs.join("worker.log")),
    )
    .await;
    stack.wait_for_schema().await;
    let kazoo = Kazoo {
        port: ingest.health_port,
    };
    let audio = wav_pcm16(8000, 700);
    let mut bytes = 0;
    for (i, body) in [Body::Raw, Body::Multipart, Body::MultipartBase64]
        .into_iter()
        .enumerate()
    {
        let name = format!("m{i}.wav");
        let document = mailbox_message("d", &name);
        let att = Attachment {
            document_id: "d",
            name: &name,
            content_type: "audio/wav",
            data: &audio,
            document: &document,
        };
        let r = kazoo
            .store(Verb::Put, &format!("/{ACCOUNT}/doc{i}/{name}"), body, &att)
            .await;
        assert_eq!(r.status, 201);
        bytes += audio.len();
    }
    let document = serde_json::json!({});
    let att = Attachment {
        document_id: "d",
        name: "x",
        content_type: "audio/wav",
        data: b"x",
        document: &document,
    };
    assert_eq!(
        kazoo
            .store(Verb::Put, "/a/../b", Body::Raw, &att)
            .await
            .status,
        400
    );
    assert_eq!(
        kazoo.get(&format!("/{ACCOUNT}/doc1/m1.wav")).await.status,
        200
    );
    assert_eq!(kazoo.get("/nothing/here").await.status, 404);
    wait_for_count(stack.pool(), "SELECT count(*) FROM voicemails", 3, WAIT).await;

    let (_, m) = ingest.get("/metrics").await.unwrap();
    for mode in ["raw", "multipart", "multipart_base64"] {
        let label = format!("mode=\"{mode}\"");
        assert_eq!(
            sample(&m, "vmpipe_uploads_total", &["outcome=\"stored\"", &label]),
            1.0,
            "{mode}\n{m}"
        );
    }
    assert_eq!(
        sample(&m, "vmpipe_uploads_total", &["outcome=\"rejected\""]),
        1.0
    );
    assert_eq!(sample(&m, "vmpipe_upload_bytes_total", &[]), bytes as f64);
    assert_eq!(sample(&m, "vmpipe_upload_duration_seconds_count", &[]), 3.0);
    assert_eq!(
        sample(&m, "vmpipe_jobs_published_total", &["via=\"confirm\""]),
        3.0
    );
    assert_eq!(
        sample(&m, "vmpipe_fetches_total", &["outcome=\"found\""]),
        1.0
    );
    assert_eq!(
        sample(&m, "vmpipe_fetches_total", &["outcome=\"not_found\""]),
        1.0
    );

    let (_, w) = worker.get("/metrics").await.unwrap();
    assert_eq!(
        sample(&w, "vmpipe_jobs_total", &["outcome=\"indexed\""]),
        3.0,
        "{w}"
    );
    assert_eq!(sample(&w, "vmpipe_index_duration_seconds_count", &[]), 3.0);
    assert_eq!(sample(&w, "vmpipe_probe_duration_seconds_count", &[]), 3.0);
    assert_eq!(sample(&w, "vmpipe_job_lag_seconds_count", &[]), 3.0);
    assert_eq!(sample(&w, "vmpipe_voicemails_indexed_total", &[]), 3.0);

    // One request id: ingest's log line, the worker's log line, the row.
    let request_id: String =
        sqlx::query_scalar("SELECT request_id FROM voicemails WHERE attachment_name = 'm1.wav'")
            .fetch_one(stack.pool())
            .await
            .unwrap();
    assert!(!request_id.is_empty());
    let ingest_log = std::fs::read_to_string(logs.join("ingest.log")).unwrap();
    let worker_log = std::fs::read_to_string(logs.join("worker.log")).unwrap();
    let stored = ingest_log
        .lines()
        .find(|l| l.contains("voicemail stored") && l.contains(&request_id));
    let indexed = worker_log
        .lines()
        .find(|l| l.contains("voicemail indexed") && l.contains(&request_id));
    assert!(
        stored.is_some(),
        "ingest logged the upload with {request_id}"
    );
    assert!(
        indexed.is_some(),
        "worker logged the indexing with {request_id}"
    );
    for line in [stored.unwrap(), indexed.unwrap()] {
        serde_json::from_str::<serde_json::Value>(line).expect("JSON log lines");
    }

    // The same voicemail stored again (KAZOO saving it anew): one delivery more, not one
    // voicemail more.
    let document = mailbox_message("d", "m0.wav");
    let att = Attachment {
        document_id: "d",
        name: "m0.wav",
        content_type: "audio/wav",
        data: &audio,
        document: &document,
    };
    let r = kazoo
        .store(
            Verb::Put,
            &format!("/{ACCOUNT}/doc0/m0.wav"),
            Body::Raw,
            &att,
        )
        .await;
    assert_eq!(r.status, 201);
    let deadline = std::time::Instant::now() + WAIT;
    let w = loop {
        let (_, w) = worker.get("/metrics").await.unwrap();
        if sample(&w, "vmpipe_jobs_total", &["outcome=\"indexed\""]) >= 4.0 {
            break w;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the second job was not indexed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(
        sample(&w, "vmpipe_voicemails_indexed_total", &[]),
        3.0,
        "{w}"
    );
    worker.sigkill().await;
    ingest.sigkill().await;
    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_reindex_and_dead_letter_listing() {
    let stack = Stack::start(true).await;
    let audio = wav_pcm16(8000, 700);
    for i in 0..3 {
        let name = format!("p{i}.wav");
        let document = mailbox_message("d", &name);
        let att = Attachment {
            document_id: "d",
            name: &name,
            content_type: "audio/wav",
            data: &audio,
            document: &document,
        };
        stack
            .put(&format!("/{ACCOUNT}/doc{i}/{name}"), Body::Multipart, &att)
            .await;
    }
    let random = hex32();
    let probe_name = format!("{random}_test_credentials_file.txt");
    let content = format!("some random content: {random}");
    let document = serde_json::json!({});
    let att = Attachment {
        document_id: "p",
        name: &probe_name,
        content_type: "text/plain",
        data: content.as_bytes(),
        document: &document,
    };
    stack
        .put(&format!("/{ACCOUNT}/probe/{probe_name}"), Body::Raw, &att)
        .await;
    wait_for_count(stack.pool(), "SELECT count(*) FROM voicemails", 3, WAIT).await;
    wait_for_count(
        stack.pool(),
        "SELECT count(*) FROM credential_probes",
        1,
        WAIT,
    )
    .await;
    for statement in [
        "UPDATE voicemails SET received_at = now() - interval '100 days' WHERE attachment_name <> 'p2.wav'",
        "UPDATE credential_probes SET received_at = now() - interval '100 days'",
    ] {
        sqlx::query(statement).execute(stack.pool()).await.unwrap();
    }
    let settings = stack.worker_settings();
    let cutoff = chrono::Utc::now() - chrono::Duration::days(90);
    let pause = std::time::Duration::from_millis(10);
    let mut options = vmpipe_worker::admin::PruneOptions {
        cutoff,
        apply: false,
        batch: 1,
        pause,
        include_missing_files: false,
        force: false,
        full: false,
        progress: std::time::Duration::from_secs(5),
    };
    let dry = vmpipe_worker::admin::prune(&settings, &options)
        .await
        .unwrap();
    assert_eq!((dry.voicemails, dry.credential_probes), (2, 1));
    assert_eq!(
        all_files(&stack.ingest.storage_dir().join("voicemails")).len(),
        4,
        "a dry run deletes nothing"
    );
    options.apply = true;
    let done = vmpipe_worker::admin::prune(&settings, &options)
        .await
        .unwrap();
    assert_eq!(
        (done.voicemails, done.credential_probes, done.bytes),
        (2, 1, 2 * audio.len() as u64 + 53)
    );
    let left = all_files(&stack.ingest.storage_dir().join("voicemails"));
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].ends_with("p2.wav"));
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM voicemails")
        .fetch_one(stack.pool())
        .await
        .unwrap();
    assert_eq!(rows, 1);

    sqlx::query("UPDATE voicemails SET duration_ms = NULL, codec = NULL")
        .execute(stack.pool())
        .await
        .unwrap();
    let reindexed =
        vmpipe_worker::admin::reindex(&settings, false, std::time::Duration::from_secs(5))
            .await
            .unwrap();
    assert_eq!((reindexed.rows, reindexed.reprobed), (1, 1));
    let (duration, codec): (Option<i32>, Option<String>) =
        sqlx::query_as("SELECT duration_ms, codec FROM voicemails")
            .fetch_one(stack.pool())
            .await
            .unwrap();
    assert_eq!((duration, codec.as_deref()), (Some(700), Some("pcm_s16le")));

    stack.queue.publish(b"not a job").await;
    let mut listed = Vec::new();
    for _ in 0..100 {
        listed = vmpipe_worker::admin::dead_letters(&settings, &Default::default())
            .await
            .unwrap();
        if !listed.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(listed.len(), 1);
    assert!(
        listed[0]
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("not a vmpipe job"))
    );
    let again = vmpipe_worker::admin::dead_letters(&settings, &Default::default())
        .await
        .unwrap();
    assert_eq!(again.len(), 1, "listing leaves them in place");
    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_token_never_reaches_the_logs() {
    let stack = Stack::start(false).await;
    let token = format!("tok{}", hex32());
    let mut settings = stack.ingest.settings.clone();
    settings.access_token = Some(vmpipe_common::settings::Secret(token.clone()));
    let log = stack.ingest.sandbox.path().join("ingest-token.log");
    let ingest = Service::spawn_logging("ingest", &settings, Some(&log)).await;
    let kazoo = Kazoo {
        port: ingest.health_port,
    };
    let document = mailbox_message("d", "t.wav");
    let audio = wav_pcm16(8000, 300);
    let att = Attachment {
        document_id: "d",
        name: "t.wav",
        content_type: "audio/wav",
        data: &audio,
        document: &document,
    };
    let key = format!("{ACCOUNT}/doc/t.wav");
    assert_eq!(
        kazoo
            .store(Verb::Put, &format!("/{token}/{key}"), Body::Multipart, &att)
            .await
            .status,
        201
    );
    assert_eq!(
        kazoo
            .get(&format!("/?token={token}&key={key}{key}&folder=new"))
            .await
            .status,
        200
    );
    assert_eq!(
        kazoo
            .get(&format!("/?token={token}x&key={key}"))
            .await
            .status,
        403
    );
    assert_eq!(kazoo.get(&format!("/{token}x/{key}")).await.status, 403);
    ingest.sigkill().await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("voicemail stored") && text.contains("request denied"),
        "the requests were logged"
    );
    assert!(
        !text.contains(&token),
        "the token appears in the log:\n{text}"
    );
    stack.finish().await;
}
