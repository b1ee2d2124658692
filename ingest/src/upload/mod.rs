//! Reading an upload body as KAZOO sends it and streaming the file into storage.
//!
//! - Any content type but `multipart/*`: the body is the file, stored byte for byte (never
//!   base64-decoded: KAZOO only base64-encodes inside multipart).
//! - `multipart/*` (KAZOO ≥ 4.3.21 sends `form-data`, 4.3.17-4.3.20 sent `mixed` without a
//!   boundary parameter): a JSON part with KAZOO's document, then the file part, possibly
//!   base64 (`base64_encode_data`, which adds no header saying so). Parts are told apart by
//!   position and content type, never by name.

mod base64;
mod document;
mod multipart;
mod part_name;
mod stream;

use std::cell::Cell;
use std::rc::Rc;

use actix_web::HttpRequest;
use actix_web::http::header::{self, HeaderMap};
use futures_util::StreamExt;
use vmpipe_common::settings::Base64Mode;
use vmpipe_common::{ObjectWriter, UploadMode};

use crate::error::ApiError;

pub(crate) use document::{Document, Dropped};
pub use multipart::fuzz_multipart;
use multipart::receive_multipart;
use stream::{Body, Cutoff, FileSink, limit_stream, payload_error};

/// What was received.
#[derive(Debug)]
pub(crate) struct Received {
    /// Size of the stored (decoded) file.
    pub size: u64,
    /// What the body said about the file.
    pub info: BodyInfo,
}

/// What the body said about the file.
#[derive(Debug)]
pub(crate) struct BodyInfo {
    pub mode: UploadMode,
    pub content_type: Option<String>,
    /// The `name=` of the file part (KAZOO: the attachment name).
    pub file_part_name: Option<String>,
    /// The `name=` of the JSON part (KAZOO: the document id).
    pub document_part_name: Option<String>,
    /// KAZOO's document (the JSON part), or why it was dropped.
    pub kazoo_document: Option<Result<Document, Dropped>>,
}

pub(crate) struct Limits {
    pub max_body: u64,
    pub base64: Base64Mode,
    /// Longest silence between two pieces of a body.
    pub body_timeout: std::time::Duration,
    /// Longest time a whole body may take.
    pub upload_deadline: std::time::Duration,
    /// Largest KAZOO document kept.
    pub max_document: usize,
}

/// Reads the whole body into `writer` (not yet committed) and describes it.
pub(crate) async fn receive(
    req: &HttpRequest,
    payload: actix_web::web::Payload,
    writer: Box<dyn ObjectWriter>,
    limits: &Limits,
) -> Result<(Box<dyn ObjectWriter>, Received), ApiError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limits.max_body) {
        return Err(ApiError::TooLarge {
            limit: limits.max_body,
        });
    }
    let cutoff = Rc::new(Cell::new(None));
    let body = limit_stream(payload, limits, cutoff.clone());
    let mut sink = FileSink { writer, size: 0 };
    let content_type = header_str(req.headers(), header::CONTENT_TYPE);
    let declared_multipart = content_type.as_deref().is_some_and(|ct| {
        ct.trim_start()
            .to_ascii_lowercase()
            .starts_with("multipart/")
    });
    let multipart = content_type
        .as_deref()
        .and_then(|ct| ct.parse::<mime::Mime>().ok())
        .filter(|m| m.type_() == mime::MULTIPART);
    if declared_multipart && multipart.is_none() {
        return Err(ApiError::BadMultipart(
            "unparseable multipart content type".into(),
        ));
    }

    let result = match multipart {
        None => receive_raw(body, &mut sink).await.map(|()| BodyInfo {
            mode: UploadMode::Raw,
            content_type,
            file_part_name: None,
            document_part_name: None,
            kazoo_document: None,
        }),
        Some(mime) => receive_multipart(&mime, body, &mut sink, limits).await,
    };
    let info = match (result, cutoff.get()) {
        (Err(_), Some(Cutoff::TooLarge)) => {
            return Err(ApiError::TooLarge {
                limit: limits.max_body,
            });
        }
        (Err(_), Some(Cutoff::Stalled)) => {
            return Err(ApiError::BodyTimeout(limits.body_timeout.as_secs()));
        }
        (Err(_), Some(Cutoff::Deadline)) => {
            return Err(ApiError::BodyDeadline(limits.upload_deadline.as_secs()));
        }
        (other, _) => other?,
    };
    let received = Received {
        size: sink.size,
        info,
    };
    Ok((sink.writer, received))
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

async fn receive_raw(mut body: Body, sink: &mut FileSink) -> Result<(), ApiError> {
    while let Some(chunk) = body.next().await {
        sink.put(chunk.map_err(payload_error)?).await?;
    }
    Ok(())
}
