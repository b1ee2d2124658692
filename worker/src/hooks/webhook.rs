//! The `webhook` hook: POSTs the voicemail to a URL and reads the transcript from the answer.
//!
//! The request is `multipart/form-data` with two parts: `voicemail`, the [`HookInput`] as JSON,
//! and `audio`, the audio file (streamed from disk). The configured headers are added. The
//! answer must be a 2xx with a JSON body `{"text": ..., "language": ..., "confidence": ...}`
//! (`language` and `confidence` optional). A 4xx other than 408 and 429 is final; anything else
//! (a 5xx, a timeout, a refused connection) is retried.

use futures_util::future::BoxFuture;
use reqwest::multipart::{Form, Part};
use reqwest::{Body, StatusCode};
use tokio_util::io::ReaderStream;
use vmpipe_common::settings::HookSettings;

use super::{Hook, HookError, HookInput, HookPolicy, Transcript};
use crate::error::ResultExt as _;

/// An answer is a transcript, not a file.
const MAX_ANSWER: usize = 1 << 20;

pub(super) struct WebhookHook {
    name: String,
    url: String,
    client: reqwest::Client,
    headers: reqwest::header::HeaderMap,
    policy: HookPolicy,
}

impl WebhookHook {
    /// Checks the `[[hooks]]` table: an error here stops the worker at start-up.
    pub(super) fn new(settings: &HookSettings, policy: HookPolicy) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let url = settings.url.as_ref().context("a webhook needs a url")?;
        let mut headers = reqwest::header::HeaderMap::new();
        for (name, value) in &settings.headers {
            let name = reqwest::header::HeaderName::from_bytes(name.as_bytes())
                .with_context(|| format!("header name {name:?}"))?;
            let mut value = reqwest::header::HeaderValue::from_str(value.expose())
                .with_context(|| format!("header {name}"))?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        let client = reqwest::Client::builder()
            .user_agent(concat!("vmpipe-worker/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(std::time::Duration::from_secs(10))
            .build()
            .context("HTTP client")?;
        Ok(Self {
            name: settings.name.clone(),
            url: url.expose().to_owned(),
            client,
            headers,
            policy,
        })
    }

    async fn post(&self, input: &HookInput) -> Result<Transcript, HookError> {
        let json = serde_json::to_vec(input).expect("serialisable input");
        let file = tokio::fs::File::open(&input.audio_path)
            .await
            .retry_with("opening the audio")?;
        let length = file.metadata().await.retry_with("reading the audio")?.len();
        let file_name = input
            .audio_path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_else(|| "audio".into());
        let audio = Part::stream_with_length(Body::wrap_stream(ReaderStream::new(file)), length)
            .file_name(file_name)
            .mime_str(&input.audio_content_type)
            .abort_with("audio content type")?;
        let voicemail = Part::bytes(json)
            .mime_str("application/json")
            .expect("valid mime");
        let form = Form::new()
            .part("voicemail", voicemail)
            .part("audio", audio);
        let response = self
            .client
            .post(&self.url)
            .headers(self.headers.clone())
            .multipart(form)
            .send()
            .await
            .retry_with("POST failed")?;
        let status = response.status();
        let body = read_answer(response).await?;
        let body_text = String::from_utf8_lossy(&body);
        if !status.is_success() {
            let message = format!("webhook answered {status}: {}", snippet(&body_text));
            let retryable = status.is_server_error()
                || status == StatusCode::REQUEST_TIMEOUT
                || status == StatusCode::TOO_MANY_REQUESTS;
            return Err(if retryable {
                HookError::retry_because(message)
            } else {
                HookError::abort_because(message)
            });
        }
        let answer = serde_json::from_slice::<serde_json::Value>(&body).map_err(|e| {
            HookError::retry_because(format!(
                "webhook answered {status} without a JSON transcript ({e}): {}",
                snippet(&body_text)
            ))
        })?;
        super::transcript_from_json(answer).map_err(|why| {
            HookError::retry_because(format!("webhook answered {status} with {why}"))
        })
    }
}

impl Hook for WebhookHook {
    fn name(&self) -> &str {
        &self.name
    }

    fn policy(&self) -> HookPolicy {
        self.policy
    }

    fn run<'a>(&'a self, input: &'a HookInput) -> BoxFuture<'a, Result<Transcript, HookError>> {
        Box::pin(self.post(input))
    }
}

async fn read_answer(mut response: reqwest::Response) -> Result<Vec<u8>, HookError> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.retry_with("reading the answer")? {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_ANSWER {
            return Err(HookError::retry_because(format!(
                "the answer is over {MAX_ANSWER} bytes"
            )));
        }
    }
    Ok(body)
}

fn snippet(text: &str) -> &str {
    let text = text.trim();
    let mut end = text.len().min(300);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}
