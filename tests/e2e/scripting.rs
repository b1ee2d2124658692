//! The worker's admin commands in scripts: the report alone on standard output, logs on
//! standard error without terminal colours, and no panic when the reader goes away.

use std::io::Read;
use std::process::{Command, Stdio};

use vmpipe_common::Settings;
use vmpipe_common::settings::SecretUrl;
use vmpipe_tests::*;

/// `worker ARGS` with `settings`, as a script runs it (pipes, not a terminal).
pub(crate) fn worker(settings: &Settings, args: &[&str]) -> Command {
    let mut command = Command::new(binary("worker"));
    for (name, _) in std::env::vars().filter(|(n, _)| n.starts_with("VMPIPE_")) {
        command.env_remove(name);
    }
    command
        .envs(settings_env(settings))
        .env("RUST_LOG", "info")
        .args(args)
        .stdin(Stdio::null());
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_report_is_alone_on_stdout_and_logs_have_no_colours() {
    let database = TestDatabase::new();
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings {
        storage_dir: dir.path().to_path_buf(),
        database_url: SecretUrl(database.url.clone()),
        amqp_url: SecretUrl(amqp_url()),
        ..Settings::default()
    };
    let output = worker(&settings, &["migrate"])
        .output()
        .expect("worker runs");
    assert!(output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("database migrated"),
        "logs on stderr: {output:?}"
    );
    assert!(
        !stderr.contains('\u{1b}'),
        "no terminal colours in a pipe: {stderr:?}"
    );
    assert!(
        output.stdout.is_empty(),
        "nothing but reports on stdout: {output:?}"
    );
    let output = worker(&settings, &["reconcile", "--dry-run"])
        .output()
        .expect("worker runs");
    assert!(output.status.success(), "{output:?}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("stdout is the JSON report ({e}): {output:?}"));
    assert_eq!(report["files"], 0);
    database.drop().await;
}

#[test]
fn probe_into_a_closed_pipe_ends_quietly() {
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../worker/fixtures/audio/mp3_cbr32_16k.mp3"
    );
    let files = vec![fixture; 5000];
    let mut child = Command::new(binary("worker"))
        .arg("probe")
        .args(&files)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("worker runs");
    let mut first = [0u8; 64];
    child
        .stdout
        .take()
        .unwrap()
        .read_exact(&mut first)
        .expect("a first line");
    // The reader (`head -1`, say) is gone now.
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status = child.wait().unwrap();
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_ne!(status.code(), Some(101), "no panic: {stderr}");
}

/// A wrong RabbitMQ password is not an outage: ingest and the worker say so in `/readyz` (and
/// their logs), rather than "unreachable" over a silently growing journal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_rabbitmq_password_is_called_what_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let url = amqp_url().replacen("guest:guest@", "guest:not-the-password@", 1);
    assert_ne!(url, amqp_url(), "the test broker's URL has guest:guest");
    let settings = Settings {
        storage_dir: dir.path().to_path_buf(),
        amqp_url: SecretUrl(url),
        queue: format!("vmpipe.test.{}", hex32()),
        ..Settings::default()
    };
    let ingest = Service::spawn("ingest", &settings).await;
    let said = readiness_saying(&ingest, "refused the credentials").await;
    assert!(said.contains("refused the credentials"), "ingest: {said}");
    ingest.sigkill().await;

    let database = TestDatabase::new();
    let worker_settings = Settings {
        database_url: SecretUrl(database.url.clone()),
        ..settings
    };
    let worker = Service::spawn("worker", &worker_settings).await;
    let said = readiness_saying(&worker, "refused the credentials").await;
    assert!(said.contains("refused the credentials"), "worker: {said}");
    worker.sigkill().await;
    database.drop().await;
}

/// The `/readyz` body once it says `what` (or the last one, after 10 s).
async fn readiness_saying(service: &Service, what: &str) -> String {
    let mut said = String::new();
    for _ in 0..100 {
        if let Some((_, body)) = service.get("/readyz").await {
            said = body;
            if said.contains(what) {
                break;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    said
}
