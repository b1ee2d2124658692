//! The HTTP surface KAZOO's `http` storage handler talks to.
//!
//! - `PUT|POST {prefix}/{key…}`: store (201 once durable and its job is safe).
//! - `GET|HEAD {prefix}/{key…}`: fetch. KAZOO ≥ 4.3.106 asks for `{prefix}/{key}/{key'}?{meta}`
//!   (its URL segment twice, the second copy from the current storage plan), older KAZOO for
//!   `{prefix}/{key}`: both resolve to the stored key that starts the path. The query string is
//!   informational and ignored. Only 200 counts as success to KAZOO.

use actix_web::body::SizedStream;
use actix_web::http::Method;
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use tracing::{info, warn};
use tracing_actix_web::RequestId;
use vmpipe_common::job::JOB_SCHEMA_VERSION;
use vmpipe_common::key::{decode_path, validate_segments};
use vmpipe_common::{KeyError, PathFacts, Storage, StorageKey, UploadMode, VoicemailJob};

use crate::access::{AccessPolicy, Presented, TokenAt};
use crate::error::ApiError;
use crate::queue::JobQueue;
use crate::upload::{self, Limits};

pub struct AppState {
    pub store: std::sync::Arc<dyn Storage>,
    pub jobs: JobQueue,
    pub journal: crate::journal::Journal,
    /// Path prefix without trailing slash (empty for `/`).
    pub prefix: String,
    pub limits: Limits,
    pub access: AccessPolicy,
    /// Uploads in progress; a full house answers 503 (KAZOO retries).
    pub uploads: std::sync::Arc<tokio::sync::Semaphore>,
}

/// KAZOO sends five short headers; anything near this is not KAZOO.
const MAX_HEADER_BYTES: usize = 16 * 1024;

pub async fn dispatch(
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
    if header_bytes > MAX_HEADER_BYTES {
        return Err(ApiError::HeadersTooLarge);
    }
    let raw_key = authorized_key(&req, &state)?;
    match *req.method() {
        Method::PUT | Method::POST => {
            let Ok(_permit) = state.uploads.clone().try_acquire_owned() else {
                count_upload("busy", "unknown");
                return Err(ApiError::Busy);
            };
            let started = std::time::Instant::now();
            let result = store(&req, &raw_key, payload, &state, request_id).await;
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
        Method::GET | Method::HEAD => fetch(&raw_key, &state).await,
        _ => Err(ApiError::MethodNotAllowed),
    }
}

fn count_upload(outcome: &'static str, mode: &'static str) {
    metrics::counter!("vmpipe_uploads_total", "outcome" => outcome, "mode" => mode).increment(1);
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics_endpoint() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(vmpipe_common::metrics::handle().render())
}

/// `GET /healthz`: the process is alive.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "alive" }))
}

