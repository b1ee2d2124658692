//! What an operator reads: the log lines of real ingest and worker processes run with their
//! default log filter, and their `/metrics` from the first scrape, against the dashboard and
//! alert rules shipped in `ops/`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::Value;
use vmpipe_common::metrics::{API, INGEST, Kind, WORKER};
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

/// The samples of Prometheus text output: (series name, labels text, value).
fn samples(metrics: &str) -> Vec<(String, String, f64)> {
    metrics
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => (name, labels.trim_end_matches('}')),
                None => (series, ""),
            };
            Some((name.to_owned(), labels.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// The `le` bounds of the histogram `name`'s first series, `+Inf` left out.
fn buckets(metrics: &str, name: &str) -> Vec<f64> {
    let bucket = format!("{name}_bucket");
    let all = samples(metrics);
    let first_labels = all
        .iter()
        .find(|(n, _, _)| *n == bucket)
        .map(|(_, labels, _)| labels.split("le=").next().unwrap_or("").to_owned())
        .unwrap_or_else(|| panic!("no {bucket}"));
    all.iter()
        .filter(|(n, labels, _)| *n == bucket && labels.starts_with(&first_labels))
        .filter_map(|(_, labels, _)| {
            let le = labels.rsplit_once("le=\"")?.1.trim_end_matches('"');
            le.parse().ok().filter(|b: &f64| b.is_finite())
        })
        .collect()
}

/// Metric names (`vmpipe_…`, without `_bucket`/`_sum`/`_count`) an expression uses.
fn names_in(expression: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expression;
    while let Some(at) = rest.find("vmpipe_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let name = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(name);
        names.insert(name.to_owned());
        rest = &tail[end..];
    }
    names
}

/// Every `expr` of the dashboard's panels (JSON).
fn dashboard_expressions(dashboard: &Value, found: &mut Vec<String>) {
    match dashboard {
        Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr", Value::String(expr)) => found.push(expr.clone()),
                    (_, value) => dashboard_expressions(value, found),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| dashboard_expressions(v, found)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_services_export_every_metric_at_zero_with_help_and_the_ops_files_use_only_them() {
    let mut stack = Stack::start(false).await;
    let ingest = Service::spawn("ingest", &stack.ingest.settings).await;
    // A hook a child process is given by its environment: the built-in transcriber.
    let worker_settings = vmpipe_tests::worker::with_whisper(stack.worker_settings());
    let hook = vmpipe_common::settings::WHISPER_HOOK;
    // And an event sink, from a settings file (a sink's series are labelled with its name).
    let dir = tempfile::tempdir().unwrap();
    let exchange = format!("vmpipe.events.test.{}", hex32());
    let config = settings_file(dir.path(), &[], &[amqp_sink("bus", &exchange)]);
    let env = [("VMPIPE_CONFIG", config.display().to_string())];
    let worker = Service::spawn_with_env("worker", &worker_settings, &env, None).await;
    stack.wait_for_schema().await;
    let (status, ingest_metrics) = ingest.get("/metrics").await.unwrap();
    assert_eq!(status, 200);
    let mut worker_metrics = String::new();
    // The worker serves /metrics once its database is migrated.
    for _ in 0..100 {
        if let Some((200, text)) = worker.get("/metrics").await {
            worker_metrics = text;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!worker_metrics.is_empty(), "the worker served /metrics");
    let api = Service::spawn("api", &stack.worker_settings()).await;
    api.wait_ready(WAIT).await;
    let (status, api_metrics) = api.get("/metrics").await.unwrap();
    assert_eq!(status, 200);
    api.sigkill().await;
    worker.sigkill().await;
    ingest.sigkill().await;

    let mut exported = BTreeSet::new();
    for (service, list, text) in [
        ("ingest", INGEST, &ingest_metrics),
        ("worker", WORKER, &worker_metrics),
        ("api", API, &api_metrics),
    ] {
        let all = samples(text);
        for metric in list {
            let name = metric.name;
            exported.insert(name.to_owned());
            assert!(
                text.contains(&format!("# HELP {name} ")),
                "{service}: no HELP for {name}\n{text}"
            );
            let kind = match metric.kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
                Kind::Histogram(_) => "histogram",
            };
            assert!(
                text.contains(&format!("# TYPE {name} {kind}")),
                "{service}: {name} is not a {kind}\n{text}"
            );
            // Every declared series is there, at 0, before anything happened.
            let series_name = match metric.kind {
                Kind::Histogram(_) => format!("{name}_count"),
                _ => name.to_owned(),
            };
            let present: Vec<&(String, String, f64)> =
                all.iter().filter(|(n, _, _)| *n == series_name).collect();
            assert!(!present.is_empty(), "{service}: {name} is not exported");
            // The Whisper engine starts with the worker: its start is already counted.
            let set_at_start = [
                "vmpipe_whisper_engine_starts_total",
                "vmpipe_whisper_model_load_seconds",
                "vmpipe_whisper_engine_rss_bytes",
            ];
            if set_at_start.contains(&name) {
                assert!(
                    present.iter().all(|(_, _, value)| *value > 0.0),
                    "{service}: {name} is not set at start: {present:?}"
                );
            } else {
                assert!(
                    present.iter().all(|(_, _, value)| *value == 0.0),
                    "{service}: {name} is not 0: {present:?}"
                );
            }
            for labels in metric.series {
                let wanted: Vec<String> = labels
                    .iter()
                    .map(|(key, value)| format!("{key}=\"{value}\""))
                    .collect();
                assert!(
                    present
                        .iter()
                        .any(|(_, l, _)| wanted.iter().all(|w| l.contains(w.as_str()))),
                    "{service}: {name}{{{}}} is not exported",
                    wanted.join(",")
                );
            }
            if let Kind::Histogram(declared) = metric.kind {
                assert_eq!(buckets(text, name), declared, "{service}: {name}'s buckets");
            }
        }
    }
    // The configured hook's series, at 0; none without a hook label.
    let hook_label = format!("hook=\"{hook}\"");
    for outcome in ["done", "retry", "failed"] {
        let labels = format!("outcome=\"{outcome}\"");
        assert!(
            samples(&worker_metrics)
                .iter()
                .any(|(n, l, v)| n == "vmpipe_hook_runs_total"
                    && l.contains(&hook_label)
                    && l.contains(&labels)
                    && *v == 0.0),
            "vmpipe_hook_runs_total{{{hook_label},{labels}}}\n{worker_metrics}"
        );
    }
    for (name, labels, _) in samples(&worker_metrics) {
        if name.starts_with("vmpipe_hook_run") {
            assert!(labels.contains(&hook_label), "{name}{{{labels}}}");
        }
        if name.starts_with("vmpipe_event_") {
            assert!(labels.contains("sink=\"bus\""), "{name}{{{labels}}}");
        }
    }
    for outcome in ["delivered", "retry", "failed"] {
        let labels = format!("outcome=\"{outcome}\"");
        assert!(
            samples(&worker_metrics)
                .iter()
                .any(|(n, l, v)| n == "vmpipe_event_deliveries_total"
                    && l.contains("sink=\"bus\"")
                    && l.contains(&labels)
                    && *v == 0.0),
            "vmpipe_event_deliveries_total{{sink=\"bus\",{labels}}}\n{worker_metrics}"
        );
    }
    // Lag and hook runs go past a minute; batch sizes are row counts.
    assert_eq!(
        buckets(&worker_metrics, "vmpipe_job_lag_seconds").last(),
        Some(&3600.0)
    );
    assert_eq!(
        buckets(&worker_metrics, "vmpipe_hook_run_seconds").last(),
        Some(&3600.0)
    );
    assert_eq!(
        buckets(&worker_metrics, "vmpipe_index_batch_rows"),
        [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0]
    );

    // The dashboard and the alert rules use only metrics the services export.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("ops/grafana/vmpipe.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
    let mut expressions = Vec::new();
    dashboard_expressions(&dashboard, &mut expressions);
    assert!(expressions.len() >= 8, "dashboard panels: {expressions:?}");
    let alerts = std::fs::read_to_string(root.join("ops/prometheus/alerts.yml")).unwrap();
    let alert_count = alerts.matches("- alert: ").count();
    assert!(alert_count >= 6, "alert rules: {alert_count}");
    for (file, text) in expressions
        .iter()
        .map(|e| ("ops/grafana/vmpipe.json", e.as_str()))
        .chain([("ops/prometheus/alerts.yml", alerts.as_str())])
    {
        let used = names_in(text);
        assert!(!used.is_empty(), "{file}: no vmpipe metric in {text}");
        let unknown: Vec<&String> = used.difference(&exported).collect();
        assert!(unknown.is_empty(), "{file} uses {unknown:?}, not exported");
    }
    stack.finish().await;
}
