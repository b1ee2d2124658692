//! The `webhook` sink: POSTs each event as JSON, signed.
//!
//! `X-Vmpipe-Timestamp` is the time of sending in Unix seconds, and `X-Vmpipe-Signature` is
//! `v1=` and the lower-case hex HMAC-SHA256, keyed with the sink's `secret`, of the timestamp,
//! a `.`, and the body exactly as sent. A receiver recomputes it, compares in constant time,
//! and refuses a timestamp far from its clock (a replayed request). A 2xx is delivered; a 5xx,
//! 408, 429, a timeout or a refused connection is retried; any other answer is final.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use futures_util::future::BoxFuture;
use hmac::{Hmac, KeyInit as _, Mac as _};
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, HeaderMap};
use sha2::Sha256;
use vmpipe_common::logging::chain as error_chain;
use vmpipe_common::settings::NotifySettings;

use super::{DeliveryError, Event, Sink};

pub const SIGNATURE_HEADER: &str = "x-vmpipe-signature";
pub const TIMESTAMP_HEADER: &str = "x-vmpipe-timestamp";
const EVENT_ID_HEADER: &str = "x-vmpipe-event-id";
const EVENT_TYPE_HEADER: &str = "x-vmpipe-event";
/// Connecting takes at most this long (the whole request: the sink's `timeout_ms`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How much of a refusing answer's body goes into `last_error`.
const ERROR_BODY: usize = 300;

pub(super) struct WebhookSink {
    url: String,
    secret: String,
    headers: HeaderMap,
    client: reqwest::Client,
}

/// `v1=` and the hex HMAC-SHA256 of `{timestamp}.{body}` under `secret`: the value of
/// [`SIGNATURE_HEADER`].
pub fn signature(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1={}", hex::encode(mac.finalize().into_bytes()))
}

impl WebhookSink {
    pub(super) fn new(settings: &NotifySettings) -> anyhow::Result<Self> {
        let url = settings
            .url
            .as_ref()
            .context("a webhook sink needs a url")?;
        let secret = super::secret_value(
            settings.secret.as_ref(),
            settings.secret_file.as_deref(),
            "secret_file",
        )?
        .context("a webhook sink needs a secret")?;
        anyhow::ensure!(
            secret.len() >= 16,
            "the webhook secret must be at least 16 characters"
        );
        let headers = crate::hooks::http::headers(&settings.headers)?;
        let client = reqwest::Client::builder()
            .user_agent(concat!("vmpipe-worker/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(CONNECT_TIMEOUT.min(settings.timeout()))
            .timeout(settings.timeout())
            // A redirected POST is not the request that was signed for this URL.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .context("HTTP client")?;
        Ok(Self {
            url: url.expose().to_owned(),
            secret,
            headers,
            client,
        })
    }

    async fn post(&self, event: &Event) -> Result<(), DeliveryError> {
        let body = serde_json::to_vec(event).expect("an event serialises");
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |t| t.as_secs());
        let response = self
            .client
            .post(&self.url)
            .headers(self.headers.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(TIMESTAMP_HEADER, timestamp.to_string())
            .header(
                SIGNATURE_HEADER,
                signature(self.secret.as_bytes(), timestamp, &body),
            )
            .header(EVENT_ID_HEADER, event.event_id.to_string())
            .header(EVENT_TYPE_HEADER, &event.kind)
            .body(body)
            .send()
            .await
            .map_err(|e| {
                // Whatever went wrong on the way (no connection, a timeout) may go right. The
                // URL stays out of the message (it may carry a token).
                DeliveryError::retry(format!("POST failed: {}", error_chain(&e.without_url())))
            })?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let retry = status.is_server_error()
            || status == StatusCode::REQUEST_TIMEOUT
            || status == StatusCode::TOO_MANY_REQUESTS;
        // Only the start of the answer is read (a receiver's error page can be anything).
        let mut response = response;
        let mut body = Vec::new();
        while body.len() < ERROR_BODY * 4
            && let Ok(Some(chunk)) = response.chunk().await
        {
            body.extend_from_slice(&chunk);
        }
        let body = String::from_utf8_lossy(&body);
        let mut snippet: String = body.chars().take(ERROR_BODY).collect();
        if snippet.len() < body.len() {
            snippet.push('…');
        }
        let message = format!("the webhook answered {status}: {}", snippet.trim());
        Err(DeliveryError { message, retry })
    }
}

impl Sink for WebhookSink {
    fn deliver<'a>(&'a self, event: &'a Event) -> BoxFuture<'a, Result<(), DeliveryError>> {
        Box::pin(self.post(event))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_dot_body() {
        // Computed independently, with Python's hmac module:
        // hmac.new(b"0123456789abcdef", b"1800000000.{}", "sha256").hexdigest()
        assert_eq!(
            super::signature(b"0123456789abcdef", 1_800_000_000, b"{}"),
            "v1=1313ae9c874eb1a0868ad0b65f841c4243c23fdcfad69a3ada227726fad9960e"
        );
    }
}
