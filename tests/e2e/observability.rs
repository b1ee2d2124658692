//! What an operator reads: the log lines of real ingest and worker processes run with their
//! default log filter.

use std::time::{Duration, Instant};

use serde_json::Value;
use vmpipe_tests::*;

const ACCOUNT: &str = "4e3005310add6229778caf6babfe7cfb";

/// The JSON log lines of a file (each line one object).
fn json_lines(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

fn field<'a>(line: &'a Value, name: &str) -> &'a Value {
    &line[name]
}

fn text(line: &Value, name: &str) -> String {
    line[name].as_str().unwrap_or_default().to_owned()
}

/// Lines logged by a dependency (not vmpipe's own crates) at `info` or below.
fn dependency_noise(lines: &[Value]) -> Vec<&Value> {
    lines
        .iter()
        .filter(|l| !text(l, "target").starts_with("vmpipe"))
        .filter(|l| matches!(text(l, "level").as_str(), "INFO" | "DEBUG" | "TRACE"))
        .collect()
}

/// Waits until `log` has a line for which `found` holds.
async fn wait_for_line(log: &std::path::Path, what: &str, found: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + WAIT;
    while !json_lines(log).iter().any(&found) {
        assert!(Instant::now() < deadline, "no {what} in {}", log.display());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_and_a_fetch_each_log_one_access_line_and_a_failure_is_logged_once() {
    let mut stack = Stack::start(false).await;
    let logs = tempfile::tempdir().unwrap();
    let (ingest_log, worker_log) = (logs.path().join("ingest"), logs.path().join("worker"));
    // No RUST_LOG: the filter an operator gets.
    let ingest =
        Service::spawn_with_logs("ingest", &stack.ingest.settings, Some(&ingest_log), None).await;
    let worker =
        Service::spawn_with_logs("worker", &stack.worker_settings(), Some(&worker_log), None).await;
    stack.wait_for_schema().await;
    let kazoo = Kazoo {
        port: ingest.health_port,
    };
    let audio = wav_pcm16(8000, 500);
    let document = mailbox_message("doc", "m.wav");
    let att = Attachment {
        document_id: "doc",
        name: "m.wav",
        content_type: "audio/wav",
        data: &audio,
        document: &document,
    };
    let key = format!("{ACCOUNT}/doc/m.wav");
    let r = kazoo
        .store(Verb::Put, &format!("/{key}"), Body::Multipart, &att)
        .await;
    assert_eq!(r.status, 201);
    // KAZOO >= 4.3.106 fetches its segment twice.
    assert_eq!(
        kazoo
            .get(&format!("/{key}/{key}?{VOICEMAIL_FETCH_QUERY}"))
            .await
            .status,
        200
    );
    assert_eq!(
        kazoo.get(&format!("/{ACCOUNT}/doc/none.wav")).await.status,
        404
    );
    // A store that fails on the server's side: a link planted below voicemails/.
    let outside = tempfile::tempdir().unwrap();
    let account_dir = stack.ingest.storage_dir().join("voicemails").join(ACCOUNT);
    std::os::unix::fs::symlink(outside.path(), account_dir.join("linked")).unwrap();
    let failed_key = format!("{ACCOUNT}/linked/f.wav");
    let r = kazoo
        .store(Verb::Put, &format!("/{failed_key}"), Body::Raw, &att)
        .await;
    assert_eq!(r.status, 500);
    // Probes and scrapes are not access-logged at info.
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(ingest.get(path).await.unwrap().0, 200, "{path}");
    }
    wait_for_count(stack.pool(), "SELECT count(*) FROM voicemails", 1, WAIT).await;
    worker.sigkill().await;
    // A restart on a migrated database: PostgreSQL's notices about what exists already.
    let restarted_log = logs.path().join("worker-restarted");
    let restarted = Service::spawn_with_logs(
        "worker",
        &stack.worker_settings(),
        Some(&restarted_log),
        None,
    )
    .await;
    wait_for_line(&restarted_log, "consumer", |l| {
        text(l, "message") == "consuming jobs"
    })
    .await;
    restarted.sigkill().await;
    ingest.sigkill().await;

    let lines = json_lines(&ingest_log);
    let access: Vec<&Value> = lines
        .iter()
        .filter(|l| matches!(text(l, "message").as_str(), "request" | "request failed"))
        .collect();
    assert_eq!(access.len(), 4, "one line per store and fetch: {access:#?}");
    let line = |method: &str, status: u64| {
        let found: Vec<&&Value> = access
            .iter()
            .filter(|l| text(l, "method") == method && field(l, "status") == status)
            .collect();
        assert_eq!(found.len(), 1, "{method} {status}: {access:#?}");
        *found[0]
    };
    let stored = line("PUT", 201);
    assert_eq!(text(stored, "level"), "INFO");
    assert_eq!(text(stored, "key"), key);
    assert_eq!(field(stored, "bytes"), audio.len() as u64);
    assert_eq!(text(stored, "client"), "127.0.0.1");
    assert!(field(stored, "duration_ms").as_f64().is_some(), "{stored}");
    assert!(!text(stored, "request_id").is_empty(), "{stored}");
    let fetched = line("GET", 200);
    assert_eq!(
        text(fetched, "key"),
        key,
        "the stored key, not the doubled path"
    );
    assert_eq!(field(fetched, "bytes"), audio.len() as u64);
    assert!(
        field(fetched, "duration_ms").as_f64().is_some(),
        "{fetched}"
    );
    let missing = line("GET", 404);
    assert_eq!(text(missing, "code"), "not_found");
    assert_eq!(text(missing, "level"), "INFO");
    // The failure: one line, a warning, with its key, its code and its cause (not Debug).
    let failed = line("PUT", 500);
    assert_eq!(text(failed, "level"), "WARN");
    assert_eq!(text(failed, "key"), failed_key);
    assert_eq!(text(failed, "code"), "storage_error");
    assert!(text(failed, "error").contains("symbolic link"), "{failed}");
    let about_it: Vec<&Value> = lines
        .iter()
        .filter(|l| l.to_string().contains("linked"))
        .collect();
    assert_eq!(
        about_it.len(),
        1,
        "the failure is logged once: {about_it:#?}"
    );
    for line in &lines {
        let error = text(line, "error");
        assert!(
            !error.contains(" { ") && !error.contains("Os {"),
            "Debug output in a log line: {line}"
        );
    }
    // The dependencies' own info lines (actix's workers starting, sqlx's migration notices)
    // are off by default.
    let worker_lines = json_lines(&worker_log);
    let restarted_lines = json_lines(&restarted_log);
    for (service, lines) in [
        ("ingest", &lines),
        ("worker", &worker_lines),
        ("restarted worker", &restarted_lines),
    ] {
        let noise = dependency_noise(lines);
        assert!(noise.is_empty(), "{service}: {noise:#?}");
        assert!(
            lines.iter().any(|l| text(l, "level") == "INFO"),
            "{service} logged its own info lines"
        );
    }
    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_is_a_warning_not_an_error() {
    let mut stack = Stack::start(false).await;
    let proxy = Proxy::start(url_addr(&amqp_url())).await;
    let logs = tempfile::tempdir().unwrap();
    let (ingest_log, worker_log) = (logs.path().join("ingest"), logs.path().join("worker"));
    let mut settings = stack.ingest.settings.clone();
    settings.amqp_url = vmpipe_common::settings::SecretUrl(proxy.url_for(&amqp_url()));
    let ingest = Service::spawn_with_logs("ingest", &settings, Some(&ingest_log), None).await;
    let worker_settings = vmpipe_common::Settings {
        amqp_url: settings.amqp_url.clone(),
        ..stack.worker_settings()
    };
    let worker =
        Service::spawn_with_logs("worker", &worker_settings, Some(&worker_log), None).await;
    stack.wait_for_schema().await;
    let connected = |l: &Value| text(l, "message") == "connected to RabbitMQ";
    let consuming = |l: &Value| text(l, "message") == "consuming jobs";
    wait_for_line(&ingest_log, "RabbitMQ connection", connected).await;
    wait_for_line(&worker_log, "consumer", consuming).await;

    // The broker goes away for a while (a restart), then comes back.
    proxy.cut();
    let count = |log: &std::path::Path, f: &dyn Fn(&Value) -> bool| {
        json_lines(log).iter().filter(|l| f(l)).count()
    };
    let warned = |l: &Value| text(l, "level") == "WARN";
    let deadline = Instant::now() + WAIT;
    while count(&ingest_log, &warned) == 0 || count(&worker_log, &warned) == 0 {
        assert!(Instant::now() < deadline, "the loss was not logged");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(60);
    while count(&ingest_log, &connected) < 2 || count(&worker_log, &consuming) < 2 {
        assert!(Instant::now() < deadline, "did not reconnect");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Still working: a voicemail goes through.
    let audio = wav_pcm16(8000, 300);
    let document = mailbox_message("doc", "b.wav");
    let att = Attachment {
        document_id: "doc",
        name: "b.wav",
        content_type: "audio/wav",
        data: &audio,
        document: &document,
    };
    let r = Kazoo {
        port: ingest.health_port,
    }
    .store(
        Verb::Put,
        &format!("/{ACCOUNT}/doc/b.wav"),
        Body::Multipart,
        &att,
    )
    .await;
    assert_eq!(r.status, 201);
    wait_for_count(stack.pool(), "SELECT count(*) FROM voicemails", 1, WAIT).await;
    worker.sigkill().await;
    ingest.sigkill().await;
    for log in [&ingest_log, &worker_log] {
        let lines = json_lines(log);
        let errors: Vec<&Value> = lines
            .iter()
            .filter(|l| text(l, "level") == "ERROR")
            .collect();
        assert!(errors.is_empty(), "{}: {errors:#?}", log.display());
        let warnings: Vec<&Value> = lines.iter().filter(|l| warned(l)).collect();
        assert!(
            warnings
                .iter()
                .any(|l| text(l, "message").contains("RabbitMQ")),
            "{}: {warnings:#?}",
            log.display()
        );
    }
    stack.finish().await;
}
