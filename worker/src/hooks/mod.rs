//! Hooks: what runs after a voicemail is indexed, transcription first of all.
//!
//! Indexing only queues a `transcriptions` row per hook, in the same statement that writes the
//! voicemail; the `runner` works through those rows on its own, bounded, at low CPU priority.
//! A slow, failing or crashing hook therefore never delays or breaks indexing: it times out,
//! is retried with backoff, and its outcome is recorded in its row.
//!
//! The kinds: `command::CommandHook` runs a program, `webhook::WebhookHook` POSTs to a URL,
//! `openai::OpenaiHook` asks an OpenAI-compatible speech-to-text server, and anything
//! implementing [`Hook`] can be compiled into a worker of one's own
//! (`worker/examples/custom_hook.rs`).

mod command;
pub(crate) mod confidence;
pub(crate) mod http;
pub(crate) mod languages;
mod openai;
mod program;
pub(crate) mod runner;
mod supervise;
mod webhook;
mod whisper;

pub use runner::{RunnerError, TranscriptionReport};

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use vmpipe_common::backoff;
use vmpipe_common::settings::{HookKind, HookSettings, Settings, Transcriber};

pub use vmpipe_common::settings::HookAudio;

/// A hook, as the runner sees it.
pub trait Hook: Send + Sync {
    /// Recorded in `transcriptions.hook`; must be unique among a worker's hooks.
    fn name(&self) -> &str;

    /// Audio format, timeout and retries.
    fn policy(&self) -> HookPolicy {
        HookPolicy::default()
    }

    /// Gets ready to run (loads a model, say): called once by `Worker::build` and
    /// `worker transcribe`, before any run; an error stops the worker at start-up.
    fn start(&self) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async { Ok(()) })
    }

    /// Produces the transcript. It may take long (it runs on its own task, and is dropped at
    /// the timeout); blocking work belongs in `tokio::task::spawn_blocking`.
    fn run<'a>(&'a self, input: &'a HookInput) -> BoxFuture<'a, Result<Transcript, HookError>>;
}

/// The longest wait between two attempts of a hook.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(3600);

/// How a hook is run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HookPolicy {
    /// The stored file, or a 16 kHz mono 16-bit PCM WAV decoded from it.
    pub audio: HookAudio,
    /// A run (decoding included) taking longer is stopped and counts as a failed attempt.
    pub timeout: Duration,
    /// Attempts before the transcription is marked `failed`.
    pub max_attempts: u32,
    /// Wait before the first retry; doubled after each failed attempt, at most an hour.
    pub retry_delay: Duration,
    /// Runs of this hook at once, in one worker, whatever the other hooks are doing; `None`
    /// is `VMPIPE_HOOK_CONCURRENCY`.
    pub concurrency: Option<u16>,
}

impl Default for HookPolicy {
    fn default() -> Self {
        Self {
            audio: HookAudio::Original,
            timeout: Duration::from_secs(300),
            max_attempts: 5,
            retry_delay: Duration::from_secs(30),
            concurrency: None,
        }
    }
}

impl HookPolicy {
    fn from_settings(settings: &HookSettings) -> Self {
        Self {
            audio: settings.audio,
            timeout: settings.timeout(),
            max_attempts: settings.max_attempts,
            retry_delay: settings.retry_delay(),
            concurrency: settings.concurrency,
        }
    }

    /// Wait after failed attempt number `attempt` (1-based).
    pub fn retry_after(&self, attempt: u32) -> Duration {
        backoff::exponential(self.retry_delay, MAX_RETRY_DELAY, attempt.saturating_sub(1))
    }
}

/// What a hook receives: the indexed voicemail and its audio. Command hooks get it as JSON on
/// standard input, webhooks as the `voicemail` part of the POST.
#[derive(Clone, Debug, Serialize)]
pub struct HookInput {
    pub hook: String,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// This attempt's own id (`transcriptions.attempt_id` while it runs): a hook run twice for
    /// the same voicemail (it is at-least-once: a worker that dies mid-run is run again) sees
    /// the same `voicemail_id` with a new `attempt_id`.
    pub attempt_id: uuid::Uuid,
    pub voicemail_id: uuid::Uuid,
    /// The audio file to read, under a temporary name of vmpipe's choosing (never the storage
    /// key, which is in `voicemail`): a hard link to the stored file (or a copy), or a 16 kHz
    /// WAV decoded from it; deleted after the run.
    pub audio_path: PathBuf,
    pub audio_format: HookAudio,
    /// `audio/mpeg`, `audio/wav`, ...
    pub audio_content_type: String,
    /// The `voicemails` row, column by column (without `metadata`).
    pub voicemail: serde_json::Map<String, serde_json::Value>,
    /// KAZOO's document for the voicemail (`voicemails.metadata`), when it sent one.
    pub document: Option<serde_json::Value>,
}

/// A hook's result.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Transcript {
    pub text: String,
    /// A language code (`en`, `de`), or as the engine named it.
    #[serde(default)]
    pub language: Option<String>,
    /// 0 to 1.
    #[serde(default)]
    pub confidence: Option<f64>,
    /// The transcript by segment, in order (`transcriptions.segments`); `None` when the hook
    /// reports none, empty when it found no speech.
    #[serde(default, deserialize_with = "lenient_segments")]
    pub segments: Option<Vec<Segment>>,
}

