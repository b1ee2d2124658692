//! The `webhook` hook: POSTs the voicemail to a URL and reads the transcript from the answer.
//!
//! The request is `multipart/form-data` with two parts: `voicemail`, the [`HookInput`] as JSON,
//! and `audio`, the audio file (streamed from disk). The configured headers are added. The
//! answer must be a 2xx with a JSON body `{"text": ..., "language": ..., "confidence": ...}`
//! (`language` and `confidence` optional). A 4xx other than 408 and 429 is final; anything else
//! (a 5xx, a timeout, a refused connection) is retried.

use futures_util::future::BoxFuture;
use reqwest::multipart::{Form, Part};
use vmpipe_common::settings::HookSettings;

use super::http::{self, snippet};
use super::{Hook, HookError, HookInput, HookPolicy, Transcript};
use crate::error::ResultExt as _;

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
        Ok(Self {
            name: settings.name.clone(),
            url: url.expose().to_owned(),
            client: http::client(policy.timeout)?,
            headers: http::headers(&settings.headers)?,
            policy,
        })
    }

    async fn post(&self, input: &HookInput) -> Result<Transcript, HookError> {
        let json = serde_json::to_vec(input).expect("serialisable input");
        let audio = http::audio_part(input).await?;
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
        let body = http::read_answer(response, http::MAX_ANSWER).await?;
        let body_text = String::from_utf8_lossy(&body);
        if !status.is_success() {
            let message = format!("webhook answered {status}: {}", snippet(&body_text));
            return Err(http::status_error(status, message));
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
