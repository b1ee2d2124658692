//! Hooks end to end: KAZOO uploads through ingest, RabbitMQ and the worker, then the hooks, with
//! the outcome read back from `transcriptions`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::Row;
use vmpipe_common::settings::{HookAudio, HookKind, HookSettings, Secret, SecretUrl};
use vmpipe_tests::*;

const ACCOUNT: &str = "4e3005310add6229778caf6babfe7cfb";

fn command_hook(name: &str, script: &str) -> HookSettings {
    shell_hook(name, HookAudio::Original, script)
}

/// What the test webhook saw of one request.
#[derive(Debug, Clone)]
struct Received {
    authorization: Option<String>,
    voicemail: serde_json::Value,
    audio: Vec<u8>,
    audio_content_type: String,
}

/// A webhook answering with a transcript, recording what it was sent; 503 for the first
/// `fail_first` requests.
async fn start_webhook(
    fail_first: usize,
) -> (u16, Arc<Mutex<Vec<Received>>>, actix_web::dev::ServerHandle) {
    use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
    let received: Arc<Mutex<Vec<Received>>> = Arc::default();
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let state = (received.clone(), calls);
    let server = HttpServer::new(move || {
        let (received, calls) = state.clone();
        App::new().route(
            "/transcribe",
            web::post().to(move |request: HttpRequest, body: web::Bytes| {
                let received = received.clone();
                let calls = calls.clone();
                async move {
                    if calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < fail_first {
                        return HttpResponse::ServiceUnavailable().body("warming up");
                    }
                    let content_type = request
                        .headers()
                        .get("content-type")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default();
                    let parts = split_form_data(content_type, &body);
                    let part = |name: &str| parts.iter().find(|p| p.0 == name).cloned();
                    let (_, _, voicemail) = part("voicemail").expect("voicemail part");
                    let (_, audio_type, audio) = part("audio").expect("audio part");
                    received.lock().unwrap().push(Received {
                        authorization: request
                            .headers()
                            .get("authorization")
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned),
                        voicemail: serde_json::from_slice(&voicemail).expect("JSON"),
                        audio,
                        audio_content_type: audio_type,
                    });
                    HttpResponse::Ok().json(serde_json::json!({
                        "text": "Please send the invoices before Friday",
                        "language": "en",
                        "confidence": 0.87,
                    }))
                }
            }),
        )
    })
    .workers(1)
    .disable_signals()
    .bind("127.0.0.1:0")
    .unwrap();
    let port = server.addrs()[0].port();
    let server = server.run();
    let handle = server.handle();
    tokio::spawn(server);
    (port, received, handle)
}

/// (name, content type, body) of each part of a `multipart/form-data` body.
fn split_form_data(content_type: &str, body: &[u8]) -> Vec<(String, String, Vec<u8>)> {
    let boundary = content_type
        .split("boundary=")
        .nth(1)
        .expect("boundary")
        .trim_matches('"');
    let delimiter = format!("--{boundary}");
    let text = body;
    let mut parts = Vec::new();
    let mut rest = text;
    while let Some(start) = find(rest, delimiter.as_bytes()) {
        rest = &rest[start + delimiter.len()..];
        if rest.starts_with(b"--") {
            break;
        }
        let headers_end = find(rest, b"\r\n\r\n").expect("part headers");
        let headers = String::from_utf8_lossy(&rest[..headers_end]).to_string();
        let content = &rest[headers_end + 4..];
        let end = find(content, format!("\r\n{delimiter}").as_bytes()).expect("part end");
        let name = headers
            .split("name=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap_or_default()
            .to_owned();
        let part_type = headers
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-type:")
                    .map(|v| v.trim().to_owned())
            })
            .unwrap_or_default();
        parts.push((name, part_type, content[..end].to_vec()));
        rest = &content[end + 2..];
    }
    parts
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A webhook gets the voicemail's JSON, its KAZOO document, its audio and the configured
/// header; a 503 is retried; the answer is stored and found by full-text search.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_gets_the_voicemail_and_its_answer_is_searchable() {
    let (port, received, server) = start_webhook(1).await;
    let mut stack = Stack::start(false).await;
    let mut headers = BTreeMap::new();
    headers.insert("Authorization".into(), Secret("Bearer hook-t0ken".into()));
    let webhook = HookSettings {
        name: "crm".into(),
        kind: HookKind::Webhook,
        command: Vec::new(),
        url: Some(SecretUrl(format!("http://127.0.0.1:{port}/transcribe"))),
        headers,
        ..command_hook("crm", "")
    };
    let settings = vmpipe_common::Settings {
        hooks: vec![webhook],
        ..stack.worker_settings()
    };
    stack.start_worker_with(settings).await;
    let wav = wav_pcm16(8000, 1200);
    stack
        .upload(ACCOUNT, "webhook.wav", &wav, "audio/wav")
        .await;

    let row = stack
        .finished_transcription("webhook.wav", "crm", Duration::from_secs(20))
        .await;
    assert_eq!(text(&row, "status"), "done", "{}", text(&row, "error"));
    assert_eq!(text(&row, "text"), "Please send the invoices before Friday");
    assert_eq!(text(&row, "language"), "en");
    assert_eq!(row.get::<Option<f64>, _>("confidence"), Some(0.87));
    assert_eq!(row.get::<i32, _>("attempts"), 2, "the 503 was retried");
    assert_eq!(text(&row, "error"), "", "no error left after the success");

    let seen = received.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    let request = &seen[0];
    assert_eq!(request.authorization.as_deref(), Some("Bearer hook-t0ken"));
    assert_eq!(request.audio, wav, "the stored audio, byte for byte");
    assert_eq!(request.audio_content_type, "audio/wav");
    assert_eq!(request.voicemail["hook"], "crm");
    assert_eq!(
        request.voicemail["voicemail"]["attachment_name"],
        "webhook.wav"
    );
    assert_eq!(request.voicemail["voicemail"]["account_id"], ACCOUNT);
    assert_eq!(request.voicemail["voicemail"]["duration_ms"], 1200);
    assert!(
        request.voicemail["document"]["metadata"].is_object(),
        "KAZOO's document"
    );

    // The README's query: voicemails mentioning 'invoice' this week.
    let found: Vec<String> = sqlx::query_scalar(
        "SELECT v.attachment_name FROM transcriptions t JOIN voicemails v ON v.id = t.voicemail_id
         WHERE t.text_search @@ websearch_to_tsquery('english', 'invoice')
           AND v.received_at > now() - interval '7 days'",
    )
    .fetch_all(stack.pool())
    .await
    .unwrap();
    assert_eq!(found, ["webhook.wav"]);
    server.stop(true).await;
    stack.finish().await;
}