/// Segments of a shape other than ours (seconds as `start`/`end`, fractions of milliseconds,
/// anything else a hook passes through) are left out, never a reason to lose the text.
fn lenient_segments<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Vec<Segment>>, D::Error> {
    let value = serde_json::Value::deserialize(deserializer)?;
    if value.is_null() {
        return Ok(None);
    }
    match serde_json::from_value::<Vec<Segment>>(value) {
        Ok(segments) => Ok(Some(segments)),
        Err(e) => {
            tracing::warn!(error = %e, "a hook's segments are not [{{start_ms, end_ms, text}}]: left out");
            Ok(None)
        }
    }
}

/// A stretch of a transcript and where it was said, in milliseconds from the start (at most
/// [`Segment::MAX_MS`], so that SQL reads them as `int`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    pub start_ms: u64,
    pub end_ms: u64,
    pub text: String,
}

impl Segment {
    /// The latest time a segment may have: `i32::MAX` ms (24 days).
    pub const MAX_MS: u64 = i32::MAX as u64;

    /// Times beyond [`Segment::MAX_MS`] brought down to it, and an end never before the start.
    pub fn bounded(self) -> Self {
        let start_ms = self.start_ms.min(Self::MAX_MS);
        Self {
            start_ms,
            end_ms: self.end_ms.clamp(start_ms, Self::MAX_MS),
            text: self.text,
        }
    }
}

/// A hook's JSON answer (a command's output, a webhook's body) as a transcript: an object with
/// a `text` string; else why not.
fn transcript_from_json(answer: serde_json::Value) -> Result<Transcript, String> {
    let has_text = answer.get("text").is_some_and(serde_json::Value::is_string);
    let shown = || {
        let mut shown = answer.to_string();
        if shown.len() > 300 {
            let mut end = 300;
            while !shown.is_char_boundary(end) {
                end -= 1;
            }
            shown.truncate(end);
            shown.push('…');
        }
        shown
    };
    if !answer.is_object() || !has_text {
        return Err(format!(
            "JSON without a \"text\" string, not a transcript: {}",
            shown()
        ));
    }
    serde_json::from_value(answer.clone())
        .map_err(|e| format!("JSON that is not a transcript ({e}): {}", shown()))
}

/// How a hook run fails: the worker's one error vocabulary. `Retry` may work on another
/// attempt (a crash, a timeout, a server error); `Abort` never will for this voicemail
/// (undecodable audio, a 4xx answer) and is not retried; `Interrupted` hands the run back.
pub type HookError = crate::error::JobError;

/// The hooks a worker runs, in settings order: the built-in transcriber, then `[[hooks]]`.
/// An error is a setting that cannot work (it stops the worker at start-up).
pub(crate) fn from_settings(settings: &Settings) -> anyhow::Result<Vec<Arc<dyn Hook>>> {
    use anyhow::Context as _;
    let mut hooks: Vec<Arc<dyn Hook>> = Vec::new();
    if settings.transcriber == Transcriber::Whisper {
        hooks.push(Arc::new(whisper::WhisperHook::new(settings)));
    }
    for hook in &settings.hooks {
        let policy = HookPolicy::from_settings(hook);
        hooks.push(match hook.kind {
            HookKind::Command => {
                program::check(&hook.command[0]).map_err(|why| {
                    anyhow::anyhow!(
                        "hook {:?}: its program {:?} cannot run: {why}",
                        hook.name,
                        hook.command[0]
                    )
                })?;
                Arc::new(command::CommandHook::new(
                    &hook.name,
                    hook.command.clone(),
                    policy,
                ))
            }
            HookKind::Webhook => Arc::new(
                webhook::WebhookHook::new(hook, policy)
                    .with_context(|| format!("hook {:?}", hook.name))?,
            ),
            HookKind::Openai => Arc::new(
                openai::OpenaiHook::new(hook, policy)
                    .with_context(|| format!("hook {:?}", hook.name))?,
            ),
        });
    }
    Ok(hooks)
}

/// Gets every hook ready ([`Hook::start`]), in order; the first that cannot start says why.
pub(crate) async fn start_all(hooks: &[Arc<dyn Hook>]) -> anyhow::Result<()> {
    for hook in hooks {
        hook.start()
            .await
            .map_err(|e| e.context(format!("hook {:?} cannot start", hook.name())))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_of_another_shape_never_cost_the_text() {
        let ours = transcript_from_json(serde_json::json!({
            "text": "hi", "segments": [{"start_ms": 0, "end_ms": 900, "text": "hi"}]
        }))
        .unwrap();
        assert_eq!(ours.segments.unwrap()[0].end_ms, 900);
        for segments in [
            serde_json::json!([{"start": 0.0, "end": 2.5, "text": "hi"}]),
            serde_json::json!([{"start_ms": 1200.5, "end_ms": 1300, "text": "hi"}]),
            serde_json::json!("not a list"),
            serde_json::Value::Null,
        ] {
            let transcript =
                transcript_from_json(serde_json::json!({"text": "hi", "segments": segments}))
                    .unwrap();
            assert_eq!(transcript.text, "hi");
            assert_eq!(transcript.segments, None, "{segments}");
        }
    }

    #[test]
    fn segment_times_stay_within_sql_int() {
        let wild = Segment {
            start_ms: u64::MAX,
            end_ms: 5,
            text: "x".into(),
        }
        .bounded();
        assert_eq!(
            (wild.start_ms, wild.end_ms),
            (Segment::MAX_MS, Segment::MAX_MS)
        );
        let backwards = Segment {
            start_ms: 900,
            end_ms: 100,
            text: "x".into(),
        }
        .bounded();
        assert_eq!((backwards.start_ms, backwards.end_ms), (900, 900));
    }
}
