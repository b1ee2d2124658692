//! The span of each HTTP request, and its access-log line. The path and query are left out on
//! purpose: with an access token they hold the secret. The line names the storage key instead,
//! which the handlers note on the request ([`note_key`], [`note_bytes`]).
//!
//! A store or fetch (anything the storage routes answer) gets one line at `info` when it ends:
//! `method`, `client`, `key`, `status`, `bytes` (stored or served), `duration_ms`, and for an
//! error its `code` (the `error` of the JSON body) and `error` (the cause chain). A 5xx is the
//! same line at `warn` (`request failed`): a failure is logged once, here. A refusal (401,
//! 403) is an `info` access line: its warning is the access check's (`routes::check_access`).
//! `/healthz`, `/readyz` and `/metrics` are logged at `debug`.

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::{Error, HttpMessage, HttpRequest};
use tracing::Span;
use tracing_actix_web::{RequestId, RootSpanBuilder};

use crate::error::ApiError;

pub(crate) struct RequestSpan;

/// When the request started (in the request's extensions).
#[derive(Clone, Copy)]
struct Started(Instant);

/// What a storage route learnt about the request: it gets an access line.
#[derive(Clone, Default)]
struct Access {
    key: Option<String>,
    bytes: Option<u64>,
}

/// Marks `req` as a store or fetch (it gets an `info` access line), with the key it names so
/// far (still percent-encoded, below the token: never the secret).
pub(crate) fn note_request(req: &HttpRequest, key: Option<&str>) {
    req.extensions_mut().insert(Access {
        key: key.filter(|k| !k.is_empty()).map(str::to_owned),
        bytes: None,
    });
}

/// The storage key the request resolved to (the stored key of a fetch).
pub(crate) fn note_key(req: &HttpRequest, key: &str) {
    let mut extensions = req.extensions_mut();
    let access = extensions.get_mut::<Access>();
    match access {
        Some(access) => access.key = Some(key.to_owned()),
        None => drop(extensions.insert(Access {
            key: Some(key.to_owned()),
            bytes: None,
        })),
    }
}

/// Bytes stored (a store) or served (a fetch).
pub(crate) fn note_bytes(req: &HttpRequest, bytes: u64) {
    if let Some(access) = req.extensions_mut().get_mut::<Access>() {
        access.bytes = Some(bytes);
    }
}

impl RootSpanBuilder for RequestSpan {
    fn on_request_start(request: &ServiceRequest) -> Span {
        request.extensions_mut().insert(Started(Instant::now()));
        let request_id = request.extensions().get::<RequestId>().copied();
        tracing::info_span!(
            "request",
            method = %request.method(),
            peer = request.peer_addr().map(|a| a.ip().to_string()).unwrap_or_default(),
            request_id = request_id.map(|id| id.to_string()).unwrap_or_default(),
            status = tracing::field::Empty,
        )
    }

    fn on_request_end<B: MessageBody>(span: Span, outcome: &Result<ServiceResponse<B>, Error>) {
        let response = match outcome {
            Ok(response) => response,
            Err(error) => {
                // An error no handler turned into a response (none of ours): no request left.
                let status = error.as_response_error().status_code();
                span.record("status", status.as_u16());
                if status.is_server_error() {
                    tracing::warn!(parent: &span, status = status.as_u16(), error = %error,
                        "request failed");
                }
                return;
            }
        };
        let status = response.status();
        span.record("status", status.as_u16());
        let request = response.request();
        let extensions = request.extensions();
        let duration_ms = extensions
            .get::<Started>()
            .map(|started| started.0.elapsed().as_secs_f64() * 1000.0);
        let api_error = response
            .response()
            .error()
            .and_then(|e| e.as_error::<ApiError>());
        let code = api_error.map(ApiError::code);
        // The client got the summary; the log gets the cause (paths below the storage root,
        // never the request's path or query).
        let error = api_error.map(chain);
        let method = request.method().as_str();
        let client = request.peer_addr().map(|a| a.ip().to_string());
        let request_id = extensions.get::<RequestId>().map(ToString::to_string);
        let access = extensions.get::<Access>();
        let key = access.and_then(|a| a.key.as_deref());
        let bytes = access.and_then(|a| a.bytes);
        let status = status.as_u16();
        if (500..600).contains(&status) {
            tracing::warn!(parent: &span, method, client, key, status, bytes, duration_ms,
                request_id, code, error, "request failed");
        } else if access.is_some() {
            tracing::info!(parent: &span, method, client, key, status, bytes, duration_ms,
                request_id, code, error, "request");
        } else {
            tracing::debug!(parent: &span, method, client, status, duration_ms, code, error,
                "request");
        }
    }
}

/// An error and its causes, `: `-separated.
fn chain(error: &ApiError) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
