//! A worker with a hook of its own, compiled in: the `Hook` trait at work.
//!
//! The hook gets each new voicemail as 16 kHz mono 16-bit WAV and records how much of it is
//! speech (20 ms windows louder than -40 dBFS), e.g. "speech in 83% of 12.4 s" — enough to spot
//! the messages where the caller hung up without a word:
//!
//! ```sql
//! SELECT v.caller_id_number, t.text FROM transcriptions t JOIN voicemails v ON v.id = t.voicemail_id
//! WHERE t.hook = 'speech-ratio' AND t.confidence < 0.05;
//! ```
//!
//! Run it in place of `worker run`, with the same settings (environment or `--config` file):
//! `cargo run --release -p vmpipe-worker --example custom_hook`.
//! A real transcriber would call its engine where `measure` is (in `spawn_blocking` when it is
//! CPU-bound, as here).

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use tokio_util::sync::CancellationToken;
use vmpipe_common::{Settings, logging, signals};
use vmpipe_worker::Worker;
use vmpipe_worker::hooks::{Hook, HookAudio, HookError, HookInput, HookPolicy, Transcript};

struct SpeechRatio;

impl Hook for SpeechRatio {
    fn name(&self) -> &str {
        "speech-ratio"
    }

    fn policy(&self) -> HookPolicy {
        HookPolicy {
            audio: HookAudio::Wav16k,
            ..HookPolicy::default()
        }
    }

    fn run<'a>(&'a self, input: &'a HookInput) -> BoxFuture<'a, Result<Transcript, HookError>> {
        let path = input.audio_path.clone();
        Box::pin(async move {
            let (speech, seconds) = tokio::task::spawn_blocking(move || measure(&path))
                .await
                .map_err(HookError::retry)?
                .map_err(|e| HookError::retry(anyhow::Error::new(e).context("reading the WAV")))?;
            Ok(Transcript {
                text: format!("speech in {:.0}% of {seconds:.1} s", speech * 100.0),
                language: None,
                confidence: Some(speech),
                segments: None,
            })
        })
    }
}

/// Share of 20 ms windows above -40 dBFS, and the length in seconds, of a 16 kHz mono WAV as
/// the worker writes it (a 44-byte header, then samples).
fn measure(path: &Path) -> std::io::Result<(f64, f64)> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)?.read_to_end(&mut bytes)?;
    let samples: Vec<f64> = bytes
        .get(44..)
        .unwrap_or_default()
        .chunks_exact(2)
        .map(|pair| f64::from(i16::from_le_bytes([pair[0], pair[1]])) / 32768.0)
        .collect();
    let windows: Vec<&[f64]> = samples.chunks(320).collect();
    let loud = windows
        .iter()
        .filter(|window| {
            let power = window.iter().map(|s| s * s).sum::<f64>() / window.len() as f64;
            10.0 * power.max(1e-12).log10() > -40.0
        })
        .count();
    Ok((
        loud as f64 / windows.len().max(1) as f64,
        samples.len() as f64 / 16_000.0,
    ))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::load(None)?;
    logging::init(settings.log_format, logging::Output::Stdout);
    let shutdown = CancellationToken::new();
    tokio::spawn(signals::cancel_on_signal(shutdown.clone()));
    Worker::build(settings)
        .await?
        .with_hook(Arc::new(SpeechRatio))?
        .run(shutdown)
        .await?;
    Ok(())
}
