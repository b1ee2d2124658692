//! Typed settings shared by `ingest` and `worker`, layered: built-in defaults, then an optional
//! TOML file, then `VMPIPE_*` environment variables (highest).
//!
//! Every setting is a flat key so that the TOML key and the environment name match one to one:
//! `max_body = "64MiB"` in the file is `VMPIPE_MAX_BODY=64MiB` in the environment.
//!
//! An empty `VMPIPE_*` variable is the same as an unset one (compose's `${VMPIPE_X:-}` passes
//! an empty string for a setting the operator did not give).

mod hooks;
mod network;
mod notify;
mod secret;
mod storage;
#[cfg(test)]
mod tests;
mod values;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use hooks::{HookAudio, HookKind, HookSettings, Transcriber, WHISPER_HOOK, WhisperDevice};
pub use network::{DEFAULT_NETWORKS, Networks};
pub use notify::{DEFAULT_EVENTS_EXCHANGE, EVENT_TYPES, NotifyKind, NotifySettings, SmtpTls};
pub use secret::{Secret, SecretUrl, redact_url};
pub use storage::StorageKind;
pub use values::{Base64Mode, ByteSize, LogFormat};

/// The environment variable naming the settings file (not itself a setting).
pub const CONFIG_FILE_ENV: &str = "VMPIPE_CONFIG";
const ENV_PREFIX: &str = "VMPIPE_";
/// Settings only a TOML file can give (tables, not one value).
const FILE_ONLY: &[&str] = &["hooks", "notify"];
/// The most `max_audio_secs` can be: the seconds of 16 kHz 16-bit mono a WAV file holds.
pub const MAX_AUDIO_SECS: u64 = (u32::MAX as u64 - 44) / 32_000;
/// Longest drain of a stopping ingest: a supervisor waits for the stop (compose's
/// `stop_grace_period`, systemd's `TimeoutStopSec`) and kills what takes longer.
const MAX_DRAIN_SECS: u64 = 300;
/// `VMPIPE_PUBLISH_LINGER_MS` at most: a job's way to the queue is not held up longer.
const MAX_PUBLISH_LINGER_MS: u64 = 1000;
/// Bounds of `max_document`: a KAZOO document is a few KiB, and ingest holds one per upload.
const MIN_DOCUMENT: u64 = 1024;
const MAX_DOCUMENT: u64 = 16 * 1024 * 1024;
/// The Whisper model when none is set: the one the Docker image carries.
pub const DEFAULT_WHISPER_MODEL: &str = "base";

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// `VMPIPE_LISTEN`: address ingest listens on.
    pub listen: String,
    /// `VMPIPE_PATH_PREFIX`: URL path under which KAZOO stores and fetches files.
    pub path_prefix: String,
    /// `VMPIPE_STORAGE_DIR`: root of the voicemail files, the temporary files and the job journal.
    pub storage_dir: PathBuf,
    /// `VMPIPE_STORAGE`: `fs` (files below `VMPIPE_STORAGE_DIR`) or `s3` (a bucket; the journal
    /// and temporary copies stay in `VMPIPE_STORAGE_DIR`).
    pub storage: StorageKind,
    /// `VMPIPE_S3_BUCKET`: the bucket (`VMPIPE_STORAGE=s3`).
    pub s3_bucket: Option<String>,
    /// `VMPIPE_S3_PREFIX`: prepended to every object key (`vmpipe/`, say); empty by default.
    pub s3_prefix: String,
    /// `VMPIPE_S3_ENDPOINT`: a self-hosted store's URL (`http://garage:3900`), addressed
    /// path-style; unset: AWS S3 itself.
    pub s3_endpoint: Option<String>,
    /// `VMPIPE_S3_REGION`: the bucket's region (Garage's `s3_region`, `garage` by default).
    pub s3_region: String,
    /// `VMPIPE_S3_ACCESS_KEY_ID`: the access key; unset: the `AWS_*` environment.
    pub s3_access_key_id: Option<String>,
    /// `VMPIPE_S3_SECRET_ACCESS_KEY`: its secret (never logged).
    pub s3_secret_access_key: Option<Secret>,
    /// `VMPIPE_AMQP_URL`: RabbitMQ.
    pub amqp_url: SecretUrl,
    /// `VMPIPE_QUEUE`: durable job queue; dead letters go to `{queue}.dead`.
    pub queue: String,
    /// `VMPIPE_DATABASE_URL`: PostgreSQL (worker).
    pub database_url: SecretUrl,
    /// `VMPIPE_MAX_BODY`: largest accepted request body (413 above it).
    pub max_body: ByteSize,
    /// `VMPIPE_BASE64`: whether the file part of a multipart upload is base64.
    pub base64: Base64Mode,
    /// `VMPIPE_PUBLISH_TIMEOUT_MS`: how soon after its upload RabbitMQ should confirm a job;
    /// one confirmed later counts as waiting for the broker (uploads never wait for it).
    pub publish_timeout_ms: u64,
    /// `VMPIPE_PUBLISH_DEGRADED_AFTER`: confirm timeouts in a row after which ingest reports
    /// RabbitMQ as not confirming (a hung broker), until a confirm comes in time again.
    pub publish_degraded_after: u32,
    /// `VMPIPE_PUBLISH_LINGER_MS`: how long the journal's jobs gather before they are sent to
    /// RabbitMQ together (at most one group per this long): the broker's CPU per job falls with
    /// the group's size. 0 sends each as soon as it is journaled.
    pub publish_linger_ms: u64,
    /// `VMPIPE_LOG_FORMAT`: `text` (default) or `json`.
    pub log_format: LogFormat,
    /// `VMPIPE_WORKER_CONCURRENCY`: jobs a worker processes at once (its RabbitMQ prefetch).
    pub worker_concurrency: u16,
    /// `VMPIPE_WORKER_LISTEN`: the worker's health and metrics address.
    pub worker_listen: String,
    /// `VMPIPE_MAX_DELIVERIES`: deliveries of a failing job before it is dead-lettered.
    pub max_deliveries: u16,
    /// `VMPIPE_ALLOW_NETWORKS`: comma-separated client networks (CIDR) allowed to use ingest;
    /// unset or empty, loopback and the private networks ([`DEFAULT_NETWORKS`]).
    pub allow_networks: Networks,
    /// `VMPIPE_ACCESS_TOKEN`: secret required as the first path segment or `token=` parameter.
    pub access_token: Option<Secret>,
    /// `VMPIPE_BASIC_AUTH`: `user:password` required as HTTP Basic auth.
    pub basic_auth: Option<Secret>,
    /// `VMPIPE_TLS_CERT` and `VMPIPE_TLS_KEY`: PEM files; HTTPS instead of HTTP when both set.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// `VMPIPE_MAX_UPLOADS`: uploads in progress at once; more wait for a 503 and retry.
    pub max_uploads: usize,
    /// `VMPIPE_BODY_TIMEOUT_SECS`: longest silence while a request body arrives.
    pub body_timeout_secs: u64,
    /// `VMPIPE_UPLOAD_DEADLINE_SECS`: longest time a whole request body may take to arrive,
    /// however steadily it trickles (then 408).
    pub upload_deadline_secs: u64,
    /// `VMPIPE_DRAIN_SECS`: on SIGTERM or SIGINT, how long ingest keeps serving (with
    /// `/readyz` at 503 and `Connection: close` on every answer) before it stops accepting and
    /// closes idle connections. 0: no drain.
    pub drain_secs: u64,
    /// `VMPIPE_MAX_DOCUMENT`: largest KAZOO document (the JSON part of a multipart upload) that is
    /// kept; a larger one is dropped, and the file still stored.
    pub max_document: ByteSize,
    /// `VMPIPE_METRICS_LISTEN`: a separate address for ingest's `/metrics`, without access
    /// checks. Unset: `/metrics` is on `VMPIPE_LISTEN`, behind the same checks as uploads.
    pub metrics_listen: Option<String>,
    /// `VMPIPE_TRANSCRIBER`: built-in transcriber run on every new voicemail: `none` or
    /// `whisper`.
    pub transcriber: Transcriber,
    /// `VMPIPE_WHISPER_MODEL`: a directory holding a CTranslate2 Whisper model, or the name of
    /// a model installed with the engine (the Docker image's are fetched when it is built).
    /// Never downloaded at run time.
    pub whisper_model: String,
    /// `VMPIPE_WHISPER_LANGUAGE`: `auto` (detected per voicemail) or a language code (`en`, `de`).
    pub whisper_language: String,
    /// `VMPIPE_WHISPER_DEVICE`: `cpu` or `cuda`.
    pub whisper_device: WhisperDevice,
    /// `VMPIPE_WHISPER_COMPUTE_TYPE`: CTranslate2's compute type; `default` is `int8` on the CPU
    /// and `float16` on CUDA.
    pub whisper_compute_type: String,
    /// `VMPIPE_WHISPER_CONCURRENCY`: voicemails the engine transcribes at once (the model is
    /// loaded once and shared).
    pub whisper_concurrency: u16,
    /// `VMPIPE_WHISPER_THREADS`: CPU threads per transcription; 0 lets CTranslate2 choose.
    pub whisper_threads: u16,
    /// `VMPIPE_WHISPER_WINDOW_SECS`: the longest piece of a voicemail the engine holds in memory
    /// at once; a longer voicemail is transcribed piece by piece, cut at quiet moments.
    pub whisper_window_secs: u32,
    /// `VMPIPE_PYTHON`: the Python interpreter that has the Whisper engine installed (a venv's).
    pub python: String,
    /// `VMPIPE_HOOK_CONCURRENCY`: runs of each hook a worker performs at once (a hook's own
    /// `concurrency` overrides it); each hook has its own, so hooks never queue behind each other.
    pub hook_concurrency: u16,
    /// `VMPIPE_WORKER_ID`: this worker's name in the hook runs it leases
    /// (`transcriptions.leased_by`), stable across its restarts, so that a restarted worker
    /// hands back the runs it had in progress. Unset: the host name.
    pub worker_id: Option<String>,
    /// `VMPIPE_PROBE_TIMEOUT_MS`: longest the measuring of one voicemail may take; a probe
    /// that takes longer gives up, and the row is written with a `probe_error`.
    pub probe_timeout_ms: u64,
    /// `VMPIPE_MAX_AUDIO_SECS`: longest audio decoded for a `wav16k` hook; a voicemail that
    /// decodes to more fails the run (without retries).
    pub max_audio_secs: u64,
    /// `VMPIPE_API_LISTEN`: address the `api` service (HTTP API and inbox page) listens on.
    pub api_listen: String,
    /// `VMPIPE_API_MAX_CONNECTIONS`: client connections the `api` service holds at once; more
    /// wait in the listen backlog.
    pub api_max_connections: usize,
    /// `VMPIPE_API_STATEMENT_TIMEOUT_MS`: longest a query of the `api` service may run (then 503).
    pub api_statement_timeout_ms: u64,
    /// `VMPIPE_API_PUBLIC_URL`: the `api` service's address as event receivers reach it
    /// (`https://voicemail.example.com`); set, every event carries its voicemail's
    /// `audio_url`.
    pub api_public_url: Option<String>,
    /// `VMPIPE_EVENT_RETENTION_HOURS`: how long an event stays in the outbox (`events`): it is
    /// deleted once it is this old and every sink has settled it (delivered, or failed for good).
    pub event_retention_hours: u64,
    /// Hooks run after a voicemail is indexed: `[[hooks]]` tables, in the settings file only.
    pub hooks: Vec<HookSettings>,
    /// Where events go: `[[notify]]` tables, in the settings file only.
    pub notify: Vec<NotifySettings>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8080".into(),
            path_prefix: "/".into(),
            storage_dir: PathBuf::from("./data"),
            storage: StorageKind::Fs,
            s3_bucket: None,
            s3_prefix: String::new(),
            s3_endpoint: None,
            s3_region: "us-east-1".into(),
            s3_access_key_id: None,
            s3_secret_access_key: None,
            amqp_url: SecretUrl("amqp://guest:guest@127.0.0.1:5672/%2f".into()),
            queue: "vmpipe.jobs".into(),
            database_url: SecretUrl("postgres://postgres@127.0.0.1:5432/vmpipe".into()),
            max_body: ByteSize(256 * 1024 * 1024),
            base64: Base64Mode::Auto,
            publish_timeout_ms: 2000,
            publish_degraded_after: 3,
            publish_linger_ms: 25,
            log_format: LogFormat::Text,
            worker_concurrency: 64,
            worker_listen: "127.0.0.1:9091".into(),
            max_deliveries: 5,
            allow_networks: Networks::default(),
            access_token: None,
            basic_auth: None,
            tls_cert: None,
            tls_key: None,
            max_uploads: 256,
            body_timeout_secs: 30,
            // The largest body (256 MiB by default) at about 1 Mbit/s takes 36 min.
            upload_deadline_secs: 2400,
            drain_secs: 5,
            max_document: ByteSize(64 * 1024),
            metrics_listen: None,
            transcriber: Transcriber::None,
            whisper_model: DEFAULT_WHISPER_MODEL.into(),
            whisper_language: "auto".into(),
            whisper_device: WhisperDevice::Cpu,
            whisper_compute_type: "default".into(),
            whisper_concurrency: 1,
            whisper_threads: 0,
            whisper_window_secs: 300,
            python: "python3".into(),
            hook_concurrency: 2,
            worker_id: None,
            probe_timeout_ms: 10_000,
            max_audio_secs: 4 * 3600,
            api_listen: "127.0.0.1:8081".into(),
            api_max_connections: 256,
            api_statement_timeout_ms: 10_000,
            api_public_url: None,
            event_retention_hours: 168,
            hooks: Vec::new(),
            notify: Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("settings file {path}: {source}")]
    File {
        path: PathBuf,
        source: config::ConfigError,
    },
    #[error("invalid settings: {0}")]
    Invalid(#[from] config::ConfigError),
}

