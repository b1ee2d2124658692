//! The HTTP surface KAZOO's `http` storage handler talks to.
//!
//! - `PUT|POST {prefix}/{key…}`: store (201 once durable and its job is safe).
//! - `GET|HEAD {prefix}/{key…}`: fetch. KAZOO ≥ 4.3.106 asks for `{prefix}/{key}/{key'}?{meta}`
//!   (its URL segment twice, the second copy from the current storage plan), older KAZOO for
//!   `{prefix}/{key}`: both resolve to the stored key that starts the path. The query string is
//!   informational and ignored. Only 200 counts as success to KAZOO.

use actix_web::body::SizedStream;
use actix_web::http::Method;
use actix_web::{HttpRequest, HttpResponse, web};
use tracing::info;
use tracing_actix_web::RequestId;
use vmpipe_common::job::JOB_SCHEMA_VERSION;
use vmpipe_common::key::decode_path;
use vmpipe_common::{KeyError, PathFacts, Storage, StorageKey, VoicemailJob};

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
}

pub async fn dispatch(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    request_id: RequestId,
) -> Result<HttpResponse, ApiError> {
    match *req.method() {
        Method::PUT | Method::POST => store(&req, payload, &state, request_id).await,
        Method::GET | Method::HEAD => fetch(&req, &state).await,
        _ => Err(ApiError::MethodNotAllowed),
    }
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

/// The raw (still percent-encoded) part of the path after the prefix.
fn path_below_prefix<'a>(req: &'a HttpRequest, prefix: &str) -> Result<&'a str, ApiError> {
    req.uri()
        .path()
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('/'))
        .ok_or(ApiError::OutsidePrefix)
}

async fn store(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
    request_id: RequestId,
) -> Result<HttpResponse, ApiError> {
    let key = StorageKey::from_segments(decode_path(path_below_prefix(req, &state.prefix)?)?)?;
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
        sha256: received.sha256,
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
    Ok(HttpResponse::Created().json(serde_json::json!({
        "storage_key": job.storage_key,
        "size_bytes": job.size_bytes,
        "sha256": job.sha256,
    })))
}

async fn fetch(req: &HttpRequest, state: &AppState) -> Result<HttpResponse, ApiError> {
    let segments = match decode_path(path_below_prefix(req, &state.prefix)?) {
        Err(KeyError::Empty) => return Err(ApiError::NotFound),
        other => other?,
    };
    let key = state
        .store
        .find_prefix(segments)
        .await?
        .ok_or(ApiError::NotFound)?;
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
