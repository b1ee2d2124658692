//! The real `ingest` and `worker` binaries as child processes, which a test can SIGKILL,
//! SIGTERM or SIGINT, and a bare HTTP GET for their health port.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use vmpipe_common::Settings;

/// A built binary of the workspace (`scripts/test.sh` builds them before the tests).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/e2e-… -> target/<profile>/<name>
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir")
        .join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (cargo build --workspace --bins)",
        path.display()
    );
    path
}

/// A free loopback port (bound, then released for a child to take).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A real `ingest` or `worker` process.
pub struct Service {
    pub child: tokio::process::Child,
    /// Where it answers `/healthz` and `/readyz`.
    pub health_port: u16,
}

impl Service {
    /// Starts `binary` with `settings` as VMPIPE_* variables and waits until it is alive.
    pub async fn spawn(binary_name: &str, settings: &Settings) -> Self {
        Self::spawn_logging(binary_name, settings, None).await
    }

    /// Like [`Service::spawn`], with JSON logs at info level written to `log`.
    pub async fn spawn_logging(
        binary_name: &str,
        settings: &Settings,
        log: Option<&std::path::Path>,
    ) -> Self {
        Self::spawn_with_logs(binary_name, settings, log, Some("info,lapin=off")).await
    }

    /// Like [`Service::spawn_logging`], with more variables (`VMPIPE_CONFIG`, say).
    pub async fn spawn_with_env(
        binary_name: &str,
        settings: &Settings,
        env: &[(&str, String)],
        log: Option<&std::path::Path>,
    ) -> Self {
        Self::start(binary_name, settings, env, log, Some("info,lapin=off")).await
    }

    /// Like [`Service::spawn_with_env`], with the JSON log at `filter` (`debug`, say).
    pub async fn spawn_with_env_filtered(
        binary_name: &str,
        settings: &Settings,
        env: &[(&str, String)],
        log: &std::path::Path,
        filter: &str,
    ) -> Self {
        Self::start(binary_name, settings, env, Some(log), Some(filter)).await
    }

    /// Like [`Service::spawn_logging`], with `RUST_LOG` set to `filter`, or not set at all
    /// (`None`: the binary's own default filter, as an operator runs it).
    pub async fn spawn_with_logs(
        binary_name: &str,
        settings: &Settings,
        log: Option<&std::path::Path>,
        filter: Option<&str>,
    ) -> Self {
        Self::start(binary_name, settings, &[], log, filter).await
    }

    async fn start(
        binary_name: &str,
        settings: &Settings,
        env: &[(&str, String)],
        log: Option<&std::path::Path>,
        filter: Option<&str>,
    ) -> Self {
        let health_port = free_port();
        let mut settings = settings.clone();
        if binary_name == "ingest" {
            settings.listen = format!("127.0.0.1:{health_port}");
        } else if binary_name == "api" {
            settings.api_listen = format!("127.0.0.1:{health_port}");
        } else {
            settings.worker_listen = format!("127.0.0.1:{health_port}");
        }
        let mut command = tokio::process::Command::new(binary(binary_name));
        for (name, _) in std::env::vars().filter(|(n, _)| n.starts_with("VMPIPE_")) {
            command.env_remove(name);
        }
        command
            .envs(settings_env(&settings))
            .env(
                "RUST_LOG",
                std::env::var("TEST_LOG").unwrap_or_else(|_| "warn,lapin=off".into()),
            )
            .envs(env.iter().map(|(name, value)| (name, value)))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        if let Some(log) = log {
            let file = std::fs::File::create(log).expect("log file");
            command.env("VMPIPE_LOG_FORMAT", "json").stdout(file);
            match filter {
                Some(filter) => command.env("RUST_LOG", filter),
                None => command.env_remove("RUST_LOG"),
            };
        }
        let child = command.spawn().expect("spawn service");
        let service = Self { child, health_port };
        service.wait_alive(Duration::from_secs(30)).await;
        service
    }

    async fn wait_alive(&self, timeout: Duration) {
        self.wait_for("/healthz", timeout).await;
    }

