//! The `openai` hook: POSTs the audio to an OpenAI-compatible speech-to-text server,
//! `POST {url}/v1/audio/transcriptions`, the interface OpenAI, Groq and self-hosted servers
//! (faster-whisper servers, whisper.cpp's server, LocalAI, vLLM) share.
//!
//! The request is `multipart/form-data`: `model`, `response_format=verbose_json`, `language`
//! when set, and `file`, the audio (its name's extension says its format), with the API key as
//! `Authorization: Bearer ...` when there is one. The answer gives the text, the language (a
//! name, stored as its code) and the segments with their times; the confidence comes from the
//! segments' `avg_logprob` (`super::confidence`).
//!
//! A 5xx, 408, 429, a timeout or a connection error is retried; any other 4xx is final, with
//! the server's own message. The API key never appears in a log line or an error: reqwest is
//! told it is sensitive, and a server that quotes it back has it masked.

mod answer;

use anyhow::Context as _;
use futures_util::future::BoxFuture;
use reqwest::header::{AUTHORIZATION, HeaderMap};
use reqwest::multipart::Form;
use vmpipe_common::settings::{HookSettings, redact_url};

use super::http;
use super::{Hook, HookError, HookInput, HookPolicy, Transcript};
use crate::error::ResultExt as _;

/// Added to the server's base URL.
const ENDPOINT: &str = "/v1/audio/transcriptions";

/// The largest answer read: `verbose_json` repeats every segment's tokens, about 0.5 KB per
/// segment of a few seconds, so some 2 MB for a voicemail of four hours.
const MAX_ANSWER: usize = 8 << 20;

pub(super) struct OpenaiHook {
    name: String,
    /// The full endpoint.
    url: String,
    /// `url` with any password in it masked, for messages.
    shown_url: String,
    model: String,
    language: Option<String>,
    /// Masked in the server's messages.
    api_key: Option<String>,
    client: reqwest::Client,
    /// The configured headers and the bearer token, all sensitive.
    headers: HeaderMap,
    policy: HookPolicy,
}

impl OpenaiHook {
    /// Checks the `[[hooks]]` table and reads `api_key_file`: an error here stops the worker
    /// at start-up.
    pub(super) fn new(settings: &HookSettings, policy: HookPolicy) -> anyhow::Result<Self> {
        let base = settings
            .url
            .as_ref()
            .context("an openai hook needs a url")?;
        let url = endpoint(base.expose());
        let model = settings
            .model
            .clone()
            .context("an openai hook needs a model")?;
        let api_key = match (&settings.api_key, &settings.api_key_file) {
            (Some(key), _) => Some(key.expose().trim().to_owned()),
            (None, Some(file)) => Some(crate::secret::read_file(file, "api_key_file")?),
            (None, None) => None,
        };
        let mut headers = http::headers(&settings.headers)?;
        if let Some(key) = &api_key {
            let bearer = http::sensitive(&format!("Bearer {key}"))
                .context("the API key is not a valid header value")?;
            headers.insert(AUTHORIZATION, bearer);
        }
        Ok(Self {
            name: settings.name.clone(),
            shown_url: redact_url(&url),
            url,
            model,
            language: settings.language.clone(),
            api_key,
            client: http::client(policy.timeout)?,
            headers,
            policy,
        })
    }

    async fn post(&self, input: &HookInput) -> Result<Transcript, HookError> {
        let mut form = Form::new()
            .text("model", self.model.clone())
            .text("response_format", "verbose_json");
        if let Some(language) = &self.language {
            form = form.text("language", language.clone());
        }
        let form = form.part("file", http::audio_part(input).await?);
        let response = self
            .client
            .post(&self.url)
            .headers(self.headers.clone())
            .multipart(form)
            .send()
            .await
            .map_err(reqwest::Error::without_url)
            .retry_with(format!("POST {}", self.shown_url))?;
        let status = response.status();
        let body = http::read_answer(response, MAX_ANSWER).await?;
        // Secrets masked in the whole answer first: what is cut out of it below for a message
        // cannot hold part of one.
        let body = self
            .masked(String::from_utf8_lossy(&body).into_owned())
            .into_bytes();
        if !status.is_success() {
            let message = format!(
                "{} answered {status}: {}",
                self.shown_url,
                answer::error_message(&body)
            );
            return Err(http::status_error(status, self.masked(message)));
        }
        answer::transcript(&body).map_err(|why| {
            HookError::retry_because(
                self.masked(format!("{} answered {status} with {why}", self.shown_url)),
            )
        })
    }

