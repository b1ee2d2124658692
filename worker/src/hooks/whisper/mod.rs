//! The built-in Whisper transcriber (`VMPIPE_TRANSCRIBER=whisper`, hook `whisper`):
//! faster-whisper (CTranslate2) in one long-lived engine process per worker ([`engine`]), the
//! model loaded once. It gets each voicemail as a 16 kHz WAV decoded by the worker (within
//! `VMPIPE_MAX_AUDIO_SECS`), skips silence and music with a voice-activity filter, and returns
//! the text, the language, a confidence and the segments with their timestamps.

mod engine;
mod output;
mod protocol;

use std::time::Duration;

use futures_util::future::BoxFuture;
use vmpipe_common::Settings;
use vmpipe_common::settings::WHISPER_HOOK;

use super::{Hook, HookAudio, HookError, HookInput, HookPolicy, Transcript};
use protocol::{Answer, Outcome};

/// Times one attempt sends its voicemail to an engine that another request's cut-short run
/// stopped.
const MAX_TRIES: u32 = 3;

pub(crate) struct WhisperHook {
    engine: engine::Engine,
    language: String,
    policy: HookPolicy,
}

impl WhisperHook {
    /// The engine is not started here: [`Hook::start`] does it (the worker, `worker
    /// transcribe`), so that commands that only name the hooks do not load a model.
    pub(crate) fn new(settings: &Settings) -> Self {
        let compute_type = match settings.whisper_compute_type.as_str() {
            "default" => match settings.whisper_device {
                vmpipe_common::settings::WhisperDevice::Cpu => "int8",
                vmpipe_common::settings::WhisperDevice::Cuda => "float16",
            }
            .to_owned(),
            other => other.to_owned(),
        };
        let config = protocol::Config {
            model: settings.whisper_model.clone(),
            device: settings.whisper_device.as_str(),
            compute_type,
            threads: settings.whisper_threads,
            concurrency: settings.whisper_concurrency,
            language: settings.whisper_language.clone(),
            window_secs: settings.whisper_window_secs,
        };
        Self {
            engine: engine::Engine::new(settings.python.clone(), config),
            language: settings.whisper_language.clone(),
            policy: HookPolicy {
                audio: HookAudio::Wav16k,
                // A long voicemail at low priority on a busy machine takes a while; the engine
                // itself fails fast on what it cannot do.
                timeout: Duration::from_secs(1800),
                max_attempts: 3,
                retry_delay: Duration::from_secs(60),
                concurrency: Some(settings.whisper_concurrency),
            },
        }
    }

    async fn transcribe(&self, input: &HookInput) -> Result<Transcript, HookError> {
        // A request whose engine was stopped for another one's sake is sent again: it does not
        // lose an attempt for its neighbour's fault.
        let mut tries = 0;
        let Answer { outcome, .. } = loop {
            tries += 1;
            match self
                .engine
                .transcribe(&input.audio_path, &self.language)
                .await
            {
                Ok(answer) => break answer,
                Err(engine::Failure::Stopped) if tries < MAX_TRIES => continue,
                Err(engine::Failure::Stopped) => {
                    return Err(HookError::retry_because(format!(
                        "the Whisper engine was stopped during each of {MAX_TRIES} tries \
                         (other transcriptions were cut short)"
                    )));
                }
                Err(engine::Failure::Hook(e)) => return Err(e),
            }
        };
        match outcome {
            Outcome::Done {
                result,
                audio_ms,
                run_ms,
            } => {
                metrics::histogram!("vmpipe_whisper_audio_seconds").record(audio_ms as f64 / 1e3);
                metrics::histogram!("vmpipe_whisper_transcribe_seconds")
                    .record(run_ms as f64 / 1e3);
                Ok(Transcript {
                    text: result.text,
                    language: result.language,
                    confidence: result.confidence,
                    segments: Some(result.segments),
                })
            }
            Outcome::Failed { error, retry: true } => Err(HookError::retry_because(error)),
            Outcome::Failed { error, .. } => Err(HookError::abort_because(error)),
        }
    }
}

impl Hook for WhisperHook {
    fn name(&self) -> &str {
        WHISPER_HOOK
    }

    fn policy(&self) -> HookPolicy {
        self.policy
    }

    fn start(&self) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(self.engine.start())
    }

    fn run<'a>(&'a self, input: &'a HookInput) -> BoxFuture<'a, Result<Transcript, HookError>> {
        Box::pin(self.transcribe(input))
    }
}