    /// Waits until `/readyz` answers 200 (a worker: its database migrated, its hooks started).
    pub async fn wait_ready(&self, timeout: Duration) {
        self.wait_for("/readyz", timeout).await;
    }

    async fn wait_for(&self, path: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self
                .get(path)
                .await
                .is_some_and(|(status, _)| status == 200)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "service on port {} did not answer 200 on {path} within {timeout:?}",
            self.health_port
        );
    }

    /// `GET path` on the health port: status and body.
    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.health_port, path).await
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// Lowers the process's limit of open files to `n` (with util-linux's `prlimit`).
    pub fn limit_open_files(&self, n: u32) {
        let status = std::process::Command::new("prlimit")
            .args([format!("--pid={}", self.pid()), format!("--nofile={n}:{n}")])
            .status()
            .expect("prlimit (util-linux)");
        assert!(status.success(), "prlimit");
    }

    pub async fn sigkill(mut self) {
        self.child.start_kill().expect("SIGKILL");
        let _ = self.child.wait().await;
    }

    /// Sends SIGTERM and waits for the exit status.
    pub async fn sigterm(self, timeout: Duration) -> std::process::ExitStatus {
        self.signal("TERM", timeout).await
    }

    /// Sends the signal `name` (`TERM`, `INT`...) and waits for the exit status.
    pub async fn signal(mut self, name: &str, timeout: Duration) -> std::process::ExitStatus {
        let status = std::process::Command::new("kill")
            .args([format!("-{name}"), self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        tokio::time::timeout(timeout, self.child.wait())
            .await
            .expect("exits in time")
            .expect("exit status")
    }
}

pub async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

/// Whether process `pid` runs (exists, and is not a zombie: dead, not yet reaped).
pub fn process_running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .unwrap_or_default()
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

/// Runs a `worker` with `settings` (and `extra` variables) that is expected to stop at start-up,
/// and returns its output: its exit status and what it printed (`RUST_LOG=warn`).
pub async fn worker_start_output(
    settings: &Settings,
    extra: &[(&str, String)],
    timeout: Duration,
) -> std::process::Output {
    tokio::time::timeout(
        timeout,
        tokio::process::Command::new(binary("worker"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap())
            .envs(settings_env(settings))
            .envs(extra.iter().map(|(k, v)| (*k, v.as_str())))
            .env("RUST_LOG", "warn,lapin=off")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the worker stops at once")
    .expect("the worker runs")
}

/// Settings as the environment variables the binaries read.
pub fn settings_env(s: &Settings) -> Vec<(String, String)> {
    [
        ("VMPIPE_LISTEN", s.listen.clone()),
        ("VMPIPE_PATH_PREFIX", s.path_prefix.clone()),
        ("VMPIPE_STORAGE_DIR", s.storage_dir.display().to_string()),
        ("VMPIPE_AMQP_URL", s.amqp_url.expose().to_owned()),
        ("VMPIPE_QUEUE", s.queue.clone()),
        ("VMPIPE_DATABASE_URL", s.database_url.expose().to_owned()),
        ("VMPIPE_MAX_BODY", s.max_body.0.to_string()),
        (
            "VMPIPE_PUBLISH_TIMEOUT_MS",
            s.publish_timeout_ms.to_string(),
        ),
        (
            "VMPIPE_PUBLISH_DEGRADED_AFTER",
            s.publish_degraded_after.to_string(),
        ),
        ("VMPIPE_PUBLISH_LINGER_MS", s.publish_linger_ms.to_string()),
        (
            "VMPIPE_WORKER_CONCURRENCY",
            s.worker_concurrency.to_string(),
        ),
        ("VMPIPE_WORKER_LISTEN", s.worker_listen.clone()),
        ("VMPIPE_API_LISTEN", s.api_listen.clone()),
        (
            "VMPIPE_API_MAX_CONNECTIONS",
            s.api_max_connections.to_string(),
        ),
        (
            "VMPIPE_API_STATEMENT_TIMEOUT_MS",
            s.api_statement_timeout_ms.to_string(),
        ),
        (
            "VMPIPE_API_PUBLIC_URL",
            s.api_public_url.clone().unwrap_or_default(),
        ),
        (
            "VMPIPE_EVENT_RETENTION_HOURS",
            s.event_retention_hours.to_string(),
        ),
        ("VMPIPE_MAX_DELIVERIES", s.max_deliveries.to_string()),
        ("VMPIPE_MAX_UPLOADS", s.max_uploads.to_string()),
        ("VMPIPE_BODY_TIMEOUT_SECS", s.body_timeout_secs.to_string()),
        (
            "VMPIPE_UPLOAD_DEADLINE_SECS",
            s.upload_deadline_secs.to_string(),
        ),
        ("VMPIPE_MAX_DOCUMENT", s.max_document.0.to_string()),
        ("VMPIPE_DRAIN_SECS", s.drain_secs.to_string()),
        ("VMPIPE_BASE64", format!("{:?}", s.base64).to_lowercase()),
        (
            "VMPIPE_TRANSCRIBER",
            format!("{:?}", s.transcriber).to_lowercase(),
        ),
        ("VMPIPE_HOOK_CONCURRENCY", s.hook_concurrency.to_string()),
        ("VMPIPE_WHISPER_MODEL", s.whisper_model.clone()),
        ("VMPIPE_WHISPER_LANGUAGE", s.whisper_language.clone()),
        (
            "VMPIPE_WHISPER_DEVICE",
            s.whisper_device.as_str().to_owned(),
        ),
        (
            "VMPIPE_WHISPER_COMPUTE_TYPE",
            s.whisper_compute_type.clone(),
        ),
        (
            "VMPIPE_WHISPER_CONCURRENCY",
            s.whisper_concurrency.to_string(),
        ),
        ("VMPIPE_WHISPER_THREADS", s.whisper_threads.to_string()),
        (
            "VMPIPE_WHISPER_WINDOW_SECS",
            s.whisper_window_secs.to_string(),
        ),
        ("VMPIPE_PYTHON", s.python.clone()),
        ("VMPIPE_PROBE_TIMEOUT_MS", s.probe_timeout_ms.to_string()),
        ("VMPIPE_MAX_AUDIO_SECS", s.max_audio_secs.to_string()),
        ("VMPIPE_STORAGE", s.storage.as_str().to_owned()),
        ("VMPIPE_S3_PREFIX", s.s3_prefix.clone()),
        ("VMPIPE_S3_REGION", s.s3_region.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .chain(
        [
            (
                "VMPIPE_ACCESS_TOKEN",
                s.access_token.as_ref().map(|t| t.expose().to_owned()),
            ),
            (
                "VMPIPE_BASIC_AUTH",
                s.basic_auth.as_ref().map(|t| t.expose().to_owned()),
            ),
            (
                "VMPIPE_TLS_CERT",
                s.tls_cert.as_ref().map(|p| p.display().to_string()),
            ),
            (
                "VMPIPE_TLS_KEY",
                s.tls_key.as_ref().map(|p| p.display().to_string()),
            ),
            ("VMPIPE_METRICS_LISTEN", s.metrics_listen.clone()),
            ("VMPIPE_S3_BUCKET", s.s3_bucket.clone()),
            ("VMPIPE_S3_ENDPOINT", s.s3_endpoint.clone()),
            ("VMPIPE_S3_ACCESS_KEY_ID", s.s3_access_key_id.clone()),
            (
                "VMPIPE_S3_SECRET_ACCESS_KEY",
                s.s3_secret_access_key
                    .as_ref()
                    .map(|t| t.expose().to_owned()),
            ),
            // Unset stays unset: the default list, and the start-up warning that goes with it.
            (
                "VMPIPE_ALLOW_NETWORKS",
                s.allow_networks
                    .is_explicit()
                    .then(|| s.allow_networks.to_string()),
            ),
        ]
        .into_iter()
        .filter_map(|(k, v)| Some((k.to_owned(), v?))),
    )
    .collect()
}