    /// `message` with the API key and every configured header's value masked (a server may
    /// quote them back).
    fn masked(&self, mut message: String) -> String {
        let headers = self.headers.values().filter_map(|v| v.to_str().ok());
        for secret in self.api_key.as_deref().into_iter().chain(headers) {
            if secret.len() >= 4 {
                message = message.replace(secret, "***");
            }
        }
        message
    }
}

impl Hook for OpenaiHook {
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

/// The transcription endpoint of the server at `base`: a base that already ends in `/v1`
/// (as OpenAI's client libraries write it) is taken as it is.
fn endpoint(base: &str) -> String {
    let base = base.trim_end_matches('/');
    match base.strip_suffix("/v1") {
        Some(without) => format!("{without}{ENDPOINT}"),
        None => format!("{base}{ENDPOINT}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_endpoint_is_added_to_the_base_url() {
        for (base, url) in [
            (
                "https://api.openai.com",
                "https://api.openai.com/v1/audio/transcriptions",
            ),
            (
                "https://api.openai.com/v1/",
                "https://api.openai.com/v1/audio/transcriptions",
            ),
            (
                "https://api.groq.com/openai",
                "https://api.groq.com/openai/v1/audio/transcriptions",
            ),
            (
                "http://127.0.0.1:8000/",
                "http://127.0.0.1:8000/v1/audio/transcriptions",
            ),
        ] {
            assert_eq!(endpoint(base), url, "{base}");
        }
    }

    fn settings(table: serde_json::Value) -> HookSettings {
        serde_json::from_value(table).unwrap()
    }

    #[test]
    fn the_key_comes_from_its_file_and_is_masked_in_messages() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("key");
        std::fs::write(&file, "sk-from-file-123\n").unwrap();
        let table = serde_json::json!({
            "name": "stt", "kind": "openai", "url": "http://127.0.0.1:1", "model": "whisper-1",
            "api_key_file": file,
        });
        let hook = OpenaiHook::new(&settings(table.clone()), HookPolicy::default()).unwrap();
        assert_eq!(hook.api_key.as_deref(), Some("sk-from-file-123"));
        let bearer = &hook.headers[AUTHORIZATION];
        assert_eq!(bearer.to_str().unwrap(), "Bearer sk-from-file-123");
        assert!(bearer.is_sensitive());
        assert_eq!(
            hook.masked("Incorrect API key provided: sk-from-file-123.".into()),
            "Incorrect API key provided: ***."
        );

        std::fs::write(&file, "\n").unwrap();
        let error = OpenaiHook::new(&settings(table.clone()), HookPolicy::default())
            .err()
            .unwrap();
        assert!(error.to_string().contains("is empty"), "{error}");
        std::fs::remove_file(&file).unwrap();
        let error = OpenaiHook::new(&settings(table), HookPolicy::default())
            .err()
            .unwrap();
        assert!(format!("{error:#}").contains("api_key_file"), "{error:#}");
    }

    #[test]
    fn without_a_key_there_is_no_authorization() {
        let table = serde_json::json!({
            "name": "local", "kind": "openai", "url": "http://127.0.0.1:8000", "model": "small",
        });
        let hook = OpenaiHook::new(&settings(table), HookPolicy::default()).unwrap();
        assert!(!hook.headers.contains_key(AUTHORIZATION));
        assert_eq!(hook.masked("as it is".into()), "as it is");
    }
}
