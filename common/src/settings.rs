//! Typed settings shared by `ingest` and `worker`, layered: built-in defaults, then an optional
//! TOML file, then `VMPIPE_*` environment variables (highest).
//!
//! Every setting is a flat key so that the TOML key and the environment name match one to one:
//! `max_body = "64MiB"` in the file is `VMPIPE_MAX_BODY=64MiB` in the environment.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The environment variable naming the settings file (not itself a setting).
pub const CONFIG_FILE_ENV: &str = "VMPIPE_CONFIG";
const ENV_PREFIX: &str = "VMPIPE_";

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// `VMPIPE_LISTEN`: address ingest listens on.
    pub listen: String,
    /// `VMPIPE_PATH_PREFIX`: URL path under which KAZOO stores and fetches files.
    pub path_prefix: String,
    /// `VMPIPE_STORAGE_DIR`: root of the voicemail files, the temporary files and the job journal.
    pub storage_dir: PathBuf,
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
    /// `VMPIPE_PUBLISH_TIMEOUT_MS`: how long an upload waits for RabbitMQ's confirm before the
    /// job is written to the local journal instead.
    pub publish_timeout_ms: u64,
    /// `VMPIPE_LOG_FORMAT`: `text` (default) or `json`.
    pub log_format: LogFormat,
    /// `VMPIPE_WORKER_CONCURRENCY`: jobs a worker processes at once (its RabbitMQ prefetch).
    pub worker_concurrency: u16,
    /// `VMPIPE_WORKER_LISTEN`: the worker's health and metrics address.
    pub worker_listen: String,
    /// `VMPIPE_MAX_DELIVERIES`: deliveries of a failing job before it is dead-lettered.
    pub max_deliveries: u16,
    /// `VMPIPE_ALLOW_NETWORKS`: comma-separated client networks (CIDR) allowed to use ingest;
    /// empty allows all.
    pub allow_networks: String,
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
    /// `VMPIPE_TRANSCRIBER`: built-in transcriber run on every new voicemail: `none` or
    /// `pocketsphinx`.
    pub transcriber: Transcriber,
    /// `VMPIPE_HOOK_CONCURRENCY`: hook runs a worker performs at once.
    pub hook_concurrency: u16,
    /// Hooks run after a voicemail is indexed: `[[hooks]]` tables, in the settings file only.
    pub hooks: Vec<HookSettings>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8080".into(),
            path_prefix: "/".into(),
            storage_dir: PathBuf::from("./data"),
            amqp_url: SecretUrl("amqp://guest:guest@127.0.0.1:5672/%2f".into()),
            queue: "vmpipe.jobs".into(),
            database_url: SecretUrl("postgres://postgres@127.0.0.1:5432/vmpipe".into()),
            max_body: ByteSize(256 * 1024 * 1024),
            base64: Base64Mode::Auto,
            publish_timeout_ms: 2000,
            log_format: LogFormat::Text,
            worker_concurrency: 64,
            worker_listen: "0.0.0.0:9091".into(),
            max_deliveries: 5,
            allow_networks: String::new(),
            access_token: None,
            basic_auth: None,
            tls_cert: None,
            tls_key: None,
            max_uploads: 256,
            body_timeout_secs: 30,
            transcriber: Transcriber::None,
            hook_concurrency: 2,
            hooks: Vec::new(),
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
        let file = file
            .map(Path::to_path_buf)
            .or_else(|| env.get(CONFIG_FILE_ENV).map(PathBuf::from));
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
        if self.hook_concurrency == 0 {
            return Err(config::ConfigError::Message(
                "hook_concurrency must be at least 1".into(),
            ));
        }
        let mut names: Vec<&str> = Vec::new();
        if self.transcriber == Transcriber::Pocketsphinx {
            names.push(POCKETSPHINX_HOOK);
        }
        for hook in &self.hooks {
            hook.validate()
                .map_err(|e| config::ConfigError::Message(format!("hook {:?}: {e}", hook.name)))?;
            if names.contains(&hook.name.as_str()) {
                return Err(config::ConfigError::Message(format!(
                    "two hooks are named {:?} (the built-in transcriber takes {POCKETSPHINX_HOOK:?})",
                    hook.name
                )));
            }
            names.push(&hook.name);
        }
        Ok(())
    }

    /// The prefix without trailing slashes (`/` becomes empty), ready to strip from paths.
    pub fn normalized_prefix(&self) -> &str {
        self.path_prefix.trim_end_matches('/')
    }

    pub fn publish_timeout(&self) -> Duration {
        Duration::from_millis(self.publish_timeout_ms)
    }

    /// The queue that holds jobs which can never succeed.
    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dead", self.queue)
    }
}

/// A secret (token, password): never shown in logs or `Debug` output.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

/// A URL that may carry a password: shown with the password masked.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretUrl(pub String);

impl SecretUrl {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", redact_url(&self.0))
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_url(&self.0))
    }
}

/// `scheme://user:password@host/...` becomes `scheme://user:***@host/...`.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let authority_end = url[scheme_end..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| scheme_end + i);
    let authority = &url[scheme_end..authority_end];
    match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!(
                "{}{}:***{}",
                &url[..scheme_end],
                user,
                &url[scheme_end + at..]
            )
        }
        None => url.to_owned(),
    }
}

