//! Errors a request can end with, and the status KAZOO gets for each.
//!
//! Only codes KAZOO's `kz_http_util:http_code_to_status_line/1` knows are used (400-431, 444,
//! 451, 499, 500-508, 510, 511, 599): any other code crashes KAZOO's storage process.
//! Bodies are a short JSON object: `{"error": "<stable code>", "message": "<text>"}`.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use vmpipe_common::{KeyError, StorageError};

use crate::access::Denied;
use crate::journal::JournalError;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    #[error("bad path: {0}")]
    BadPath(#[from] KeyError),
    #[error("path is outside the storage prefix")]
    OutsidePrefix,
    #[error(
        "a file is stored under at least two path segments (KAZOO sends \
         account/document/attachment), this path has {0}: check the storage URL (a query needs \
         `key=` last) and VMPIPE_PATH_PREFIX"
    )]
    KeyTooShort(usize),
    #[error("request body is larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("request body ended early: {0}")]
    Incomplete(String),
    #[error("malformed multipart body: {0}")]
    BadMultipart(String),
    #[error("file part is not valid base64: {0}")]
    BadBase64(String),
    #[error("no voicemail is stored under this path")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("metrics are served on their own address")]
    MetricsElsewhere,
    #[error("access denied: {0}")]
    Denied(#[from] Denied),
    #[error("request headers too large")]
    HeadersTooLarge,
    #[error("too many uploads in progress; retry shortly")]
    Busy,
    #[error("the request body stalled for longer than {0} s")]
    BodyTimeout(u64),
    #[error("the request body took longer than {0} s to arrive")]
    BodyDeadline(u64),
    #[error("storage is full")]
    StorageFull(#[source] StorageError),
    #[error("this path conflicts with a stored file: a key cannot be both a file and a folder")]
    KeyConflict(#[source] StorageError),
    #[error("storage is unavailable; retry shortly")]
    StorageUnavailable(#[source] StorageError),
    #[error("storage failed")]
    Storage(#[source] StorageError),
    #[error("storage is full: the job for this file could not be recorded")]
    JournalFull(#[source] JournalError),
    #[error("could not record the job for this file")]
    Journal(#[source] JournalError),
}

impl From<JournalError> for ApiError {
    fn from(e: JournalError) -> Self {
        let full = match &e {
            JournalError::Io { source, .. } => vmpipe_common::store::is_storage_full(source),
            _ => false,
        };
        if full {
            ApiError::JournalFull(e)
        } else {
            ApiError::Journal(e)
        }
    }
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::Full(_) => ApiError::StorageFull(e),
            StorageError::Conflict(_) => ApiError::KeyConflict(e),
            StorageError::Unavailable { .. } => ApiError::StorageUnavailable(e),
            e => ApiError::Storage(e),
        }
    }
}

impl ApiError {
    pub(crate) fn code(&self) -> &'static str {
        match self {
            ApiError::BadPath(_) | ApiError::OutsidePrefix | ApiError::KeyTooShort(_) => "bad_path",
            ApiError::TooLarge { .. } => "too_large",
            ApiError::Incomplete(_) => "incomplete_body",
            ApiError::BadMultipart(_) => "bad_multipart",
            ApiError::BadBase64(_) => "bad_base64",
            ApiError::NotFound | ApiError::MetricsElsewhere => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::Denied(Denied::Credentials) => "unauthorized",
            ApiError::Denied(_) => "forbidden",
            ApiError::Busy => "busy",
            ApiError::HeadersTooLarge => "headers_too_large",
            ApiError::BodyTimeout(_) => "body_timeout",
            ApiError::BodyDeadline(_) => "body_deadline",
            ApiError::StorageFull(_) | ApiError::JournalFull(_) => "storage_full",
            ApiError::KeyConflict(_) => "key_conflict",
            ApiError::StorageUnavailable(_) => "storage_unavailable",
            ApiError::Storage(_) => "storage_error",
            ApiError::Journal(_) => "journal_error",
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadPath(_)
            | ApiError::KeyTooShort(_)
            | ApiError::Incomplete(_)
            | ApiError::BadMultipart(_)
            | ApiError::BadBase64(_) => StatusCode::BAD_REQUEST,
            ApiError::OutsidePrefix | ApiError::NotFound | ApiError::MetricsElsewhere => {
                StatusCode::NOT_FOUND
            }
            ApiError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Denied(Denied::Credentials) => StatusCode::UNAUTHORIZED,
            ApiError::Denied(_) => StatusCode::FORBIDDEN,
            ApiError::Busy | ApiError::StorageUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ApiError::BodyTimeout(_) | ApiError::BodyDeadline(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::StorageFull(_) | ApiError::JournalFull(_) => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::KeyConflict(_) => StatusCode::CONFLICT,
            ApiError::Storage(_) | ApiError::Journal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        match self {
            ApiError::MethodNotAllowed => {
                response.insert_header(("allow", "GET, HEAD, PUT, POST"));
            }
            ApiError::Denied(Denied::Credentials) => {
                response.insert_header(("www-authenticate", "Basic realm=\"vmpipe\""));
            }
            // KAZOO's HTTP client retries a 503 by itself when Retry-After has one or two digits.
            ApiError::Busy | ApiError::StorageUnavailable(_) => {
                response.insert_header(("retry-after", "2"));
            }
            _ => {}
        }
        // Server-side failures are logged with their cause; the client gets the summary.
        response.json(serde_json::json!({ "error": self.code(), "message": self.to_string() }))
    }
}
