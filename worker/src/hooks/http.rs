//! What the HTTP hooks (`webhook`, `openai`) share: the client, the audio as a multipart part,
//! the configured headers, a bounded answer, and which answers are worth a retry.

use std::time::Duration;

use anyhow::Context as _;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::multipart::Part;
use reqwest::{Body, StatusCode};
use tokio_util::io::ReaderStream;
use vmpipe_common::settings::Secret;

use super::{HookError, HookInput};
use crate::error::ResultExt as _;

/// A webhook's answer is a transcript, not a file.
pub(super) const MAX_ANSWER: usize = 1 << 20;

/// Connecting takes at most this long (the whole request: the hook's timeout).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The client a hook posts with: a request (sending the audio, waiting for and reading the
/// answer) takes at most `timeout`.
pub(super) fn client(timeout: Duration) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .user_agent(concat!("vmpipe-worker/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(timeout)
        .build()
        .context("HTTP client")
}

/// The `headers` of a `[[hooks]]` or `[[notify]]` table, marked sensitive (never shown by
/// reqwest or hyper).
pub(crate) fn headers(
    configured: &std::collections::BTreeMap<String, Secret>,
) -> anyhow::Result<HeaderMap> {
    let mut headers = HeaderMap::new();
    for (name, value) in configured {
        let name = HeaderName::from_bytes(name.as_bytes())
            .with_context(|| format!("header name {name:?}"))?;
        let value = sensitive(value.expose()).with_context(|| format!("header {name}"))?;
        headers.insert(name, value);
    }
    Ok(headers)
}

/// A header value that holds a secret.
pub(super) fn sensitive(value: &str) -> Result<HeaderValue, reqwest::header::InvalidHeaderValue> {
    let mut value = HeaderValue::from_str(value)?;
    value.set_sensitive(true);
    Ok(value)
}

/// The run's audio file as a multipart part, streamed from disk, with its file name (whose
/// extension says its format: `.mp3`, `.wav`) and content type.
pub(super) async fn audio_part(input: &HookInput) -> Result<Part, HookError> {
    let file = tokio::fs::File::open(&input.audio_path)
        .await
        .retry_with("opening the audio")?;
    let length = file.metadata().await.retry_with("reading the audio")?.len();
    let file_name = input
        .audio_path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| "audio".into());
    Part::stream_with_length(Body::wrap_stream(ReaderStream::new(file)), length)
        .file_name(file_name)
        .mime_str(&input.audio_content_type)
        .abort_with("audio content type")
}

/// The answer's body, at most `limit` bytes.
pub(super) async fn read_answer(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, HookError> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.retry_with("reading the answer")? {
        body.extend_from_slice(&chunk);
        if body.len() > limit {
            return Err(HookError::retry_because(format!(
                "the answer is over {limit} bytes"
            )));
        }
    }
    Ok(body)
}

/// A failed answer as an error: a server error, 408 and 429 may pass (retry); any other
/// answer will be the same next time (abort).
pub(super) fn status_error(status: StatusCode, message: String) -> HookError {
    let retryable = status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS;
    if retryable {
        HookError::retry_because(message)
    } else {
        HookError::abort_because(message)
    }
}

/// The start of an answer, for an error message.
pub(super) fn snippet(text: &str) -> &str {
    let text = text.trim();
    let mut end = text.len().min(300);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_errors_timeouts_and_rate_limits_are_retried_other_answers_not() {
        for (status, retried) in [
            (500, true),
            (502, true),
            (503, true),
            (408, true),
            (429, true),
            (400, false),
            (401, false),
            (404, false),
            (413, false),
            (302, false),
        ] {
            let error = status_error(StatusCode::from_u16(status).unwrap(), "x".into());
            assert_eq!(error.code() == "retry", retried, "{status}");
        }
    }

    #[test]
    fn a_snippet_is_cut_on_a_character() {
        let long = "é".repeat(400);
        let cut = snippet(&long);
        assert!(cut.len() <= 300 && long.starts_with(cut));
        assert_eq!(snippet("  short \n"), "short");
    }
}