/// `GET /readyz`: uploads can be accepted: storage is writable, and jobs are either confirmed
/// by RabbitMQ or journaled on local disk until it is back.
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let storage = state.store.check_writable().await;
    let journaled = state.journal.pending().await.map(|p| p.len()).ok();
    let connected = state.jobs.is_connected();
    let body = serde_json::json!({
        "ready": storage.is_ok(),
        "storage": storage.as_ref().map_or_else(|e| e.to_string(), |()| "ok".to_owned()),
        "rabbitmq": if connected { "connected" } else { "unreachable: jobs are journaled" },
        "journaled_jobs": journaled,
    });
    if storage.is_ok() {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// Checks access, and returns the raw (still percent-encoded) storage key the request names:
/// the path below the prefix (and below the token segment), or, with KAZOO's base URL
/// `.../?token=SECRET&key=`, the `key` query parameter.
fn authorized_key(req: &HttpRequest, state: &AppState) -> Result<String, ApiError> {
    let rest = req
        .uri()
        .path()
        .strip_prefix(state.prefix.as_str())
        .and_then(|rest| rest.strip_prefix('/'))
        .ok_or(ApiError::OutsidePrefix)?;
    let query = req.query_string();
    let token_at = if state.access.is_open() {
        TokenAt::None
    } else {
        let authorization = req
            .headers()
            .get(actix_web::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let presented = Presented {
            peer: req.peer_addr().map(|a| a.ip()),
            first_segment: rest.split('/').next(),
            query,
            authorization,
        };
        state.access.check(&presented).inspect_err(|denied| {
            // Never the path or query: they may hold the secret.
            warn!(reason = %denied, peer = ?presented.peer, method = %req.method(), "request denied");
        })?
    };
    let rest = match token_at {
        TokenAt::PathSegment => rest.split_once('/').map_or("", |(_, below)| below),
        _ => rest,
    };
    if !rest.is_empty() {
        return Ok(rest.to_owned());
    }
    let from_query = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("key="))
        .unwrap_or_default();
    // A fetch from KAZOO >= 4.3.106 glues its segment on twice: `key=A/D/NA/D/N`.
    let half = from_query.len() / 2;
    if from_query.len() % 2 == 0
        && half > 0
        && from_query.is_char_boundary(half)
        && from_query[..half] == from_query[half..]
    {
        return Ok(from_query[..half].to_owned());
    }
    Ok(from_query.to_owned())
}

async fn store(
    req: &HttpRequest,
    raw_key: &str,
    payload: web::Payload,
    state: &AppState,
    request_id: RequestId,
) -> Result<(HttpResponse, UploadMode), ApiError> {
    let key = StorageKey::from_segments(decode_path(raw_key)?)?;
    let writer = state.store.create(&key);
    let (writer, received) = upload::receive(req, payload, writer, &state.limits).await?;
    writer.commit().await?;

    let facts = PathFacts::from_segments(key.segments());
    let info = received.info;
    let document_id = info
        .kazoo_document
        .as_ref()
        .and_then(|doc| doc.get("id"))
        .and_then(|id| id.as_str())
        .map(str::to_owned)
        .or(info.document_part_name)
        .or(facts.document_id);
    let job = VoicemailJob {
        schema_version: JOB_SCHEMA_VERSION,
        job_id: uuid::Uuid::now_v7(),
        storage_key: key.as_str().to_owned(),
        account_id: facts.account_id,
        document_id,
        attachment_name: info.file_part_name.unwrap_or(facts.attachment_name),
        content_type: info.content_type,
        size_bytes: received.size,
        sha256: None,
        received_at: chrono::Utc::now(),
        upload_mode: info.mode,
        kazoo_document: info.kazoo_document,
        request_id: request_id.to_string(),
    };
    let enqueued = state.jobs.enqueue(&job).await?;
    info!(
        storage_key = %job.storage_key,
        size_bytes = job.size_bytes,
        upload_mode = job.upload_mode.as_str(),
        job_id = %job.job_id,
        ?enqueued,
        "voicemail stored"
    );
    metrics::counter!("vmpipe_upload_bytes_total").increment(job.size_bytes);
    let response = HttpResponse::Created().json(serde_json::json!({
        "storage_key": job.storage_key,
        "size_bytes": job.size_bytes,
    }));
    Ok((response, job.upload_mode))
}

async fn fetch(raw_key: &str, state: &AppState) -> Result<HttpResponse, ApiError> {
    let segments = match decode_path(raw_key) {
        Err(KeyError::Empty) => return Err(ApiError::NotFound),
        other => other?,
    };
    // All of the path, not just the part that resolves: `KEY/../x` is refused, not served.
    validate_segments(&segments)?;
    let Some(key) = state.store.find_prefix(segments).await? else {
        metrics::counter!("vmpipe_fetches_total", "outcome" => "not_found").increment(1);
        return Err(ApiError::NotFound);
    };
    metrics::counter!("vmpipe_fetches_total", "outcome" => "found").increment(1);
    let object = state.store.open(&key).await?.ok_or(ApiError::NotFound)?;
    Ok(HttpResponse::Ok()
        .content_type(content_type_for(key.file_name()))
        .body(SizedStream::new(object.size, object.body)))
}

/// KAZOO ignores the response type (it kept the one it uploaded with); this is for people.
fn content_type_for(file_name: &str) -> &'static str {
    let extension = file_name
        .rsplit_once('.')
        .map(|(_, ext)| ext.to_ascii_lowercase());
    match extension.as_deref() {
        Some("mp3") => "audio/mpeg",
        Some("wav") => "audio/wav",
        Some("mp4") => "video/mp4",
        Some("txt") => "text/plain",
        _ => "application/octet-stream",
    }
}
