//! The built-in Whisper transcriber end to end: KAZOO uploads through ingest, the worker's
//! engine (faster-whisper with the tests' tiny.en model, in the venv `scripts/test.sh` makes),
//! and the transcript read back from `transcriptions`.

use std::time::{Duration, Instant};

use sqlx::Row;
use vmpipe_common::Settings;
use vmpipe_tests::worker::with_whisper;
use vmpipe_tests::*;

const ACCOUNT: &str = "4e3005310add6229778caf6babfe7cfb";
const SPOKEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/spoken");

/// `(file, words the transcript must have)` from `fixtures/spoken/expected.tsv`.
fn spoken_cases() -> Vec<(String, Vec<String>)> {
    let expected = std::fs::read_to_string(format!("{SPOKEN}/expected.tsv")).unwrap();
    let cases: Vec<(String, Vec<String>)> = expected
        .lines()
        .skip(1)
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let fields: Vec<&str> = line.split('\t').collect();
            let words = fields[2].split_whitespace().map(str::to_owned).collect();
            (fields[0].to_owned(), words)
        })
        .collect();
    assert!(!cases.is_empty());
    cases
}

async fn upload_spoken(stack: &Stack, file: &str) {
    let audio = std::fs::read(format!("{SPOKEN}/{file}")).unwrap();
    let content_type = if file.ends_with(".mp3") {
        "audio/mpeg"
    } else {
        "audio/wav"
    };
    stack.upload(ACCOUNT, file, &audio, content_type).await;
}

/// Words of a transcript, lower-case, without punctuation.
fn words(transcript: &str) -> Vec<String> {
    transcript
        .split(|c: char| !c.is_alphanumeric() && c != '\'')
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// Spoken voicemails (8 kHz MP3 and WAV, as KAZOO records them) come out with the words that
/// were said, the language, a confidence, and segments whose timestamps lie within the audio;
/// the README's full-text query finds them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whisper_transcribes_spoken_voicemails_with_language_confidence_and_segments() {
    let cases = spoken_cases();
    let mut stack = Stack::start(false).await;
    let settings = with_whisper(stack.worker_settings());
    stack.start_worker_with(settings).await;
    for (file, _) in &cases {
        upload_spoken(&stack, file).await;
    }
    for (file, expected) in &cases {
        let row = stack
            .finished_transcription(file, "whisper", Duration::from_secs(120))
            .await;
        assert_eq!(
            text(&row, "status"),
            "done",
            "{file}: {}",
            text(&row, "error")
        );
        let transcript = text(&row, "text");
        let heard = words(&transcript);
        for word in expected {
            assert!(
                heard.contains(word),
                "{file}: {word:?} not in {transcript:?}"
            );
        }
        assert_eq!(text(&row, "language"), "en", "{file}");
        let confidence: f64 = row
            .get::<Option<f64>, _>("confidence")
            .expect("a confidence");
        assert!(
            confidence > 0.2 && confidence <= 1.0,
            "{file}: {confidence}"
        );

        let segments: serde_json::Value = row
            .get::<Option<serde_json::Value>, _>("segments")
            .expect("segments");
        let segments = segments.as_array().expect("an array");
        assert!(!segments.is_empty(), "{file}");
        let duration_ms: i64 = sqlx::query_scalar(
            "SELECT duration_ms::bigint FROM voicemails WHERE attachment_name = $1",
        )
        .bind(file)
        .fetch_one(stack.pool())
        .await
        .unwrap();
        let mut previous_end = 0;
        let mut joined = Vec::new();
        for segment in segments {
            let start = segment["start_ms"].as_i64().unwrap();
            let end = segment["end_ms"].as_i64().unwrap();
            assert!(
                previous_end <= start + 50 && start < end && end <= duration_ms + 500,
                "{file}: segment {segment} after {previous_end} ms, audio {duration_ms} ms"
            );
            previous_end = end;
            joined.push(segment["text"].as_str().unwrap().to_owned());
        }
        assert_eq!(
            joined.join(" "),
            transcript,
            "{file}: the segments make the text"
        );
        let queued: chrono::DateTime<chrono::Utc> = row.get("queued_at");
        let finished: chrono::DateTime<chrono::Utc> = row.get("finished_at");
        eprintln!(
            "{file}: {transcript:?} ({confidence:.2}); run {} ms, indexed -> transcript {} ms",
            row.get::<Option<i32>, _>("run_ms").unwrap_or_default(),
            (finished - queued).num_milliseconds()
        );
    }
    // The README's queries: full-text search, and where in the voicemail a word was said.
    let found: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM transcriptions
         WHERE text_search @@ websearch_to_tsquery('english', 'invoice')",
    )
    .fetch_one(stack.pool())
    .await
    .unwrap();
    assert!(found >= 1, "full-text search finds \"invoice\"");
    let said_at: Vec<i32> = sqlx::query_scalar(
        "SELECT s.start_ms FROM transcriptions t,
                jsonb_to_recordset(t.segments) AS s(start_ms int, end_ms int, text text)
         WHERE t.status = 'done' AND s.text ILIKE '%invoice%'",
    )
    .fetch_all(stack.pool())
    .await
    .unwrap();
    assert!(!said_at.is_empty(), "a segment says \"invoice\"");
    stack.finish().await;
}