/// A hook that hangs is stopped at its timeout (its program and children killed), recorded as
/// failed, and meanwhile every voicemail is indexed at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_hook_times_out_and_indexing_goes_on() {
    let scratch = tempfile::tempdir().unwrap();
    let pids = scratch.path().join("pids");
    let mut stack = Stack::start(false).await;
    let hang = HookSettings {
        timeout_secs: 1,
        max_attempts: 1,
        ..command_hook(
            "hang",
            &format!("sleep 60 & echo $! >> {}; wait", pids.display()),
        )
    };
    let settings = vmpipe_common::Settings {
        hooks: vec![hang],
        hook_concurrency: 1,
        ..stack.worker_settings()
    };
    stack.start_worker_with(settings).await;
    for i in 0..3 {
        stack
            .upload(
                ACCOUNT,
                &format!("hang{i}.wav"),
                &wav_pcm16(8000, 500),
                "audio/wav",
            )
            .await;
    }
    // Indexing does not wait for the hook: all three rows while the first run still hangs.
    wait_for_count(
        stack.pool(),
        "SELECT count(*) FROM voicemails",
        3,
        Duration::from_secs(10),
    )
    .await;
    let running: i64 =
        sqlx::query_scalar("SELECT count(*) FROM transcriptions WHERE status <> 'failed'")
            .fetch_one(stack.pool())
            .await
            .unwrap();
    assert!(running >= 2, "the hook runs are still to come: {running}");

    for i in 0..3 {
        let row = stack
            .finished_transcription(&format!("hang{i}.wav"), "hang", Duration::from_secs(20))
            .await;
        assert_eq!(text(&row, "status"), "failed");
        assert_eq!(text(&row, "error"), "timed out after 1 s");
        assert_eq!(row.get::<i32, _>("attempts"), 1);
    }
    let pids: Vec<u32> = std::fs::read_to_string(&pids)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 3);
    tokio::time::sleep(Duration::from_millis(200)).await;
    for pid in pids {
        assert!(!process_running(pid), "the hook's child {pid} was killed");
    }
    stack.finish().await;
}

