//! The lines the worker and the Whisper engine (`hooks/whisper_engine.py`) exchange: JSON, one
//! object per line.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::hooks::Segment;

/// How the engine is started: its one argument.
#[derive(Clone, Debug, Serialize)]
pub(super) struct Config {
    pub model: String,
    pub device: &'static str,
    pub compute_type: String,
    pub threads: u16,
    pub concurrency: u16,
    /// Checked against the model's languages before the engine says it is ready.
    pub language: String,
    /// The longest piece of audio transcribed at once.
    pub window_secs: u32,
}

/// One voicemail to transcribe.
#[derive(Debug, Serialize)]
pub(super) struct Request<'a> {
    pub id: u64,
    pub audio: &'a Path,
    pub language: &'a str,
}

/// A line from the engine.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum Line {
    /// The first line: started (`ready`) or not (`fatal`).
    Event(Event),
    Answer(Answer),
}

#[derive(Debug, Deserialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub(super) enum Event {
    Ready {
        load_ms: u64,
        #[serde(default)]
        rss_bytes: Option<u64>,
        #[serde(default)]
        versions: serde_json::Value,
    },
    Fatal {
        error: String,
    },
}

/// The answer to the request with this `id`.
#[derive(Debug, Deserialize)]
pub(super) struct Answer {
    pub id: u64,
    #[serde(flatten)]
    pub outcome: Outcome,
    #[serde(default)]
    pub rss_bytes: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum Outcome {
    Done {
        result: Recognised,
        audio_ms: u64,
        run_ms: u64,
    },
    Failed {
        error: String,
        /// False: the audio itself is at fault; another attempt cannot help.
        retry: bool,
    },
}

/// What the engine heard.
#[derive(Debug, Deserialize)]
pub(super) struct Recognised {
    pub text: String,
    #[serde(default)]
    pub language: Option<String>,
    #[serde(default)]
    pub confidence: Option<f64>,
    #[serde(default)]
    pub segments: Vec<Segment>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_engines_lines_are_understood() {
        let ready: Line = serde_json::from_str(
            r#"{"event": "ready", "load_ms": 310, "model": "base", "multilingual": true,
                "rss_bytes": 123, "versions": {"ctranslate2": "4.8.5"}}"#,
        )
        .unwrap();
        assert!(matches!(
            ready,
            Line::Event(Event::Ready { load_ms: 310, .. })
        ));
        let fatal: Line =
            serde_json::from_str(r#"{"event": "fatal", "error": "no model"}"#).unwrap();
        assert!(matches!(fatal, Line::Event(Event::Fatal { error }) if error == "no model"));
        let done: Line = serde_json::from_str(
            r#"{"id": 7, "result": {"text": "Hello.", "language": "en", "language_probability": 1,
                "confidence": 0.6, "segments": [{"start_ms": 0, "end_ms": 900, "text": "Hello."}]},
                "audio_ms": 1000, "run_ms": 250, "rss_bytes": 9}"#,
        )
        .unwrap();
        let Line::Answer(Answer {
            id: 7,
            outcome:
                Outcome::Done {
                    result,
                    audio_ms: 1000,
                    run_ms: 250,
                },
            rss_bytes: Some(9),
        }) = done
        else {
            panic!("not a result: {done:?}");
        };
        assert_eq!(result.segments[0].end_ms, 900);
        let failed: Line =
            serde_json::from_str(r#"{"id": 8, "error": "not a WAV file", "retry": false}"#)
                .unwrap();
        assert!(matches!(
            failed,
            Line::Answer(Answer {
                id: 8,
                outcome: Outcome::Failed { retry: false, .. },
                ..
            })
        ));
    }
}
