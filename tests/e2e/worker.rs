//! Worker end to end: KAZOO uploads through ingest and RabbitMQ into PostgreSQL rows.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::Row;
use vmpipe_common::VoicemailJob;
use vmpipe_tests::*;

const ACCOUNT: &str = "4e3005310add6229778caf6babfe7cfb";
const DOC: &str = "202611-5d6ae452d29a4304072654da8f79b46e";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kazoo_uploads_become_rows_whose_fields_match() {
    let stack = Stack::start(true).await;
    let wav = wav_pcm16(8000, 1500);
    let multipart_name = "b766cc56d1b24b26d360604ad73558d8.wav";
    let document = mailbox_message(DOC, multipart_name);
    let att = Attachment {
        document_id: DOC,
        name: multipart_name,
        content_type: "audio/wav",
        data: &wav,
        document: &document,
    };
    stack
        .put(
            &format!("/{ACCOUNT}/{DOC}/{multipart_name}"),
            Body::Multipart,
            &att,
        )
        .await;
    // A Crossbar upload sent without multipart: only the path is known.
    let plain_name = "uploaded_file_63962891419.wav";
    let plain_doc = "202611-0123456789abcdef0123456789abcdef";
    let att_plain = Attachment {
        name: plain_name,
        ..att
    };
    stack
        .put(
            &format!("/{ACCOUNT}/{plain_doc}/{plain_name}"),
            Body::Raw,
            &att_plain,
        )
        .await;
    // KAZOO's credentials probe is not a voicemail.
    let probe = stack.ingest.client().store_credentials_probe(ACCOUNT).await;
    assert_eq!(probe.status, 201, "the credentials probe is stored");

    let pool = stack.pool();
    wait_for_count(pool, "SELECT count(*) FROM credential_probes", 1, WAIT).await;
    wait_for_count(pool, "SELECT count(*) FROM voicemails", 2, WAIT).await;

    let row = sqlx::query("SELECT * FROM voicemails WHERE document_id = $1")
        .bind(DOC)
        .fetch_one(pool)
        .await
        .unwrap();
    let text = |c: &str| row.get::<Option<String>, _>(c);
    assert_eq!(
        text("storage_key").unwrap(),
        format!("{ACCOUNT}/{DOC}/{multipart_name}")
    );
    assert_eq!(text("account_id").as_deref(), Some(ACCOUNT));
    assert_eq!(text("attachment_name").as_deref(), Some(multipart_name));
    assert_eq!(
        text("mailbox_id").as_deref(),
        Some("0868323f42a354a54d152691b4cf3d6f")
    );
    assert_eq!(text("caller_id_number").as_deref(), Some("+14155550100"));
    assert_eq!(text("caller_id_name").as_deref(), Some("Alice Example"));
    assert_eq!(
        text("call_id").as_deref(),
        Some("dd27a1a973561ec0@10.26.0.81")
    );
    assert_eq!(text("from_user").as_deref(), Some("+14155550100"));
    assert_eq!(text("to_user").as_deref(), Some("1010"));
    assert_eq!(text("to_realm").as_deref(), Some("sip.example.com"));
    assert_eq!(text("folder").as_deref(), Some("new"));
    assert_eq!(text("codec").as_deref(), Some("pcm_s16le"));
    assert_eq!(text("content_type").as_deref(), Some("audio/wav"));
    assert_eq!(text("upload_mode").as_deref(), Some("multipart"));
    assert_eq!(text("sha256").unwrap(), sha256_hex(&wav));
    assert_eq!(text("probe_error"), None);
    assert_eq!(row.get::<Option<i32>, _>("kazoo_length_ms"), Some(5320));
    assert_eq!(row.get::<Option<i32>, _>("duration_ms"), Some(1500));
    assert_eq!(row.get::<Option<i32>, _>("sample_rate"), Some(8000));
    assert_eq!(row.get::<Option<i16>, _>("channels"), Some(1));
    assert_eq!(row.get::<i64, _>("size_bytes"), wav.len() as i64);
    let recorded: DateTime<Utc> = row.get("recorded_at");
    assert_eq!(recorded.to_rfc3339(), "2026-11-26T05:50:19+00:00");
    let metadata: serde_json::Value = row.get("metadata");
    assert_eq!(metadata, document);
    let received: DateTime<Utc> = row.get("received_at");
    let indexed: DateTime<Utc> = row.get("indexed_at");
    assert!(indexed >= received);

    let plain = sqlx::query(
        "SELECT document_id, caller_id_number, mailbox_id, recorded_at, duration_ms, upload_mode, metadata::text
         FROM voicemails WHERE attachment_name = $1",
    )
    .bind(plain_name)
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(
        plain.get::<Option<String>, _>(0).as_deref(),
        Some(plain_doc)
    );
    assert_eq!(plain.get::<Option<String>, _>(1), None);
    assert_eq!(plain.get::<Option<String>, _>(2), None);
    let recorded: DateTime<Utc> = plain.get(3);
    assert_eq!(
        recorded.to_rfc3339(),
        "2026-11-26T05:50:19+00:00",
        "from the file name"
    );
    assert_eq!(plain.get::<Option<i32>, _>(4), Some(1500));
    assert_eq!(plain.get::<String, _>(5), "raw");
    assert_eq!(plain.get::<Option<String>, _>(6), None);
    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_deliveries_and_re_puts_give_one_row_with_the_newest_file() {
    let stack = Stack::start(false).await;
    let path = format!("/{ACCOUNT}/{DOC}/dup.wav");
    let first = wav_pcm16(8000, 1000);
    let second = wav_pcm16(16000, 2000);
    let document = mailbox_message(DOC, "dup.wav");
    let att = Attachment {
        document_id: DOC,
        name: "dup.wav",
        content_type: "audio/wav",
        data: &first,
        document: &document,
    };
    stack.put(&path, Body::Multipart, &att).await;
    // Take the job off the queue and deliver it three times.
    let (job, _) = stack.queue.next(WAIT).await.expect("job");
    for _ in 0..3 {
        stack.queue.publish(&job.to_json()).await;
    }
    let mut stack = stack;
    stack.start_worker().await;
    let pool = stack.pool().clone();
    wait_for_count(
        &pool,
        "SELECT count(*) FROM voicemails WHERE duration_ms = 1000",
        1,
        WAIT,
    )
    .await;

    // KAZOO re-sends the key with other bytes: the same row now describes the new file.
    let att = Attachment {
        data: &second,
        ..att
    };
    stack.put(&path, Body::Multipart, &att).await;
    wait_for_count(
        &pool,
        "SELECT count(*) FROM voicemails WHERE duration_ms = 2000",
        1,
        WAIT,
    )
    .await;
    // A late redelivery of the old job must not take the row back.
    stack.queue.publish(&job.to_json()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (count, sha): (i64, String) =
        sqlx::query_as("SELECT count(*), max(sha256) FROM voicemails")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(count, 1);
    assert_eq!(sha, sha256_hex(&second));
    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_jobs_are_dead_lettered_with_a_reason_and_the_next_job_is_indexed() {
    let stack = Stack::start(true).await;
    stack.queue.publish(b"this is not a job").await;
    let missing = VoicemailJob {
        schema_version: 1,
        job_id: uuid::Uuid::now_v7(),
        storage_key: format!("{ACCOUNT}/{DOC}/never-stored.mp3"),
        account_id: Some(ACCOUNT.into()),
        document_id: Some(DOC.into()),
        attachment_name: "never-stored.mp3".into(),
        content_type: None,
        size_bytes: 1,
        sha256: None,
        received_at: Utc::now(),
        upload_mode: vmpipe_common::UploadMode::Raw,
        kazoo_document: None,
        request_id: "r".into(),
    };
    stack.queue.publish(&missing.to_json()).await;
    let wav = wav_pcm16(8000, 700);
    let document = mailbox_message(DOC, "ok.wav");
    let att = Attachment {
        document_id: DOC,
        name: "ok.wav",
        content_type: "audio/wav",
        data: &wav,
        document: &document,
    };
    stack
        .put(&format!("/{ACCOUNT}/{DOC}/ok.wav"), Body::Raw, &att)
        .await;

    wait_for_count(stack.pool(), "SELECT count(*) FROM voicemails", 1, WAIT).await;
    let mut reasons = Vec::new();
    for _ in 0..2 {
        let (body, reason) = stack.queue.next_dead(WAIT).await.expect("dead letter");
        reasons.push((
            String::from_utf8_lossy(&body).into_owned(),
            reason.unwrap_or_default(),
        ));
    }
    let reason_for = |body: &str| {
        reasons
            .iter()
            .find(|(b, _)| b.contains(body))
            .map(|(_, reason)| reason.clone())
            .unwrap_or_else(|| panic!("no dead letter with {body}: {reasons:?}"))
    };
    assert!(reason_for("this is not a job").contains("not a vmpipe job"));
    assert!(reason_for("never-stored.mp3").contains("file missing"));
    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_audio_is_indexed_with_its_probe_error() {
    let stack = Stack::start(true).await;
    let document = mailbox_message(DOC, "bad.mp3");
    let cases: [(&str, Vec<u8>); 3] = [
        ("random.mp3", nasty_audio(20_000)[3..].to_vec()),
        (
            "html.mp3",
            b"<html><body>502 Bad Gateway</body></html>".to_vec(),
        ),
        ("empty.wav", Vec::new()),
    ];
    for (name, data) in &cases {
        let att = Attachment {
            document_id: DOC,
            name,
            content_type: "audio/mpeg",
            data,
            document: &document,
        };
        stack
            .put(&format!("/{ACCOUNT}/{DOC}/{name}"), Body::Multipart, &att)
            .await;
    }
    wait_for_count(stack.pool(), "SELECT count(*) FROM voicemails", 3, WAIT).await;
    let rows: Vec<(String, Option<i32>, Option<String>)> = sqlx::query_as(
        "SELECT attachment_name, duration_ms, probe_error FROM voicemails ORDER BY 1",
    )
    .fetch_all(stack.pool())
    .await
    .unwrap();
    for (name, duration, error) in rows {
        assert_eq!(duration, None, "{name}");
        assert!(
            error.is_some_and(|e| !e.is_empty()),
            "{name}: probe error recorded"
        );
    }
    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_worker_picks_up_where_it_left_off() {
    let mut stack = Stack::start(true).await;
    let wav = wav_pcm16(8000, 300);
    let put = |stack: &Stack, i: usize| {
        let name = format!("{i}.wav");
        let document = mailbox_message(DOC, &name);
        let wav = wav.clone();
        let path = format!("/{ACCOUNT}/{DOC}/{name}");
        let client = stack.ingest.client();
        async move {
            let att = Attachment {
                document_id: DOC,
                name: &name,
                content_type: "audio/wav",
                data: &wav,
                document: &document,
            };
            assert_eq!(
                client
                    .store(Verb::Put, &path, Body::Multipart, &att)
                    .await
                    .status,
                201
            );
        }
    };
    for i in 0..5 {
        put(&stack, i).await;
    }
    wait_for_count(stack.pool(), "SELECT count(*) FROM voicemails", 5, WAIT).await;
    stack.stop_worker().await;
    for i in 5..12 {
        put(&stack, i).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM voicemails")
        .fetch_one(stack.pool())
        .await
        .unwrap();
    assert_eq!(count, 5, "nothing indexed while the worker is stopped");
    stack.start_worker().await;
    wait_for_count(
        stack.pool(),
        "SELECT count(DISTINCT storage_key) FROM voicemails",
        12,
        WAIT,
    )
    .await;
    wait_for_count(stack.pool(), "SELECT count(*) FROM voicemails", 12, WAIT).await;
    stack.finish().await;
}

/// Every ```sql block of the README runs as written against an indexed voicemail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_queries_run_as_written() {
    let stack = Stack::start(true).await;
    let wav = wav_pcm16(8000, 1200);
    let document = mailbox_message(DOC, "q.wav");
    let att = Attachment {
        document_id: DOC,
        name: "q.wav",
        content_type: "audio/wav",
        data: &wav,
        document: &document,
    };
    stack
        .put(&format!("/{ACCOUNT}/{DOC}/q.wav"), Body::Multipart, &att)
        .await;
    wait_for_count(stack.pool(), "SELECT count(*) FROM voicemails", 1, WAIT).await;

    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let queries: Vec<&str> = readme
        .split("```sql\n")
        .skip(1)
        .filter_map(|block| block.split("```").next())
        .collect();
    assert!(queries.len() >= 5, "the README shows example queries");
    let mut rows_seen = 0;
    for query in queries {
        let rows = sqlx::raw_sql(sqlx::AssertSqlSafe(query.to_owned()))
            .fetch_all(stack.pool())
            .await
            .unwrap_or_else(|e| panic!("README query failed: {e}\n{query}"));
        rows_seen += rows.len();
    }
    assert!(
        rows_seen >= 4,
        "the queries find the voicemail ({rows_seen} rows)"
    );
    stack.finish().await;
}

/// Rows are written in batches; one the database refuses fails alone: the others of its batch
/// are indexed, and its job is dead-lettered with the database's reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_the_database_refuses_fails_alone_in_its_batch() {
    let mut stack = Stack::start(false).await;
    let pool = vmpipe_worker::migrate(&stack.worker_settings())
        .await
        .unwrap();
    sqlx::query(
        "ALTER TABLE voicemails ADD CONSTRAINT test_refuse CHECK (attachment_name <> 'refused.wav')",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    // Queue the jobs first, so that the worker finds them together and batches them.
    let wav = wav_pcm16(8000, 300);
    let kazoo = stack.ingest.client();
    for i in 0..20 {
        let name = if i == 7 {
            "refused.wav".to_owned()
        } else {
            format!("b{i}.wav")
        };
        let r = kazoo
            .store_voicemail(ACCOUNT, &name, &wav, "audio/wav")
            .await;
        assert_eq!(r.status, 201);
    }
    stack.start_worker().await;
    wait_for_count(stack.pool(), "SELECT count(*) FROM voicemails", 19, WAIT).await;
    let (body, reason) = stack.queue.next_dead(WAIT).await.expect("dead letter");
    let job = VoicemailJob::from_json(&body).unwrap();
    assert_eq!(job.attachment_name, "refused.wav");
    let reason = reason.unwrap_or_default();
    assert!(reason.contains("test_refuse"), "{reason}");
    assert_eq!(
        reason.matches("test_refuse").count(),
        1,
        "the database's message is given once: {reason}"
    );
    stack.finish().await;
}