/// Silence, and hold music (no one speaking), are a transcript with no words and no segments,
/// not words the model made up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silence_and_hold_music_are_transcribed_as_nothing() {
    let mut stack = Stack::start(false).await;
    stack
        .start_worker_with(with_whisper(stack.worker_settings()))
        .await;
    let mut silence = wav_pcm16(8000, 6000);
    silence[44..].fill(0);
    stack
        .put_wav(&format!("/{ACCOUNT}/silence.wav"), "silence.wav", &silence)
        .await;
    let music = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/music");
    let tunes = ["hold-audioread.mp3", "hold-pydub.mp3"];
    for tune in tunes {
        let audio = std::fs::read(format!("{music}/{tune}")).unwrap();
        stack.upload(ACCOUNT, tune, &audio, "audio/mpeg").await;
    }
    for file in std::iter::once("silence.wav").chain(tunes) {
        let row = stack
            .finished_transcription(file, "whisper", Duration::from_secs(120))
            .await;
        assert_eq!(
            text(&row, "status"),
            "done",
            "{file}: {}",
            text(&row, "error")
        );
        assert_eq!(text(&row, "text"), "", "{file}");
        let segments: serde_json::Value =
            row.get::<Option<serde_json::Value>, _>("segments").unwrap();
        assert_eq!(segments, serde_json::json!([]), "{file}");
        assert_eq!(row.get::<Option<f64>, _>("confidence"), None, "{file}");
    }
    stack.finish().await;
}

/// The pids of the Whisper engines running under `worker` (its descendants).
fn engines_of(worker: u32) -> Vec<u32> {
    let parent_of = |pid: u32| -> Option<u32> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat.rsplit(')')
            .next()?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    let mut engines = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let is_engine = cmdline
            .split(|b| *b == 0)
            .any(|arg| arg == b"vmpipe-whisper-engine");
        if !is_engine || !process_running(pid) {
            continue;
        }
        let mut ancestor = parent_of(pid);
        for _ in 0..4 {
            match ancestor {
                Some(p) if p == worker => {
                    engines.push(pid);
                    break;
                }
                Some(p) if p > 1 => ancestor = parent_of(p),
                _ => break,
            }
        }
    }
    engines
}

async fn engine_starts(worker: &Service) -> f64 {
    let (status, metrics) = worker.get("/metrics").await.expect("/metrics");
    assert_eq!(status, 200);
    sample(&metrics, "vmpipe_whisper_engine_starts_total", &[])
}

