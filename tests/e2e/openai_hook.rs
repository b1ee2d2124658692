//! The `openai` hook end to end: a voicemail uploaded through ingest is transcribed by an
//! OpenAI-compatible server on loopback (`vmpipe_tests::OpenaiServer`), which checks the key,
//! the form and the audio; the outcome is read back from `transcriptions`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};
use sqlx::Row;
use vmpipe_common::settings::{HookAudio, HookKind, HookSettings, Secret, SecretUrl};
use vmpipe_tests::*;

const ACCOUNT: &str = "4e3005310add6229778caf6babfe7cfb";
const API_KEY: &str = "sk-test-4f9c2e7a1b";
const MP3: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../worker/fixtures/audio/mp3_cbr32_16k.mp3"
);

/// An `openai` hook on `server` asking for `model`: 20 s timeout, 3 attempts 100 ms apart.
fn openai_hook(name: &str, server: &OpenaiServer, model: &str) -> HookSettings {
    HookSettings {
        kind: HookKind::Openai,
        command: Vec::new(),
        url: Some(SecretUrl(server.url.clone())),
        model: Some(model.into()),
        api_key: Some(Secret(API_KEY.into())),
        ..shell_hook(name, HookAudio::Original, "")
    }
}

/// OpenAI's `verbose_json` answer: the language by name, times in seconds.
fn verbose_answer() -> Value {
    json!({
        "task": "transcribe",
        "language": "english",
        "duration": 4.5,
        "text": " Hi, this is Anna about invoice 4471. Please call me back.",
        "segments": [
            {"id": 0, "seek": 0, "start": 0.0, "end": 2.5, "text": " Hi, this is Anna about invoice 4471.",
             "tokens": [50364, 2421], "temperature": 0.0, "avg_logprob": -0.2,
             "compression_ratio": 1.1, "no_speech_prob": 0.01},
            {"id": 1, "seek": 0, "start": 2.5, "end": 4.5, "text": " Please call me back.",
             "tokens": [50489, 2555], "temperature": 0.0, "avg_logprob": -0.5,
             "compression_ratio": 1.1, "no_speech_prob": 0.02}
        ]
    })
}

/// An MP3 voicemail goes to the server as it was stored, with the model, the language and
/// `verbose_json` asked for; the row has the text, the language as a code, the segments in
/// milliseconds and a confidence from the segments' probabilities. A hook with `audio =
/// "wav16k"` sends a WAV, and a server that answers only `{"text"}` gives a transcript
/// without segments.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_openai_server_s_transcript_is_stored_with_language_and_segments() {
    let server = OpenaiServer::start(
        API_KEY,
        BTreeMap::from([
            (
                "whisper-1".into(),
                vec![Reply::Transcript(verbose_answer())],
            ),
            (
                "plain".into(),
                vec![Reply::Transcript(json!({"text": "Please call me back."}))],
            ),
        ]),
    );
    let mut stack = Stack::start(false).await;
    let whisper = HookSettings {
        language: Some("en".into()),
        ..openai_hook("stt", &server, "whisper-1")
    };
    let plain = HookSettings {
        audio: HookAudio::Wav16k,
        ..openai_hook("stt-plain", &server, "plain")
    };
    let settings = vmpipe_common::Settings {
        hooks: vec![whisper, plain],
        ..stack.worker_settings()
    };
    stack.start_worker_with(settings).await;
    let mp3 = std::fs::read(MP3).unwrap();
    stack
        .upload(ACCOUNT, "message.mp3", &mp3, "audio/mpeg")
        .await;

    let row = stack
        .finished_transcription("message.mp3", "stt", Duration::from_secs(20))
        .await;
    assert_eq!(text(&row, "status"), "done", "{}", text(&row, "error"));
    assert_eq!(
        text(&row, "text"),
        "Hi, this is Anna about invoice 4471. Please call me back."
    );
    assert_eq!(
        text(&row, "language"),
        "en",
        "the code of OpenAI's \"english\""
    );
    let segments: Value = row
        .get::<Option<sqlx::types::Json<Value>>, _>("segments")
        .expect("segments")
        .0;
    assert_eq!(
        segments,
        json!([
            {"start_ms": 0, "end_ms": 2500, "text": "Hi, this is Anna about invoice 4471."},
            {"start_ms": 2500, "end_ms": 4500, "text": "Please call me back."}
        ])
    );
    // exp of the duration-weighted mean avg_logprob: (2.5 * -0.2 + 2 * -0.5) / 4.5.
    let confidence = row.get::<Option<f64>, _>("confidence").expect("confidence");
    assert!(
        (confidence - (-1.5f64 / 4.5).exp()).abs() < 1e-6,
        "{confidence}"
    );
    assert_eq!(row.get::<i32, _>("attempts"), 1);

    let requests = server.requests("whisper-1");
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(
        request.authorization.as_deref(),
        Some(format!("Bearer {API_KEY}").as_str())
    );
    assert_eq!(request.fields["response_format"], "verbose_json");
    assert_eq!(request.fields["language"], "en");
    assert_eq!(request.file, mp3, "the stored audio, byte for byte");
    assert_eq!(request.file_content_type.as_deref(), Some("audio/mpeg"));
    let file_name = request.file_name.as_deref().unwrap_or_default();
    assert!(file_name.ends_with(".mp3"), "{file_name}");

    let row = stack
        .finished_transcription("message.mp3", "stt-plain", Duration::from_secs(20))
        .await;
    assert_eq!(text(&row, "status"), "done", "{}", text(&row, "error"));
    assert_eq!(text(&row, "text"), "Please call me back.");
    assert_eq!(row.get::<Option<String>, _>("language"), None);
    assert_eq!(row.get::<Option<f64>, _>("confidence"), None);
    let segments = row.get::<Option<sqlx::types::Json<Value>>, _>("segments");
    assert!(segments.is_none(), "no segments: {segments:?}");
    let requests = server.requests("plain");
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert!(
        !request.fields.contains_key("language"),
        "no language set: the server detects it"
    );
    assert_eq!(request.file_content_type.as_deref(), Some("audio/wav"));
    assert!(request.file.starts_with(b"RIFF"), "a WAV");
    let file_name = request.file_name.as_deref().unwrap_or_default();
    assert!(file_name.ends_with(".wav"), "{file_name}");

    // The transcript is found by full-text search.
    let found: Vec<String> = sqlx::query_scalar(
        "SELECT t.hook FROM transcriptions t
         WHERE t.text_search @@ websearch_to_tsquery('english', 'invoice')",
    )
    .fetch_all(stack.pool())
    .await
    .unwrap();
    assert_eq!(found, ["stt"]);
    server.stop().await;
    stack.finish().await;
}

