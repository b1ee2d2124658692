//! `PUT|POST {prefix}/{key…}`: the upload is streamed into storage and committed, then its job
//! is appended to the journal (on disk, with the other uploads' of that moment; with a bucket,
//! also confirmed by RabbitMQ or the publish timeout passed), and only then answered 201. A job that cannot be made durable (the journal's disk full) takes the commit
//! back: no file is visible under a key without its job, and KAZOO retries the upload.

use actix_web::{HttpRequest, HttpResponse, web};
use tracing::{error, info, warn};
use tracing_actix_web::RequestId;
use vmpipe_common::job::JOB_SCHEMA_VERSION;
use vmpipe_common::key::decode_path;
use vmpipe_common::{PathFacts, StorageKey, UploadMode, VoicemailJob};

use vmpipe_common::store::Committed;

use super::AppState;
use crate::error::ApiError;
use crate::publisher::{Enqueued, Publisher};
use crate::upload;

/// Makes `job` durable in the journal and keeps the commit, or takes the commit back when the
/// job cannot be recorded.
async fn record_job(
    jobs: Publisher,
    committed: Box<dyn Committed>,
    key: StorageKey,
    job: VoicemailJob,
    payload: Vec<u8>,
) -> Result<(Enqueued, VoicemailJob), ApiError> {
    let enqueued = match jobs.enqueue(&job, payload).await {
        Ok(enqueued) => enqueued,
        Err(e) => {
            let e = ApiError::from(e);
            match committed.revoke().await {
                Ok(revoked) => warn!(storage_key = %key, error_code = e.code(), error = %e,
                    cause = %std::error::Error::source(&e).map(ToString::to_string).unwrap_or_default(),
                    revoked = revoked.as_str(), "the job could not be recorded: upload refused and taken back"),
                Err(undo) => error!(storage_key = %key, error_code = e.code(), error = %e,
                    undo_error = %undo,
                    "the job could not be recorded, nor the file taken back: run `worker reconcile`"),
            }
            return Err(e);
        }
    };
    if let Err(e) = committed.keep().await {
        // Only the link to the replaced version is left over; removed with stale temp files.
        warn!(storage_key = %key, error = %e, "could not remove the replaced version's link");
    }
    Ok((enqueued, job))
}

/// The fewest segments a stored key has (KAZOO's shortest layout is three).
const MIN_STORE_SEGMENTS: usize = 2;

pub(super) async fn store(
    req: &HttpRequest,
    raw_key: &str,
    payload: web::Payload,
    state: &AppState,
    request_id: RequestId,
) -> Result<(HttpResponse, UploadMode), ApiError> {
    let segments = decode_path(raw_key)?;
    // KAZOO stores `{account}/{document}/{attachment}` (or longer). A shorter key is a storage
    // URL that lost KAZOO's segment (a base URL with a query but no `key=`, a prefix that is
    // not set): taking it would put every upload on the same file.
    if segments.len() < MIN_STORE_SEGMENTS {
        return Err(ApiError::KeyTooShort(segments.len()));
    }
    let key = StorageKey::from_segments(segments)?;
    crate::request_span::note_key(req, key.as_str());
    let writer = state.store.create(&key);
    let (writer, received) = upload::receive(req, payload, writer, &state.limits).await?;
    let committed = writer.commit().await?;

    let facts = PathFacts::from_segments(key.segments());
    let info = received.info;
    let document = match info.kazoo_document {
        Some(Ok(document)) => Some(document),
        Some(Err(dropped)) => {
            // The audio matters more than its description: stored, indexed without it.
            warn!(storage_key = %key, reason = dropped.as_str(),
                "KAZOO document dropped; the voicemail is stored without it");
            metrics::counter!("vmpipe_documents_dropped_total", "reason" => dropped.as_str())
                .increment(1);
            None
        }
        None => None,
    };
    let document_id = document
        .as_ref()
        .and_then(|doc| doc.id.clone())
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
        // Spliced into the payload as the text it came as (see upload/document.rs).
        kazoo_document: None,
        request_id: request_id.to_string(),
    };
    let payload = match &document {
        Some(document) => document.splice_into(job.to_json()),
        None => job.to_json(),
    };
    // A task of its own: a client that goes away (the request's future dropped) must not stop
    // it between the commit and the job being recorded, or the commit being taken back.
    let recorded =
        actix_web::rt::spawn(record_job(state.jobs.clone(), committed, key, job, payload));
    let (enqueued, job) = match recorded.await {
        Ok(recorded) => recorded?,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // The runtime is stopping.
        Err(_) => return Err(ApiError::Busy),
    };
    info!(
        storage_key = %job.storage_key,
        size_bytes = job.size_bytes,
        upload_mode = job.upload_mode.as_str(),
        job_id = %job.job_id,
        enqueued = enqueued.as_str(),
        "voicemail stored"
    );
    metrics::counter!("vmpipe_upload_bytes_total").increment(job.size_bytes);
    crate::request_span::note_bytes(req, job.size_bytes);
    let response = HttpResponse::Created().json(serde_json::json!({
        "storage_key": job.storage_key,
        "size_bytes": job.size_bytes,
    }));
    Ok((response, job.upload_mode))
}