/// The model is loaded once per worker: voicemails after the first do not start an engine. An
/// engine that crashes is started again and the voicemail still transcribed; the engine dies
/// with its worker, even on SIGKILL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_loads_once_is_restarted_after_a_crash_and_dies_with_its_worker() {
    let mut stack = Stack::start(false).await;
    let mut settings = with_whisper(stack.worker_settings());
    settings.worker_listen = format!("127.0.0.1:{}", free_port());
    let worker = Service::spawn("worker", &settings).await;
    stack.wait_for_schema().await;
    // Ready once the database is migrated and the model loaded.
    worker.wait_ready(Duration::from_secs(60)).await;
    let engines = engines_of(worker.pid());
    assert_eq!(engines.len(), 1, "one engine, started with the worker");
    assert_eq!(engine_starts(&worker).await, 1.0);

    for file in ["invoice.wav", "order.mp3"] {
        upload_spoken(&stack, file).await;
        let row = stack
            .finished_transcription(file, "whisper", Duration::from_secs(120))
            .await;
        assert_eq!(text(&row, "status"), "done", "{}", text(&row, "error"));
    }
    assert_eq!(
        engine_starts(&worker).await,
        1.0,
        "the model was loaded once"
    );
    assert_eq!(engines_of(worker.pid()), engines, "the same engine");

    // A crash of the engine: the next voicemail starts a new one.
    std::process::Command::new("kill")
        .args(["-KILL", &engines[0].to_string()])
        .status()
        .unwrap();
    upload_spoken(&stack, "invoice.mp3").await;
    let row = stack
        .finished_transcription("invoice.mp3", "whisper", Duration::from_secs(120))
        .await;
    assert_eq!(text(&row, "status"), "done", "{}", text(&row, "error"));
    assert!(words(&text(&row, "text")).contains(&"invoice".to_owned()));
    assert_eq!(engine_starts(&worker).await, 2.0);
    let restarted = engines_of(worker.pid());
    assert_eq!(restarted.len(), 1);
    assert_ne!(restarted, engines);

    worker.sigkill().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while process_running(restarted[0]) {
        assert!(
            Instant::now() < deadline,
            "the engine outlived its worker by 5 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stack.finish().await;
}

/// Variables set on top of the settings'.
type Extra = Vec<(&'static str, String)>;

/// A worker whose transcriber cannot work does not start, and says why: a model that is not
/// there, a Python that is not there, and the retired PocketSphinx transcriber.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transcriber_that_cannot_work_stops_the_worker_at_start_up_with_the_reason() {
    let stack = Stack::start(false).await;
    let whisper = with_whisper(stack.worker_settings());
    let cases: Vec<(Settings, Extra, &str)> = vec![
        (
            Settings {
                whisper_model: "/nonexistent/whisper-model".into(),
                ..whisper.clone()
            },
            vec![],
            "cannot load the Whisper model \"/nonexistent/whisper-model\"",
        ),
        (
            Settings {
                whisper_model: "no-such-model".into(),
                ..whisper.clone()
            },
            vec![],
            "none is ever downloaded at run time",
        ),
        (
            Settings {
                python: "/nonexistent/python3".into(),
                ..whisper.clone()
            },
            vec![],
            "cannot start the Whisper engine with \"/nonexistent/python3\"",
        ),
        (
            Settings {
                whisper_language: "de".into(),
                ..whisper.clone()
            },
            vec![],
            "VMPIPE_WHISPER_LANGUAGE=de is not a language the model",
        ),
        (
            whisper.clone(),
            vec![("VMPIPE_TRANSCRIBER", "pocketsphinx".into())],
            "use transcriber = \"whisper\"",
        ),
    ];
    for (mut settings, extra, why) in cases {
        settings.worker_listen = format!("127.0.0.1:{}", free_port());
        let output = worker_start_output(&settings, &extra, Duration::from_secs(60)).await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        eprintln!("{why}: {stderr}");
        assert!(!output.status.success(), "{why}");
        assert!(stderr.contains(why), "{why}: {stderr}");
    }
    stack.finish().await;
}

/// The 16-bit samples of a WAV file made by sox (a 44-byte header).
fn samples_of(wav: &[u8]) -> &[u8] {
    assert_eq!(&wav[36..40], b"data", "a plain 44-byte WAV header");
    &wav[44..]
}

/// A long voicemail, speech, 50 s of silence, speech again: both parts are transcribed, and
/// the second one's segments are timed after the silence (the voice-activity filter skips it
/// without losing the timeline).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_voicemail_with_silence_keeps_its_timeline() {
    long_voicemail_keeps_its_timeline(300).await;
}

/// The same voicemail with `VMPIPE_WHISPER_WINDOW_SECS=30`: transcribed 30 s at a time, each
/// piece cut where it is quiet (here in the silence, not in the second sentence, which a cut
/// at 60 s would split), with the same words at the same times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voicemail_longer_than_the_window_is_transcribed_piece_by_piece() {
    long_voicemail_keeps_its_timeline(30).await;
}