/// In a worker process logging at debug level: a 500 is retried and the next answer stored; a
/// refused key (401) fails at once with the server's message, the key it quotes masked; no
/// API key ever reaches the log, the one read from `api_key_file` neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_retried_a_refused_key_fails_at_once_and_keys_stay_out_of_logs() {
    let server = OpenaiServer::start(
        API_KEY,
        BTreeMap::from([(
            "whisper-1".into(),
            vec![
                Reply::Error(
                    500,
                    "The server had an error processing your request.".into(),
                ),
                Reply::Transcript(verbose_answer()),
            ],
        )]),
    );
    let mut stack = Stack::start(false).await;
    let scratch = tempfile::tempdir().unwrap();
    let key_file = scratch.path().join("openai_key");
    std::fs::write(&key_file, format!("{API_KEY}\n")).unwrap();
    let flaky = HookSettings {
        api_key: None,
        api_key_file: Some(key_file),
        ..openai_hook("flaky", &server, "whisper-1")
    };
    const WRONG_KEY: &str = "sk-wrong-8d1e5b";
    let refused = HookSettings {
        api_key: Some(Secret(WRONG_KEY.into())),
        ..openai_hook("refused", &server, "whisper-1")
    };
    let config = hooks_file(scratch.path(), &[flaky, refused]);
    let log = scratch.path().join("worker.log");
    let worker = Service::spawn_with_env_filtered(
        "worker",
        &stack.worker_settings(),
        &[("VMPIPE_CONFIG", config.display().to_string())],
        &log,
        "debug,lapin=off",
    )
    .await;
    stack.wait_for_schema().await;
    stack
        .upload(ACCOUNT, "retry.wav", &wav_pcm16(8000, 1000), "audio/wav")
        .await;

    let row = stack
        .finished_transcription("retry.wav", "flaky", Duration::from_secs(20))
        .await;
    assert_eq!(text(&row, "status"), "done", "{}", text(&row, "error"));
    assert_eq!(row.get::<i32, _>("attempts"), 2, "the 500 was retried");
    assert_eq!(text(&row, "error"), "", "no error left after the success");
    assert_eq!(text(&row, "language"), "en");

    let row = stack
        .finished_transcription("retry.wav", "refused", Duration::from_secs(20))
        .await;
    assert_eq!(text(&row, "status"), "failed");
    assert_eq!(row.get::<i32, _>("attempts"), 1, "a 401 is not retried");
    let error = text(&row, "error");
    assert!(
        error.contains("401 Unauthorized: Incorrect API key provided: ***."),
        "{error}"
    );
    assert!(!error.contains(WRONG_KEY), "{error}");
    assert_eq!(
        server.requests("whisper-1").len(),
        3,
        "two attempts and one"
    );

    worker.sigterm(Duration::from_secs(20)).await;
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("Incorrect API key provided"),
        "the failure is logged"
    );
    for key in [API_KEY, WRONG_KEY] {
        assert!(!logged.contains(key), "{key} is in the worker's log");
    }
    server.stop().await;
    stack.finish().await;
}
