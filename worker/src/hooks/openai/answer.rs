//! An OpenAI-compatible server's answer: a `verbose_json` transcription (text, language,
//! segments in seconds, each segment's `avg_logprob`), a plain `{"text": ...}` (servers that
//! ignore `response_format`), or an error, as OpenAI writes them (`{"error": {"message": ...}}`)
//! or as other servers do (`{"detail": ...}`, `{"detail": {"error": {"message": ...}}}`,
//! `{"error": "..."}`).

use serde::Deserialize;

use crate::hooks::confidence::{self, Scored};
use crate::hooks::http::snippet;
use crate::hooks::languages::language_code;
use crate::hooks::{Segment, Transcript};

#[derive(Deserialize)]
struct Answer {
    text: String,
    /// OpenAI's and Groq's name the language (`english`); others give its code.
    #[serde(default)]
    language: Option<String>,
    #[serde(default)]
    segments: Option<Vec<AnswerSegment>>,
}

#[derive(Deserialize)]
struct AnswerSegment {
    /// Seconds from the start.
    start: f64,
    end: f64,
    text: String,
    #[serde(default)]
    avg_logprob: Option<f64>,
}

/// The transcript in a 2xx answer's body; else what is wrong with it.
pub(super) fn transcript(body: &[u8]) -> Result<Transcript, String> {
    let answer: Answer = serde_json::from_slice(body).map_err(|e| {
        format!(
            "no transcript, a JSON object with a \"text\" string, in the answer ({e}): {}",
            snippet(&String::from_utf8_lossy(body))
        )
    })?;
    // Segments without words are left out, as the built-in engine leaves them out.
    let segments: Option<Vec<AnswerSegment>> = answer.segments.map(|segments| {
        segments
            .into_iter()
            .filter(|s| !s.text.trim().is_empty())
            .collect()
    });
    let confidence = segments.as_ref().and_then(|segments| {
        confidence::from_segments(segments.iter().filter_map(|s| {
            Some(Scored {
                duration_secs: s.end - s.start,
                avg_logprob: s.avg_logprob?,
            })
        }))
    });
    let segments = segments.map(|segments| {
        segments
            .into_iter()
            .map(|s| {
                let start_ms = milliseconds(s.start);
                Segment {
                    start_ms,
                    end_ms: milliseconds(s.end).max(start_ms),
                    text: s.text.trim().to_owned(),
                }
            })
            .collect()
    });
    Ok(Transcript {
        text: answer.text.trim().to_owned(),
        language: answer.language.as_deref().and_then(language_code),
        confidence,
        segments,
    })
}

/// Seconds (a float, as the answer gives them) in whole milliseconds; 0 for nonsense.
fn milliseconds(seconds: f64) -> u64 {
    if seconds.is_finite() && seconds > 0.0 {
        // Saturates: an absurd timestamp is the largest one, not a wrap-around.
        (seconds * 1000.0).round() as u64
    } else {
        0
    }
}