async fn long_voicemail_keeps_its_timeline(window_secs: u32) {
    let mut stack = Stack::start(false).await;
    let settings = Settings {
        whisper_window_secs: window_secs,
        ..with_whisper(stack.worker_settings())
    };
    stack.start_worker_with(settings).await;
    let speech = std::fs::read(format!("{SPOKEN}/invoice.wav")).unwrap();
    let speech_ms = samples_of(&speech).len() as i64 / 16;
    let mut wav = wav_pcm16(8000, 0);
    let mut data = samples_of(&speech).to_vec();
    data.extend(std::iter::repeat_n(0u8, 8000 * 2 * 50));
    data.extend_from_slice(samples_of(&speech));
    wav.extend_from_slice(&data);
    let data_len = data.len() as u32;
    wav[4..8].copy_from_slice(&(36 + data_len).to_le_bytes());
    wav[40..44].copy_from_slice(&data_len.to_le_bytes());
    stack
        .put_wav(&format!("/{ACCOUNT}/long.wav"), "long.wav", &wav)
        .await;

    let row = stack
        .finished_transcription("long.wav", "whisper", Duration::from_secs(180))
        .await;
    assert_eq!(text(&row, "status"), "done", "{}", text(&row, "error"));
    let transcript = text(&row, "text");
    for word in ["robert", "invoice", "tomorrow", "morning"] {
        assert_eq!(
            words(&transcript).iter().filter(|w| *w == word).count(),
            2,
            "{word:?} in both parts: {transcript:?}"
        );
    }
    let segments: serde_json::Value = row.get::<Option<serde_json::Value>, _>("segments").unwrap();
    let second_part = speech_ms + 50_000;
    let late: Vec<&serde_json::Value> = segments
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["start_ms"].as_i64().unwrap() >= second_part - 1000)
        .collect();
    assert!(
        late.iter().any(|s| s["text"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("invoice")),
        "the second part is timed after the silence ({second_part} ms): {segments}"
    );
    assert!(
        segments.as_array().unwrap().iter().all(|s| {
            let start = s["start_ms"].as_i64().unwrap();
            start < speech_ms + 1000 || start >= second_part - 1000
        }),
        "nothing in the silence: {segments}"
    );
    eprintln!(
        "long.wav ({} s): run {} ms",
        (2 * speech_ms + 50_000) / 1000,
        row.get::<Option<i32>, _>("run_ms").unwrap_or_default()
    );
    stack.finish().await;
}

/// `VMPIPE_WHISPER_CONCURRENCY=2`: two voicemails are transcribed at once by the one engine:
/// the engine's own busy time (each transcription's, summed) exceeds the time both took.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_transcribes_as_many_voicemails_at_once_as_its_concurrency() {
    let mut stack = Stack::start(false).await;
    let mut settings = Settings {
        whisper_concurrency: 2,
        ..with_whisper(stack.worker_settings())
    };
    settings.worker_listen = format!("127.0.0.1:{}", free_port());
    let worker = Service::spawn("worker", &settings).await;
    stack.wait_for_schema().await;
    // Ready once the database is migrated and the model loaded.
    worker.wait_ready(Duration::from_secs(60)).await;
    upload_spoken(&stack, "invoice.wav").await;
    upload_spoken(&stack, "invoice.mp3").await;
    let mut first_start = None::<chrono::DateTime<chrono::Utc>>;
    let mut last_end = None::<chrono::DateTime<chrono::Utc>>;
    for file in ["invoice.wav", "invoice.mp3"] {
        let row = stack
            .finished_transcription(file, "whisper", Duration::from_secs(120))
            .await;
        assert_eq!(text(&row, "status"), "done", "{}", text(&row, "error"));
        let started: chrono::DateTime<chrono::Utc> = row.get("started_at");
        let finished: chrono::DateTime<chrono::Utc> = row.get("finished_at");
        first_start = Some(first_start.map_or(started, |s| s.min(started)));
        last_end = Some(last_end.map_or(finished, |e| e.max(finished)));
    }
    let span = (last_end.unwrap() - first_start.unwrap()).num_milliseconds() as f64 / 1000.0;
    let (_, metrics) = worker.get("/metrics").await.expect("/metrics");
    let busy = sample(&metrics, "vmpipe_whisper_transcribe_seconds_sum", &[]);
    assert_eq!(
        sample(&metrics, "vmpipe_whisper_transcribe_seconds_count", &[]),
        2.0
    );
    assert!(
        busy > 1.2 * span,
        "the two transcriptions ran at once: {busy:.2} s of engine time in {span:.2} s"
    );
    worker.sigkill().await;
    stack.finish().await;
}
