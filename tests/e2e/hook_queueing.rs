//! Hooks don't queue behind each other (issue 16, item 15): each hook has its own runs at once;
//! a command hook whose program is missing stops the worker at start-up; a JSON answer without
//! `text` is a failed attempt, not a transcript.

use std::time::{Duration, Instant};

use sqlx::Row;
use vmpipe_common::settings::{HookAudio, HookKind, HookSettings, SecretUrl};
use vmpipe_tests::*;

const ACCOUNT: &str = "4e3005310add6229778caf6babfe7cfb";

async fn count(stack: &Stack, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(stack.pool())
        .await
        .unwrap()
}

/// A slow transcriber (one run at once, `VMPIPE_HOOK_CONCURRENCY=1`) and a fast webhook-like
/// hook: the fast hook's runs are all done while the slow one is still on its first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_hook_does_not_hold_up_a_fast_one() {
    let scratch = tempfile::tempdir().unwrap();
    let release = scratch.path().join("release");
    let mut stack = Stack::start(false).await;
    let slow = HookSettings {
        timeout_secs: 120,
        ..shell_hook(
            "slow",
            HookAudio::Original,
            &format!(
                "while [ ! -e {} ]; do sleep 0.05; done; echo slow",
                release.display()
            ),
        )
    };
    let fast = shell_hook("fast", HookAudio::Original, "echo fast");
    let settings = vmpipe_common::Settings {
        hooks: vec![slow, fast],
        hook_concurrency: 1,
        ..stack.worker_settings()
    };
    stack.start_worker_with(settings).await;
    let started = Instant::now();
    let names = ["q1.wav", "q2.wav", "q3.wav"];
    for name in names {
        stack.upload_wav(ACCOUNT, name).await;
    }
    for name in names {
        let row = stack
            .finished_transcription(name, "fast", Duration::from_secs(30))
            .await;
        assert_eq!(row.get::<String, _>("status"), "done");
    }
    let fast_done = started.elapsed();
    let slow_finished = count(
        &stack,
        "SELECT count(*) FROM transcriptions WHERE hook = 'slow' AND status IN ('done', 'failed')",
    )
    .await;
    let slow_running = count(
        &stack,
        "SELECT count(*) FROM transcriptions WHERE hook = 'slow' AND status = 'running'",
    )
    .await;
    eprintln!(
        "the fast hook's 3 runs were done in {fast_done:?}, while the slow hook had run none"
    );
    assert_eq!(
        (slow_finished, slow_running),
        (0, 1),
        "the slow hook is still on its first run, one at once"
    );
    std::fs::write(&release, "").unwrap();
    for name in names {
        let row = stack
            .finished_transcription(name, "slow", Duration::from_secs(30))
            .await;
        assert_eq!(row.get::<String, _>("status"), "done");
    }
    stack.finish().await;
}

/// The real worker binary, with a command hook whose program is missing: it stops at start-up
/// with an error naming the hook and the program, instead of failing every run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_whose_program_is_missing_stops_the_worker_at_start() {
    let scratch = tempfile::tempdir().unwrap();
    let not_executable = scratch.path().join("transcribe.sh");
    std::fs::write(&not_executable, "#!/bin/sh\necho hi\n").unwrap();
    let stack = Stack::start(false).await;
    for (program, why) in [
        ("/no/such/transcriber".to_owned(), "No such file"),
        ("vmpipe-no-such-transcriber".to_owned(), "not found on PATH"),
        (not_executable.display().to_string(), "is not executable"),
    ] {
        let hook = HookSettings {
            command: vec![program.clone(), "{audio}".into()],
            ..shell_hook("transcriber", HookAudio::Original, "")
        };
        let config = hooks_file(scratch.path(), &[hook]);
        let mut settings = stack.worker_settings();
        settings.worker_listen = format!("127.0.0.1:{}", free_port());
        let config = ("VMPIPE_CONFIG", config.display().to_string());
        let output = worker_start_output(&settings, &[config], Duration::from_secs(30)).await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        eprintln!("{program}: {stderr}");
        assert!(!output.status.success(), "{program}");
        assert!(
            stderr.contains(&format!(
                "hook \"transcriber\": its program {program:?} cannot run"
            )) && stderr.contains(why),
            "{program}: {stderr}"
        );
    }
    stack.finish().await;
}

/// A webhook answering `answer` with 200.
async fn start_answering(answer: serde_json::Value) -> (u16, actix_web::dev::ServerHandle) {
    use actix_web::{App, HttpResponse, HttpServer, web};
    let server = HttpServer::new(move || {
        let answer = answer.clone();
        App::new().default_service(web::to(move || {
            let answer = answer.clone();
            async move { HttpResponse::Ok().json(answer) }
        }))
    })
    .workers(1)
    .disable_signals()
    .bind("127.0.0.1:0")
    .unwrap();
    let port = server.addrs()[0].port();
    let server = server.run();
    let handle = server.handle();
    tokio::spawn(server);
    (port, handle)
}

/// A command that prints, and a webhook that answers, a JSON object without `text`: each
/// attempt fails with that reason, and no transcript is recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_answer_without_text_is_a_failed_attempt() {
    let (port, server) = start_answering(serde_json::json!({"transcript": "hello"})).await;
    let mut stack = Stack::start(false).await;
    let command = HookSettings {
        max_attempts: 2,
        ..shell_hook(
            "printer",
            HookAudio::Original,
            "echo '{\"transcript\": \"hello\", \"language\": \"en\"}'",
        )
    };
    let webhook = HookSettings {
        kind: HookKind::Webhook,
        command: Vec::new(),
        url: Some(SecretUrl(format!("http://127.0.0.1:{port}/transcribe"))),
        max_attempts: 2,
        ..shell_hook("answerer", HookAudio::Original, "")
    };
    let settings = vmpipe_common::Settings {
        hooks: vec![command, webhook],
        ..stack.worker_settings()
    };
    stack.start_worker_with(settings).await;
    stack.upload_wav(ACCOUNT, "json.wav").await;
    for (hook, says) in [
        (
            "printer",
            "the program printed JSON without a \"text\" string",
        ),
        (
            "answerer",
            "webhook answered 200 OK with JSON without a \"text\" string",
        ),
    ] {
        let row = stack
            .finished_transcription("json.wav", hook, Duration::from_secs(30))
            .await;
        let error = row.get::<Option<String>, _>("error").unwrap_or_default();
        eprintln!("{hook}: {error}");
        assert_eq!(row.get::<String, _>("status"), "failed", "{hook}");
        assert_eq!(
            row.get::<i32, _>("attempts"),
            2,
            "{hook}: every attempt failed"
        );
        assert!(error.contains(says), "{hook}: {error}");
        assert!(
            error.contains("\"transcript\":\"hello\""),
            "{hook}: {error}"
        );
        assert_eq!(row.get::<Option<String>, _>("text"), None, "{hook}");
    }
    server.stop(true).await;
    stack.finish().await;
}
