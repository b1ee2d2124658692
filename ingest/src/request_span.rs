//! The span of each HTTP request. The path and query are left out on purpose: with an access
//! token they hold the secret. Handlers log the storage key instead.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::{Error, HttpMessage};
use tracing::Span;
use tracing_actix_web::{RequestId, RootSpanBuilder};

use crate::error::ApiError;

pub(crate) struct RequestSpan;

impl RootSpanBuilder for RequestSpan {
    fn on_request_start(request: &ServiceRequest) -> Span {
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
        let (status, error) = match outcome {
            Ok(response) => (response.status(), response.response().error()),
            Err(error) => (error.as_response_error().status_code(), Some(error)),
        };
        span.record("status", status.as_u16());
        if status.is_server_error() {
            // The client got the summary; the log gets the cause (paths below the storage
            // root, never the request's path or query).
            let cause = error.and_then(|e| e.as_error::<ApiError>()).map(chain);
            tracing::warn!(parent: &span, status = status.as_u16(), error = cause.as_deref(), "request failed");
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