/// A failing hook is retried with its error recorded until it succeeds or gives up; a crash is
/// reported with its signal; the hook gets its input as documented; `worker transcribe` runs
/// the hooks again on demand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_hooks_are_retried_and_their_errors_recorded() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().display();
    let mut stack = Stack::start(false).await;
    let flaky = command_hook(
        "flaky",
        &format!(
            "if [ -e {dir}/$VMPIPE_VOICEMAIL_ID ]; then echo 'second time lucky'; \
             else touch {dir}/$VMPIPE_VOICEMAIL_ID; echo 'engine not ready' >&2; exit 3; fi"
        ),
    );
    let crash = HookSettings {
        max_attempts: 2,
        ..command_hook("crash", "echo 'about to crash' >&2; kill -SEGV $$")
    };
    // Echoes what it was given: stdin JSON, environment, argument.
    let inputs = command_hook(
        "inputs",
        &format!(
            "cat > {dir}/input.json; printf '%s|%s|%s|%s' \"$VMPIPE_HOOK_NAME\" \
             \"$VMPIPE_HOOK_ATTEMPT\" \"${{VMPIPE_DATABASE_URL:-no secrets}}\" $(wc -c < \"$1\")"
        ),
    );
    let wav16k = HookSettings {
        audio: HookAudio::Wav16k,
        ..command_hook("wav16k", "od -A n -t u4 -j 24 -N 4 \"$1\"; wc -c < \"$1\"")
    };
    let settings = vmpipe_common::Settings {
        hooks: vec![flaky, crash, inputs, wav16k],
        ..stack.worker_settings()
    };
    stack.start_worker_with(settings.clone()).await;
    let wav = wav_pcm16(8000, 1500);
    stack.upload(ACCOUNT, "flaky.wav", &wav, "audio/wav").await;

    let row = stack
        .finished_transcription("flaky.wav", "flaky", Duration::from_secs(20))
        .await;
    assert_eq!(text(&row, "status"), "done");
    assert_eq!(text(&row, "text"), "second time lucky");
    assert_eq!(row.get::<i32, _>("attempts"), 2);

    let row = stack
        .finished_transcription("flaky.wav", "crash", Duration::from_secs(20))
        .await;
    assert_eq!(text(&row, "status"), "failed");
    assert_eq!(row.get::<i32, _>("attempts"), 2);
    assert_eq!(text(&row, "error"), "killed by signal 11: about to crash");
    assert!(text(&row, "text").is_empty());

    let row = stack
        .finished_transcription("flaky.wav", "inputs", Duration::from_secs(20))
        .await;
    assert_eq!(
        text(&row, "text"),
        format!("inputs|1|no secrets|{}", wav.len()),
        "{}",
        text(&row, "error")
    );
    let input: serde_json::Value =
        serde_json::from_slice(&std::fs::read(scratch.path().join("input.json")).unwrap()).unwrap();
    assert_eq!(input["voicemail"]["attachment_name"], "flaky.wav");
    assert_eq!(input["audio_format"], "original");
    assert!(input["document"]["metadata"]["caller_id_number"].is_string());

    // 1.5 s at 16 kHz mono 16-bit: the header's byte rate, then the size.
    let row = stack
        .finished_transcription("flaky.wav", "wav16k", Duration::from_secs(20))
        .await;
    assert_eq!(text(&row, "status"), "done", "{}", text(&row, "error"));
    let numbers: Vec<u64> = text(&row, "text")
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    assert_eq!(numbers, [16_000, 44 + 2 * 24_000]);

    // On demand, by storage key: the flaky hook now succeeds at its first attempt.
    stack.stop_worker().await;
    let key: String = sqlx::query_scalar("SELECT storage_key FROM voicemails")
        .fetch_one(stack.pool())
        .await
        .unwrap();
    let reports = vmpipe_worker::transcribe(&settings, &key, Some("flaky"))
        .await
        .unwrap();
    assert_eq!(reports.len(), 1);
    assert_eq!(
        (
            reports[0].status.as_str(),
            reports[0].attempts,
            reports[0].text.as_deref()
        ),
        ("done", 1, Some("second time lucky"))
    );
    let unknown = vmpipe_worker::transcribe(&settings, "no/such/key.wav", None).await;
    assert!(unknown.unwrap_err().to_string().contains("no voicemail"));
    stack.finish().await;
}

/// A command hook's JSON answer may carry segments: ours are stored as they are; another shape
/// (a Whisper server's `start`/`end` in seconds, passed through) costs the transcript nothing,
/// only its segments.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hooks_segments_are_stored_and_other_shapes_never_cost_the_text() {
    let mut stack = Stack::start(false).await;
    let ours = command_hook(
        "ours",
        r#"echo '{"text": "Hello there.", "language": "en", "segments": [{"start_ms": 120, "end_ms": 900, "text": "Hello there."}]}'"#,
    );
    let theirs = command_hook(
        "theirs",
        r#"echo '{"text": "Hello there.", "segments": [{"start": 0.12, "end": 0.9, "text": "Hello there."}]}'"#,
    );
    let plain = command_hook("plain", "echo 'Hello there.'");
    let settings = vmpipe_common::Settings {
        hooks: vec![ours, theirs, plain],
        ..stack.worker_settings()
    };
    stack.start_worker_with(settings).await;
    stack
        .upload(ACCOUNT, "segments.wav", &wav_pcm16(8000, 1000), "audio/wav")
        .await;
    for (hook, segments) in [
        (
            "ours",
            Some(serde_json::json!([{"start_ms": 120, "end_ms": 900, "text": "Hello there."}])),
        ),
        ("theirs", None),
        ("plain", None),
    ] {
        let row = stack
            .finished_transcription("segments.wav", hook, Duration::from_secs(20))
            .await;
        assert_eq!(
            text(&row, "status"),
            "done",
            "{hook}: {}",
            text(&row, "error")
        );
        assert_eq!(text(&row, "text"), "Hello there.", "{hook}");
        assert_eq!(row.get::<i32, _>("attempts"), 1, "{hook}");
        assert_eq!(
            row.get::<Option<serde_json::Value>, _>("segments"),
            segments,
            "{hook}"
        );
    }
    stack.finish().await;
}