impl Settings {
    /// Loads defaults, then `file` (or the file named by `VMPIPE_CONFIG`), then the environment.
    pub fn load(file: Option<&Path>) -> Result<Self, SettingsError> {
        let env: HashMap<String, String> = std::env::vars().collect();
        Self::load_from(file, &env)
    }

    /// Like [`Settings::load`] with an explicit environment (tests).
    pub fn load_from(
        file: Option<&Path>,
        env: &HashMap<String, String>,
    ) -> Result<Self, SettingsError> {
        let mut builder =
            config::Config::builder().add_source(config::Config::try_from(&Settings::default())?);
        let file = file.map(Path::to_path_buf).or_else(|| {
            env.get(CONFIG_FILE_ENV)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        });
        if let Some(path) = &file {
            let source = config::File::from(path.as_path()).format(config::FileFormat::Toml);
            // Read the file on its own first so that an error names it.
            config::Config::builder()
                .add_source(source.clone())
                .build()
                .map_err(|source| SettingsError::File {
                    path: path.clone(),
                    source,
                })?;
            builder = builder.add_source(source);
        }
        for (name, value) in env {
            if let Some(key) = name.strip_prefix(ENV_PREFIX)
                && name != CONFIG_FILE_ENV
                && !value.is_empty()
            {
                builder = builder.set_override(key.to_ascii_lowercase(), value.as_str())?;
            }
        }
        let settings: Settings = builder.build()?.try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), config::ConfigError> {
        if !self.path_prefix.starts_with('/') {
            return Err(config::ConfigError::Message(format!(
                "path_prefix must start with '/': {:?}",
                self.path_prefix
            )));
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(config::ConfigError::Message(
                "tls_cert and tls_key go together".into(),
            ));
        }
        if self.max_uploads == 0 {
            return Err(config::ConfigError::Message(
                "max_uploads must be at least 1".into(),
            ));
        }
        if self.publish_linger_ms > MAX_PUBLISH_LINGER_MS {
            return Err(config::ConfigError::Message(format!(
                "publish_linger_ms is at most {MAX_PUBLISH_LINGER_MS}"
            )));
        }
        if self.publish_degraded_after == 0 {
            return Err(config::ConfigError::Message(
                "publish_degraded_after must be at least 1".into(),
            ));
        }
        if self.max_deliveries == 0 {
            return Err(config::ConfigError::Message(
                "max_deliveries must be at least 1".into(),
            ));
        }
        if self.worker_concurrency == 0 {
            return Err(config::ConfigError::Message(
                "worker_concurrency must be at least 1".into(),
            ));
        }
        if self.queue.is_empty() || self.queue.len() > 200 {
            return Err(config::ConfigError::Message(
                "queue must be 1 to 200 characters".into(),
            ));
        }
        if self.upload_deadline_secs == 0 {
            return Err(config::ConfigError::Message(
                "upload_deadline_secs must be at least 1".into(),
            ));
        }
        if self.drain_secs > MAX_DRAIN_SECS {
            return Err(config::ConfigError::Message(format!(
                "drain_secs must be at most {MAX_DRAIN_SECS}"
            )));
        }
        if !(MIN_DOCUMENT..=MAX_DOCUMENT).contains(&self.max_document.0) {
            return Err(config::ConfigError::Message(format!(
                "max_document must be between {MIN_DOCUMENT} and {MAX_DOCUMENT} bytes"
            )));
        }
        if self.hook_concurrency == 0 {
            return Err(config::ConfigError::Message(
                "hook_concurrency must be at least 1".into(),
            ));
        }
        if let Some(id) = &self.worker_id
            && (id.trim().is_empty() || id.len() > 200 || id.chars().any(char::is_control))
        {
            return Err(config::ConfigError::Message(
                "worker_id must be 1 to 200 printable characters".into(),
            ));
        }
        if self.probe_timeout_ms == 0 {
            return Err(config::ConfigError::Message(
                "probe_timeout_ms must be at least 1".into(),
            ));
        }
        if !(1..=MAX_AUDIO_SECS).contains(&self.max_audio_secs) {
            return Err(config::ConfigError::Message(format!(
                "max_audio_secs must be 1 to {MAX_AUDIO_SECS} (a 16 kHz WAV holds at most 4 GiB)"
            )));
        }
        if self.api_max_connections == 0 {
            return Err(config::ConfigError::Message(
                "api_max_connections must be at least 1".into(),
            ));
        }
        if self.api_statement_timeout_ms == 0 {
            return Err(config::ConfigError::Message(
                "api_statement_timeout_ms must be at least 1".into(),
            ));
        }
        if let Some(url) = self.api_public_url()
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(config::ConfigError::Message(format!(
                "api_public_url must be http(s)://...: {url:?}"
            )));
        }
        if !(1..=87_600).contains(&self.event_retention_hours) {
            return Err(config::ConfigError::Message(
                "event_retention_hours must be 1 to 87600 (ten years)".into(),
            ));
        }
        let mut sinks: Vec<&str> = Vec::new();
        for sink in &self.notify {
            sink.validate().map_err(|e| {
                config::ConfigError::Message(format!("notify sink {:?}: {e}", sink.name))
            })?;
            if sinks.contains(&sink.name.as_str()) {
                return Err(config::ConfigError::Message(format!(
                    "two notify sinks are named {:?}",
                    sink.name
                )));
            }
            sinks.push(&sink.name);
        }
        storage::validate(self).map_err(config::ConfigError::Message)?;
        hooks::validate_whisper(self).map_err(config::ConfigError::Message)?;
        let mut names: Vec<&str> = Vec::new();
        if self.transcriber == Transcriber::Whisper {
            names.push(WHISPER_HOOK);
        }
        for hook in &self.hooks {
            hook.validate()
                .map_err(|e| config::ConfigError::Message(format!("hook {:?}: {e}", hook.name)))?;
            if names.contains(&hook.name.as_str()) {
                return Err(config::ConfigError::Message(format!(
                    "two hooks are named {:?} (the built-in transcriber takes {WHISPER_HOOK:?})",
                    hook.name
                )));
            }
            names.push(&hook.name);
        }
        Ok(())
    }

    /// Every setting's environment variable (`VMPIPE_LISTEN`, …), from the settings themselves,
    /// and `VMPIPE_CONFIG`; not the settings that only a file can give (`hooks`).
    pub fn variable_names() -> Vec<String> {
        let defaults = serde_json::to_value(Settings::default()).expect("settings serialize");
        let mut names: Vec<String> = defaults
            .as_object()
            .expect("settings are a table")
            .keys()
            .filter(|key| !FILE_ONLY.contains(&key.as_str()))
            .map(|key| format!("{ENV_PREFIX}{}", key.to_ascii_uppercase()))
            .chain([CONFIG_FILE_ENV.to_owned()])
            .collect();
        names.sort();
        names
    }

    /// The prefix without trailing slashes (`/` becomes empty), ready to strip from paths.
    pub fn normalized_prefix(&self) -> &str {
        self.path_prefix.trim_end_matches('/')
    }

    pub fn publish_linger(&self) -> Duration {
        Duration::from_millis(self.publish_linger_ms)
    }

    pub fn publish_timeout(&self) -> Duration {
        Duration::from_millis(self.publish_timeout_ms)
    }

    /// `VMPIPE_DRAIN_SECS` as a duration.
    pub fn drain_period(&self) -> Duration {
        Duration::from_secs(self.drain_secs)
    }

    pub fn probe_timeout(&self) -> Duration {
        Duration::from_millis(self.probe_timeout_ms)
    }

    /// `VMPIPE_API_PUBLIC_URL` without its trailing slashes, when set (an empty value is unset).
    pub fn api_public_url(&self) -> Option<&str> {
        self.api_public_url
            .as_deref()
            .map(|url| url.trim().trim_end_matches('/'))
            .filter(|url| !url.is_empty())
    }

    /// `VMPIPE_EVENT_RETENTION_HOURS` as a duration.
    pub fn event_retention(&self) -> Duration {
        Duration::from_secs(self.event_retention_hours * 3600)
    }

    /// `VMPIPE_METRICS_LISTEN`, when set to an address (an empty value is unset).
    pub fn metrics_listen(&self) -> Option<&str> {
        self.metrics_listen
            .as_deref()
            .filter(|a| !a.trim().is_empty())
    }
}
