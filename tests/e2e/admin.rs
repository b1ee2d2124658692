//! The worker's admin commands in bulk, with the real binary: reports that stay small (and
//! progress on standard error), dead letters filtered and dropped, hooks queued for every
//! voicemail.

use std::time::Duration;

use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable};
use vmpipe_common::settings::HookAudio;
use vmpipe_common::{Settings, StorageKey, amqp};
use vmpipe_tests::*;

use crate::scripting::worker;

const ACCOUNT: &str = "4e3005310add6229778caf6babfe7cfb";

fn stdout_json(output: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("stdout is the JSON report ({e}): {output:?}"))
}

fn stdout_lines(output: &std::process::Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_reports_counts_and_a_sample_and_its_progress_on_stderr() {
    let database = TestDatabase::new();
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings {
        storage_dir: dir.path().to_path_buf(),
        database_url: vmpipe_common::settings::SecretUrl(database.url.clone()),
        amqp_url: vmpipe_common::settings::SecretUrl(amqp_url()),
        ..Settings::default()
    };
    // 45 files without rows, written as ingest would place them.
    for i in 0..45 {
        let path = dir
            .path()
            .join(format!("voicemails/{ACCOUNT}/doc{i:02}/m.wav"));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, wav_pcm16(8000, 100)).unwrap();
    }
    let output = worker(
        &settings,
        &["reconcile", "--dry-run", "--progress-secs", "0"],
    )
    .output()
    .expect("worker runs");
    assert!(output.status.success(), "{output:?}");
    let report = stdout_json(&output);
    assert_eq!(report["files"], 45);
    assert_eq!(report["enqueued"]["count"], 45, "{report}");
    assert_eq!(report["enqueued"]["keys"].as_array().unwrap().len(), 20);
    assert_eq!(report["enqueued"]["complete"], false);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let progress = stderr.matches("reconcile progress").count();
    assert!(progress >= 45, "a progress line per step: {stderr}");

    let output = worker(&settings, &["reconcile", "--dry-run", "--full"])
        .output()
        .expect("worker runs");
    assert!(output.status.success(), "{output:?}");
    let report = stdout_json(&output);
    let keys = report["enqueued"]["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 45);
    assert_eq!(report["enqueued"]["complete"], true);
    assert!(
        keys.iter()
            .all(|k| StorageKey::parse(k.as_str().unwrap()).is_ok())
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("reconcile progress"),
        "none within the default 5 s: {stderr}"
    );
    database.drop().await;
}

/// Puts dead letters on `{queue}.dead` as the worker does: the job, and its reason.
async fn dead_letter(queue: &TestQueue, storage_key: &str, reason: &str) {
    let job = vmpipe_common::VoicemailJob {
        schema_version: vmpipe_common::job::JOB_SCHEMA_VERSION,
        job_id: uuid::Uuid::now_v7(),
        storage_key: storage_key.into(),
        account_id: None,
        document_id: None,
        attachment_name: "m.wav".into(),
        content_type: None,
        size_bytes: 1,
        sha256: None,
        received_at: chrono::Utc::now(),
        upload_mode: vmpipe_common::UploadMode::Raw,
        kazoo_document: None,
        request_id: "r".into(),
    };
    let mut headers = FieldTable::default();
    headers.insert(
        amqp::ERROR_HEADER.into(),
        AMQPValue::LongString(reason.into()),
    );
    let connection = amqp::connect(&amqp_url(), "vmpipe-tests").await.unwrap();
    let channel = amqp::ConfirmChannel::open(&connection).await.unwrap();
    let dead = amqp::dead_letter_queue(&queue.name);
    let confirm = channel
        .basic_publish(
            "".into(),
            dead.as_str().into(),
            BasicPublishOptions::default(),
            &job.to_json(),
            amqp::message_properties().with_headers(headers),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(confirm.is_ack());
    let _ = connection.close(200, "done".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_filtered_and_only_the_matching_ones_dropped() {
    let queue = TestQueue::declare(&format!("vmpipe.test.{}", hex32())).await;
    let settings = Settings {
        queue: queue.name.clone(),
        amqp_url: vmpipe_common::settings::SecretUrl(amqp_url()),
        ..Settings::default()
    };
    let letters = [
        ("a/1/x.wav", "file missing: a/1/x.wav"),
        ("b/1/y.wav", "row refused by the database: too long"),
        ("a/2/z.wav", "row refused by the database: bad"),
        ("c/1/w.wav", "file missing: c/1/w.wav"),
    ];
    for (key, reason) in letters {
        dead_letter(&queue, key, reason).await;
    }
    let keys = |output: &std::process::Output| -> Vec<String> {
        stdout_lines(output)
            .iter()
            .map(|l| l["storage_key"].as_str().unwrap().to_owned())
            .collect()
    };
    let list = |args: &[&str]| {
        let mut all = vec!["dead-letters"];
        all.extend(args);
        let output = worker(&settings, &all).output().expect("worker runs");
        assert!(output.status.success(), "{output:?}");
        keys(&output)
    };
    assert_eq!(
        list(&[]),
        ["a/1/x.wav", "b/1/y.wav", "a/2/z.wav", "c/1/w.wav"]
    );
    assert_eq!(list(&["--key", "a/"]), ["a/1/x.wav", "a/2/z.wav"]);
    assert_eq!(list(&["--error", "refused"]), ["b/1/y.wav", "a/2/z.wav"]);
    assert_eq!(list(&["--error", "refused", "--key", "a/"]), ["a/2/z.wav"]);

    // --drop without a filter would drop everything: it wants --all for that.
    let output = worker(&settings, &["dead-letters", "--drop"])
        .output()
        .expect("worker runs");
    assert!(!output.status.success(), "{output:?}");
    assert_eq!(list(&[]).len(), 4, "nothing dropped");

    let output = worker(&settings, &["dead-letters", "--drop", "--error", "refused"])
        .output()
        .expect("worker runs");
    assert!(output.status.success(), "{output:?}");
    let dropped = stdout_json(&output);
    assert_eq!(
        (dropped["dropped"].as_u64(), dropped["kept"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(
        list(&[]),
        ["a/1/x.wav", "c/1/w.wav"],
        "the others stay, in their order"
    );
    assert_eq!(
        queue.dead_reasons().await.len(),
        2,
        "as RabbitMQ counts them"
    );
    queue.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transcribe_all_queues_a_hook_for_every_voicemail_and_a_worker_runs_each_once() {
    let mut stack = Stack::start(true).await;
    let audio = wav_pcm16(8000, 300);
    let names = ["t0.wav", "t1.wav", "t2.wav"];
    for name in names {
        stack
            .put_wav(&format!("/{ACCOUNT}/doc-{name}/{name}"), name, &audio)
            .await;
    }
    wait_for_count(stack.pool(), "SELECT count(*) FROM voicemails", 3, WAIT).await;
    stack.stop_worker().await;

    // The hook is turned on now, for voicemails indexed without it.
    let runs = stack.ingest.sandbox.path().join("runs.log");
    let script = format!(
        "echo \"$VMPIPE_VOICEMAIL_ID\" >> {}; echo hello",
        runs.display()
    );
    let hook = shell_hook("notes", HookAudio::Original, &script);
    let config = stack.ingest.sandbox.path().join("hooks.toml");
    std::fs::write(&config, hook_toml(&hook)).unwrap();
    let mut settings = stack.worker_settings();
    settings.hooks = vec![hook];
    let config_arg = config.display().to_string();
    let plain = stack.worker_settings();
    let queue_all = |extra: &[&str]| {
        let mut args = vec![
            "--config",
            &config_arg,
            "transcribe",
            "--all",
            "--hook",
            "notes",
        ];
        args.extend(extra);
        let output = worker(&plain, &args).output().expect("worker runs");
        assert!(output.status.success(), "{output:?}");
        stdout_lines(&output)
    };
    let queued = queue_all(&[]);
    assert_eq!(queued.len(), 1, "{queued:?}");
    assert_eq!(queued[0]["hook"], "notes");
    assert_eq!(queued[0]["queued"], 3, "{queued:?}");
    assert_eq!(queued[0]["new_rows"], 3, "{queued:?}");
    let pending: i64 =
        sqlx::query_scalar("SELECT count(*) FROM transcriptions WHERE status = 'pending'")
            .fetch_one(stack.pool())
            .await
            .unwrap();
    assert_eq!(pending, 3, "queued, not run by the command");

    stack.start_worker_with(settings).await;
    for name in names {
        let row = stack
            .finished_transcription(name, "notes", Duration::from_secs(60))
            .await;
        let status: String = sqlx::Row::get(&row, "status");
        assert_eq!(status, "done");
    }
    let ran = std::fs::read_to_string(&runs).unwrap();
    assert_eq!(ran.lines().count(), 3, "each voicemail once: {ran}");

    // Only the failed ones.
    sqlx::query(
        "UPDATE transcriptions SET status = 'failed' WHERE voicemail_id =
            (SELECT id FROM voicemails WHERE attachment_name = 't1.wav')",
    )
    .execute(stack.pool())
    .await
    .unwrap();
    let queued = queue_all(&["--status", "failed"]);
    assert_eq!(
        (queued[0]["queued"].as_i64(), queued[0]["reset"].as_i64()),
        (Some(1), Some(1))
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::fs::read_to_string(&runs).unwrap().lines().count() < 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "the failed one ran again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stack.finished_transcription("t1.wav", "notes", WAIT).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ran = std::fs::read_to_string(&runs).unwrap();
    assert_eq!(ran.lines().count(), 4, "only the failed one again: {ran}");

    // A hook that is not configured is an error, not an empty success.
    let output = worker(
        &stack.worker_settings(),
        &[
            "--config",
            &config_arg,
            "transcribe",
            "--all",
            "--hook",
            "nope",
        ],
    )
    .output()
    .expect("worker runs");
    assert!(!output.status.success(), "{output:?}");
    stack.finish().await;
}

/// `[[hooks]]` in a settings file, for a command hook.
fn hook_toml(hook: &vmpipe_common::settings::HookSettings) -> String {
    let command: Vec<String> = hook
        .command
        .iter()
        .map(|part| serde_json::to_string(part).unwrap())
        .collect();
    format!(
        "[[hooks]]\nname = \"{}\"\nkind = \"command\"\ncommand = [{}]\naudio = \"original\"\n\
         timeout_secs = {}\nmax_attempts = {}\nretry_delay_ms = {}\n",
        hook.name,
        command.join(", "),
        hook.timeout_secs,
        hook.max_attempts,
        hook.retry_delay_ms
    )
}