/// A byte count written as a plain number or with a unit: `1048576`, `512KiB`, `64MiB`, `1GiB`
/// (`K`, `M`, `G`, `KB`, `MB`, `GB` are accepted as the same binary units).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (number, unit) = s.split_at(digits_end);
        let number: u64 = number
            .parse()
            .map_err(|_| format!("not a byte size: {s:?}"))?;
        let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" | "kib" => 1 << 10,
            "m" | "mb" | "mib" => 1 << 20,
            "g" | "gb" | "gib" => 1 << 30,
            other => return Err(format!("unknown byte-size unit {other:?} in {s:?}")),
        };
        number
            .checked_mul(multiplier)
            .map(ByteSize)
            .ok_or_else(|| format!("byte size too large: {s:?}"))
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Number(n) => Ok(ByteSize(n)),
            Raw::Text(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// How the file part of a multipart upload is read. KAZOO's `base64_encode_data` adds no header
/// saying the part is base64, so by default it is recognised by its content.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Base64Mode {
    /// Decode the part when it is entirely valid base64, store it as sent otherwise.
    Auto,
    /// The part must be base64 (400 otherwise).
    Always,
    /// Store the part as sent.
    Never,
}

/// The hook name the built-in PocketSphinx transcriber records its results under.
pub const POCKETSPHINX_HOOK: &str = "pocketsphinx";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transcriber {
    None,
    /// PocketSphinx (the `pocketsphinx` Python package and its English model), run by `python3`.
    Pocketsphinx,
}

/// One `[[hooks]]` table of the settings file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HookSettings {
    /// Recorded in `transcriptions.hook`; letters, digits, `-`, `_` and `.`.
    pub name: String,
    pub kind: HookKind,
    /// `command`: the program and its arguments (no shell). `{audio}` and `{id}` are replaced
    /// by the audio file's path and the voicemail's id.
    #[serde(default)]
    pub command: Vec<String>,
    /// `webhook`: where the voicemail is POSTed.
    #[serde(default)]
    pub url: Option<SecretUrl>,
    /// `webhook`: extra request headers (an `Authorization`, say).
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, Secret>,
    /// Which audio the hook gets: the stored file, or a 16 kHz mono 16-bit WAV made from it.
    #[serde(default)]
    pub audio: HookAudio,
    /// A run taking longer is stopped (the program killed) and counted as a failed attempt.
    #[serde(default = "HookSettings::default_timeout_secs")]
    pub timeout_secs: u64,
    /// Attempts before the transcription is marked `failed`.
    #[serde(default = "HookSettings::default_max_attempts")]
    pub max_attempts: u32,
    /// Wait before the first retry; doubled after each failed attempt, at most an hour.
    #[serde(default = "HookSettings::default_retry_delay_ms")]
    pub retry_delay_ms: u64,
}

impl HookSettings {
    fn default_timeout_secs() -> u64 {
        300
    }

    fn default_max_attempts() -> u32 {
        5
    }

    fn default_retry_delay_ms() -> u64 {
        30_000
    }

