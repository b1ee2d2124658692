//! The hook settings: the built-in transcriber and the `[[hooks]]` tables of the settings file.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Secret, SecretUrl};

/// The hook name the built-in Whisper transcriber records its results under.
pub const WHISPER_HOOK: &str = "whisper";

/// `VMPIPE_TRANSCRIBER`: the built-in transcriber.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transcriber {
    None,
    /// Whisper on faster-whisper (CTranslate2), in a long-lived engine process per worker,
    /// run by `VMPIPE_PYTHON`; recorded as hook `whisper`.
    Whisper,
}

impl<'de> Deserialize<'de> for Transcriber {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        match name.to_ascii_lowercase().as_str() {
            "none" | "" => Ok(Self::None),
            "whisper" => Ok(Self::Whisper),
            "pocketsphinx" => Err(serde::de::Error::custom(
                "transcriber \"pocketsphinx\" was retired (it got 84 % of the words of telephone \
                 speech wrong): use transcriber = \"whisper\" (VMPIPE_TRANSCRIBER=whisper), see the \
                 README's \"Transcription and hooks\"",
            )),
            other => Err(serde::de::Error::custom(format!(
                "unknown transcriber {other:?}: \"none\" or \"whisper\""
            ))),
        }
    }
}

/// `VMPIPE_WHISPER_DEVICE`: where the Whisper engine runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WhisperDevice {
    #[default]
    Cpu,
    /// An NVIDIA GPU (CTranslate2's CUDA build, cuBLAS and cuDNN installed).
    Cuda,
}

impl WhisperDevice {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Cuda => "cuda",
        }
    }
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
    /// `webhook`: where the voicemail is POSTed. `openai`: the server's base URL, to which
    /// `/v1/audio/transcriptions` is added (`https://api.openai.com`,
    /// `https://api.groq.com/openai`, `http://127.0.0.1:8000`).
    #[serde(default)]
    pub url: Option<SecretUrl>,
    /// `webhook` and `openai`: extra request headers (an `Authorization`, say).
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, Secret>,
    /// `openai`: the model the server is asked for (`whisper-1`, `whisper-large-v3-turbo`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// `openai`: the language spoken, as a code (`en`, `de`); unset, the server detects it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    /// `openai`: the API key, sent as `Authorization: Bearer ...`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<Secret>,
    /// `openai`: a file holding the API key (a Docker secret, say), read when the worker
    /// starts; instead of `api_key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_file: Option<std::path::PathBuf>,
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
    /// Runs of this hook one worker performs at once, apart from the other hooks' runs (a slow
    /// hook never holds up a fast one). Unset: `hook_concurrency`.
    #[serde(default)]
    pub concurrency: Option<u16>,
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

    pub(super) fn validate(&self) -> Result<(), String> {
        check_name(&self.name)?;
        if self.timeout_secs == 0 || self.max_attempts == 0 || self.concurrency == Some(0) {
            return Err("timeout_secs, max_attempts and concurrency must be at least 1".into());
        }
        let http_url = self.url.as_ref().is_some_and(|url| {
            url.expose().starts_with("http://") || url.expose().starts_with("https://")
        });
        if self.kind != HookKind::Openai {
            let openai_only = [
                ("model", self.model.is_some()),
                ("language", self.language.is_some()),
                ("api_key", self.api_key.is_some()),
                ("api_key_file", self.api_key_file.is_some()),
            ];
            if let Some((setting, _)) = openai_only.iter().find(|(_, set)| *set) {
                return Err(format!(
                    "`{setting}` is a setting of `kind = \"openai\"` hooks"
                ));
            }
        }
        match self.kind {
            HookKind::Command if self.command.is_empty() => {
                Err("a command hook needs `command = [\"program\", \"arg\", ...]`".into())
            }
            HookKind::Webhook if !http_url => {
                Err("a webhook hook needs `url = \"http(s)://...\"`".into())
            }
            HookKind::Openai => self.validate_openai(http_url),
            HookKind::Command | HookKind::Webhook => Ok(()),
        }
    }

    fn validate_openai(&self, http_url: bool) -> Result<(), String> {
        if !http_url {
            return Err(
                "an openai hook needs `url = \"http(s)://...\"`, the server's base URL \
                 (https://api.openai.com, say)"
                    .into(),
            );
        }
        if self
            .model
            .as_deref()
            .is_none_or(|model| model.trim().is_empty())
        {
            return Err("an openai hook needs `model` (whisper-1, say)".into());
        }
        if let Some(language) = &self.language
            && !is_language_code(language)
        {
            return Err(format!(
                "language must be a language code (en, de, fr, ...): {language:?}"
            ));
        }
        if self.api_key.is_some() && self.api_key_file.is_some() {
            return Err("api_key and api_key_file: one or the other".into());
        }
        if self
            .api_key
            .as_ref()
            .is_some_and(|key| key.expose().trim().is_empty())
        {
            return Err("api_key is empty (leave it out for a server without keys)".into());
        }
        if !self.command.is_empty() {
            return Err("`command` is a setting of `kind = \"command\"` hooks".into());
        }
        Ok(())
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
    /// POSTs the audio to an OpenAI-compatible `{url}/v1/audio/transcriptions` (OpenAI, Groq,
    /// faster-whisper and whisper.cpp servers, LocalAI, vLLM); text, language and segments.
    Openai,
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

/// A hook's or a sink's name: 1 to 64 letters, digits, `-`, `_` or `.`.
pub(super) fn check_name(name: &str) -> Result<(), String> {
    let name_ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if !name_ok {
        return Err("name must be 1 to 64 letters, digits, '-', '_' or '.'".into());
    }
    Ok(())
}

/// A language code as Whisper knows them: `en`, `de`, `haw`.
fn is_language_code(language: &str) -> bool {
    (2..=3).contains(&language.len()) && language.chars().all(|c| c.is_ascii_lowercase())
}

/// The Whisper settings' own checks (whether the engine can load the model is checked when the
/// worker starts it).
pub(super) fn validate_whisper(settings: &super::Settings) -> Result<(), String> {
    if settings.whisper_model.trim().is_empty() {
        return Err("whisper_model must name a model directory or an installed model".into());
    }
    let language = settings.whisper_language.as_str();
    if language != "auto" && !is_language_code(language) {
        return Err(format!(
            "whisper_language must be \"auto\" or a language code (en, de, fr, ...): {language:?}"
        ));
    }
    let compute_ok = !settings.whisper_compute_type.is_empty()
        && settings
            .whisper_compute_type
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !compute_ok {
        return Err(format!(
            "whisper_compute_type must be default, int8, int8_float16, float16, float32, ...: {:?}",
            settings.whisper_compute_type
        ));
    }
    if !(30..=3600).contains(&settings.whisper_window_secs) {
        return Err("whisper_window_secs must be 30 to 3600".into());
    }
    if settings.whisper_concurrency == 0 {
        return Err("whisper_concurrency must be at least 1".into());
    }
    if settings.python.trim().is_empty() {
        return Err("python must name a Python interpreter".into());
    }
    Ok(())
}
