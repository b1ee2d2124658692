//! The HTTP surface KAZOO's `http` storage handler talks to.
//!
//! - `PUT|POST {prefix}/{key…}`: store ([`store`]: 201 once durable and its job is safe).
//! - `GET|HEAD {prefix}/{key…}`: fetch ([`fetch`], which resolves KAZOO's doubled paths).
//! - `/healthz`, `/readyz`, `/metrics` ([`health`]).
//!
//! This module checks access and finds the key the request names; the handlers do the rest.

mod fetch;
pub(crate) mod health;
mod store;

use actix_web::http::Method;
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use tracing::{debug, warn};
use tracing_actix_web::RequestId;
use vmpipe_common::Storage;

use crate::access::{AccessPolicy, Denied, Presented, TokenAt};
use crate::error::ApiError;
use crate::publisher::Publisher;
use crate::upload::Limits;

pub(crate) struct AppState {
    pub store: std::sync::Arc<dyn Storage>,
    pub jobs: Publisher,
    pub journal: crate::journal::Journal,
    /// Path prefix without trailing slash (empty for `/`).
    pub prefix: String,
    pub limits: Limits,
    pub access: AccessPolicy,
    /// `/metrics` has its own address (`VMPIPE_METRICS_LISTEN`): not served here.
    pub metrics_elsewhere: bool,
    /// Uploads in progress; a full house answers 503 (KAZOO retries).
    pub uploads: std::sync::Arc<tokio::sync::Semaphore>,
}

/// KAZOO sends five short headers; anything near this is not KAZOO.
const MAX_HEADER_BYTES: usize = 16 * 1024;

pub(crate) async fn dispatch(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    request_id: RequestId,
) -> Result<HttpResponse, ApiError> {
    let header_bytes: usize = req
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    // A store or fetch: one access line when it ends (see request_span.rs).
    crate::request_span::note_request(&req, None);
    if header_bytes > MAX_HEADER_BYTES {
        return Err(ApiError::HeadersTooLarge);
    }
    let requested = authorized_key(&req, &state)?;
    crate::request_span::note_key(&req, requested.raw());
    match *req.method() {
        Method::PUT | Method::POST => {
            let Ok(_permit) = state.uploads.clone().try_acquire_owned() else {
                count_upload("busy", "unknown");
                return Err(ApiError::Busy);
            };
            let started = std::time::Instant::now();
            let result = store::store(&req, requested.raw(), payload, &state, request_id).await;
            match &result {
                Ok((_, mode)) => {
                    count_upload("stored", mode.as_str());
                    metrics::histogram!("vmpipe_upload_duration_seconds")
                        .record(started.elapsed().as_secs_f64());
                }
                Err(e) => count_upload(
                    if e.status_code().is_server_error() {
                        "failed"
                    } else {
                        "rejected"
                    },
                    "unknown",
                ),
            }
            result.map(|(response, _)| response)
        }
        Method::GET | Method::HEAD => fetch::fetch(&req, requested.raw(), &state).await,
        _ => Err(ApiError::MethodNotAllowed),
    }
}

fn count_upload(outcome: &'static str, mode: &'static str) {
    metrics::counter!("vmpipe_uploads_total", "outcome" => outcome, "mode" => mode).increment(1);
}

/// The storage key a request names, still percent-encoded: the `key` query parameter when
/// there is one (KAZOO's base URL `.../?token=SECRET&key=`, whatever its path), otherwise the
/// path below the prefix (and below the token segment).
pub(crate) struct RequestedKey {
    raw: String,
    /// Taken from `key=` (where a fetch's doubled key has no `/` between its copies).
    from_query: bool,
}

impl RequestedKey {
    /// The key, still percent-encoded; one given twice through `key=` is given once (see
    /// [`fetch::undouble`]).
    fn raw(&self) -> &str {
        if self.from_query {
            fetch::undouble(&self.raw)
        } else {
            &self.raw
        }
    }
}

/// Checks `req` against the access policy (`first_segment`: the first path segment below the
/// prefix, where a token may be): where the token was found.
pub(crate) fn check_access(
    req: &HttpRequest,
    access: &AccessPolicy,
    first_segment: Option<&str>,
) -> Result<TokenAt, ApiError> {
    if access.is_open() {
        return Ok(TokenAt::None);
    }
    let authorization = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let presented = Presented {
        peer: req.peer_addr().map(|a| a.ip()),
        first_segment,
        query: req.query_string(),
        authorization,
    };
    access.check(&presented).map_err(|denied| {
        // Never the path or query: they may hold the secret.
        if denied == Denied::Network {
            // Explained once in a while per client, not once per request.
            access.explain_refusal(presented.peer);
            debug!(reason = %denied, peer = %presented.peer.map_or_else(String::new, |ip| ip.to_string()), method = %req.method(), "request denied");
        } else {
            warn!(reason = %denied, peer = %presented.peer.map_or_else(String::new, |ip| ip.to_string()), method = %req.method(), "request denied");
        }
        ApiError::Denied(denied)
    })
}

/// Checks access, and returns the storage key the request names.
fn authorized_key(req: &HttpRequest, state: &AppState) -> Result<RequestedKey, ApiError> {
    let below = req
        .uri()
        .path()
        .strip_prefix(state.prefix.as_str())
        .ok_or(ApiError::OutsidePrefix)?;
    // KAZOO puts no `/` between a base URL's path and its query (`.../some_prefix?key=`): the
    // prefix alone is the prefix too.
    let rest = match below {
        "" => "",
        below => below.strip_prefix('/').ok_or(ApiError::OutsidePrefix)?,
    };
    let query = req.query_string();
    let token_at = check_access(req, &state.access, rest.split('/').next())?;
    // A base URL ending in `key=` (`http://host/vm?token=T&key=`) has KAZOO's segment glued onto
    // it, whatever path that URL has: then `key=` is the key, with or without a token.
    let from_query = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("key="))
        .filter(|key| !key.is_empty());
    if let Some(key) = from_query {
        return Ok(RequestedKey {
            raw: key.to_owned(),
            from_query: true,
        });
    }
    let rest = match token_at {
        TokenAt::PathSegment => rest.split_once('/').map_or("", |(_, below)| below),
        _ => rest,
    };
    Ok(RequestedKey {
        raw: rest.to_owned(),
        from_query: false,
    })
}