    fn validate(&self) -> Result<(), String> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 64
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !name_ok {
            return Err("name must be 1 to 64 letters, digits, '-', '_' or '.'".into());
        }
        if self.timeout_secs == 0 || self.max_attempts == 0 {
            return Err("timeout_secs and max_attempts must be at least 1".into());
        }
        match self.kind {
            HookKind::Command if self.command.is_empty() => {
                Err("a command hook needs `command = [\"program\", \"arg\", ...]`".into())
            }
            HookKind::Webhook => match &self.url {
                Some(url)
                    if url.expose().starts_with("http://")
                        || url.expose().starts_with("https://") =>
                {
                    Ok(())
                }
                _ => Err("a webhook hook needs `url = \"http(s)://...\"`".into()),
            },
            HookKind::Command => Ok(()),
        }
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs)
    }

    pub fn retry_delay(&self) -> Duration {
        Duration::from_millis(self.retry_delay_ms)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HookKind {
    /// Runs a program; its standard output is the transcript.
    Command,
    /// POSTs the voicemail and its audio; the JSON answer is the transcript.
    Webhook,
}

/// The audio a hook receives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HookAudio {
    /// The file as KAZOO stored it (MP3 or WAV).
    #[default]
    Original,
    /// Decoded to 16 kHz mono 16-bit PCM WAV, what most speech engines want.
    Wav16k,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_match_the_documented_ones() {
        let s = Settings::load_from(None, &env(&[])).unwrap();
        assert_eq!(s.listen, "0.0.0.0:8080");
        assert_eq!(s.path_prefix, "/");
        assert_eq!(s.storage_dir, PathBuf::from("./data"));
        assert_eq!(s.queue, "vmpipe.jobs");
        assert_eq!(s.max_body, ByteSize(256 << 20));
        assert_eq!(s.base64, Base64Mode::Auto);
    }

    #[test]
    fn environment_overrides_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("vmpipe.toml");
        std::fs::write(
            &file,
            "queue = \"from.file\"\nmax_body = \"2MiB\"\nbase64 = \"never\"\n",
        )
        .unwrap();
        let s = Settings::load_from(
            Some(&file),
            &env(&[
                ("VMPIPE_QUEUE", "from.env"),
                ("VMPIPE_PUBLISH_TIMEOUT_MS", "250"),
                ("OTHER_QUEUE", "ignored"),
            ]),
        )
        .unwrap();
        assert_eq!(s.queue, "from.env");
        assert_eq!(s.max_body, ByteSize(2 << 20));
        assert_eq!(s.base64, Base64Mode::Never);
        assert_eq!(s.publish_timeout_ms, 250);
    }

    #[test]
    fn config_file_can_come_from_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("vmpipe.toml");
        std::fs::write(&file, "path_prefix = \"/kazoo\"\n").unwrap();
        let s =
            Settings::load_from(None, &env(&[(CONFIG_FILE_ENV, file.to_str().unwrap())])).unwrap();
        assert_eq!(s.normalized_prefix(), "/kazoo");
    }

    #[test]
    fn typos_are_errors_not_silently_ignored() {
        let err = Settings::load_from(None, &env(&[("VMPIPE_MAX_BDOY", "1")])).unwrap_err();
        assert!(err.to_string().contains("max_bdoy"), "{err}");
        let err = Settings::load_from(None, &env(&[("VMPIPE_MAX_BODY", "12XB")])).unwrap_err();
        assert!(err.to_string().contains("unit"), "{err}");
    }

    #[test]
    fn hooks_come_from_the_settings_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("vmpipe.toml");
        std::fs::write(
            &file,
            r#"
transcriber = "pocketsphinx"

[[hooks]]
name = "whisper"
kind = "command"
command = ["whisper-cli", "-f", "{audio}"]
audio = "wav16k"
timeout_secs = 60

[[hooks]]
name = "crm"
kind = "webhook"
url = "https://crm.example/voicemail"
headers = { Authorization = "Bearer s3cret" }
"#,
        )
        .unwrap();
        let s =
            Settings::load_from(Some(&file), &env(&[("VMPIPE_HOOK_CONCURRENCY", "4")])).unwrap();
        assert_eq!(s.transcriber, Transcriber::Pocketsphinx);
        assert_eq!(s.hook_concurrency, 4);
        assert_eq!(s.hooks.len(), 2);
        let whisper = &s.hooks[0];
        assert_eq!(whisper.kind, HookKind::Command);
        assert_eq!(whisper.command, ["whisper-cli", "-f", "{audio}"]);
        assert_eq!(whisper.audio, HookAudio::Wav16k);
        assert_eq!((whisper.timeout_secs, whisper.max_attempts), (60, 5));
        let crm = &s.hooks[1];
        assert_eq!(crm.kind, HookKind::Webhook);
        assert_eq!(crm.audio, HookAudio::Original);
        assert_eq!(crm.headers["Authorization"].expose(), "Bearer s3cret");
        assert!(!format!("{s:?}").contains("s3cret"));
    }

    #[test]
    fn bad_hooks_are_refused_with_their_name() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("vmpipe.toml");
        for (toml, expected) in [
            (
                "[[hooks]]\nname = \"a\"\nkind = \"command\"\n",
                "needs `command",
            ),
            (
                "[[hooks]]\nname = \"b\"\nkind = \"webhook\"\nurl = \"ftp://x\"\n",
                "url",
            ),
            (
                "[[hooks]]\nname = \"a b\"\nkind = \"command\"\ncommand = [\"x\"]\n",
                "name",
            ),
            (
                "transcriber = \"pocketsphinx\"\n[[hooks]]\nname = \"pocketsphinx\"\nkind = \"command\"\ncommand = [\"x\"]\n",
                "two hooks",
            ),
            (
                "[[hooks]]\nname = \"c\"\nkind = \"command\"\ncommand = [\"x\"]\ntimeout = 5\n",
                "timeout",
            ),
        ] {
            std::fs::write(&file, toml).unwrap();
            let err = Settings::load_from(Some(&file), &env(&[]))
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{toml}: {err}");
        }
    }

    #[test]
    fn byte_sizes_parse() {
        assert_eq!("1048576".parse::<ByteSize>().unwrap(), ByteSize(1 << 20));
        assert_eq!("64MiB".parse::<ByteSize>().unwrap(), ByteSize(64 << 20));
        assert_eq!("512k".parse::<ByteSize>().unwrap(), ByteSize(512 << 10));
        assert!("-1".parse::<ByteSize>().is_err());
    }

    #[test]
    fn passwords_are_masked() {
        assert_eq!(
            redact_url("amqp://guest:secret@rabbit:5672/%2f"),
            "amqp://guest:***@rabbit:5672/%2f"
        );
        assert_eq!(
            format!("{:?}", SecretUrl("postgres://u:p@db/x".into())),
            "\"postgres://u:***@db/x\""
        );
        assert_eq!(redact_url("postgres://db/x"), "postgres://db/x");
    }
}