/// What an error answer says: its message where the body has one, else the body's start.
pub(super) fn error_message(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let json: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let message = json.as_ref().and_then(|json| {
        let string = |value: Option<&serde_json::Value>| {
            value.and_then(serde_json::Value::as_str).map(str::to_owned)
        };
        string(json.pointer("/error/message"))
            .or_else(|| string(json.pointer("/detail/error/message")))
            .or_else(|| string(json.get("error")))
            .or_else(|| string(json.get("detail")))
            .or_else(|| string(json.get("message")))
            .or_else(|| json.get("detail").map(serde_json::Value::to_string))
    });
    snippet(message.as_deref().unwrap_or(&text)).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verbose_answer_has_text_language_segments_and_confidence() {
        let body = br#"{"task": "transcribe", "language": "english", "duration": 4.2,
            "text": " Hi, it's Anna. Call me back. ",
            "segments": [
              {"id": 0, "seek": 0, "start": 0.0, "end": 3.0, "text": " Hi, it's Anna.",
               "tokens": [1, 2], "temperature": 0.0, "avg_logprob": -0.1,
               "compression_ratio": 1.2, "no_speech_prob": 0.01},
              {"id": 1, "seek": 0, "start": 3.0, "end": 4.2, "text": " Call me back. ",
               "avg_logprob": -0.4, "no_speech_prob": 0.02}
            ]}"#;
        let t = transcript(body).unwrap();
        assert_eq!(t.text, "Hi, it's Anna. Call me back.");
        assert_eq!(t.language.as_deref(), Some("en"));
        assert_eq!(
            t.segments.unwrap(),
            [
                Segment {
                    start_ms: 0,
                    end_ms: 3000,
                    text: "Hi, it's Anna.".into()
                },
                Segment {
                    start_ms: 3000,
                    end_ms: 4200,
                    text: "Call me back.".into()
                },
            ]
        );
        let expected = ((3.0 * -0.1 + 1.2 * -0.4) / 4.2f64).exp();
        assert!((t.confidence.unwrap() - expected).abs() < 1e-9);
    }

    #[test]
    fn a_plain_answer_is_a_transcript_without_segments() {
        let t = transcript(br#"{"text": "Call me back."}"#).unwrap();
        assert_eq!(t.text, "Call me back.");
        assert_eq!((t.language, t.confidence, t.segments), (None, None, None));
        // A server that gives segments without probabilities, and a language code.
        let t = transcript(
            br#"{"text": "Hallo", "language": "de", "segments": [{"start": 0.5, "end": 0.25, "text": "Hallo"}]}"#,
        )
        .unwrap();
        assert_eq!(t.language.as_deref(), Some("de"));
        assert_eq!(t.confidence, None);
        let segment = &t.segments.unwrap()[0];
        assert_eq!(
            (segment.start_ms, segment.end_ms),
            (500, 500),
            "never ends before it starts"
        );
        // No speech at all: no segments, and that is said; a segment without words is dropped.
        let t = transcript(br#"{"text": "", "language": "english", "segments": []}"#).unwrap();
        assert_eq!(t.segments, Some(Vec::new()));
        let t = transcript(
            br#"{"text": "Hi", "segments": [{"start": 0, "end": 1, "text": " ", "avg_logprob": -9},
                {"start": 1, "end": 2, "text": "Hi", "avg_logprob": -0.1}]}"#,
        )
        .unwrap();
        assert_eq!(t.segments.unwrap().len(), 1);
        assert!((t.confidence.unwrap() - (-0.1f64).exp()).abs() < 1e-9);
    }

    #[test]
    fn an_answer_without_text_is_refused() {
        for body in [&b"Call me back."[..], br#"{"result": "x"}"#, br#"[1]"#] {
            let why = transcript(body).unwrap_err();
            assert!(why.contains("\"text\""), "{why}");
        }
    }

    #[test]
    fn an_error_answer_s_message_is_found() {
        let openai = br#"{"error": {"message": "Incorrect API key provided.", "type": "invalid_request_error", "code": "invalid_api_key"}}"#;
        assert_eq!(error_message(openai), "Incorrect API key provided.");
        assert_eq!(
            error_message(br#"{"detail": "Model not found"}"#),
            "Model not found"
        );
        assert_eq!(error_message(br#"{"error": "no file"}"#), "no file");
        assert_eq!(
            error_message(br#"{"detail": [{"loc": ["body", "file"], "msg": "field required"}]}"#),
            r#"[{"loc":["body","file"],"msg":"field required"}]"#
        );
        assert_eq!(
            error_message(b"  <html>Bad Gateway</html>\n"),
            "<html>Bad Gateway</html>"
        );
    }

    #[test]
    fn timestamps_become_milliseconds() {
        assert_eq!(milliseconds(1.2345), 1235);
        assert_eq!(milliseconds(-1.0), 0);
        assert_eq!(milliseconds(f64::NAN), 0);
        assert_eq!(milliseconds(f64::INFINITY), 0);
        assert_eq!(milliseconds(1e300), u64::MAX);
    }
}
