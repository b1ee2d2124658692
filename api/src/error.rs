//! Errors a request can end with: a status and a JSON body `{"error": "<stable code>",
//! "message": "<text>"}`, as ingest's. The cause of a 5xx is kept for the access log (never
//! sent to the client).

use actix_web::http::{StatusCode, header};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use utoipa::ToSchema;
use vmpipe_common::StorageError;

use crate::db::{is_timeout, is_transient};

/// The body of every error answer.
#[derive(Serialize, ToSchema)]
pub(crate) struct ErrorBody {
    /// A stable code: `bad_parameter`, `bad_cursor`, `bad_query`, `unauthorized`, `not_found`,
    /// `method_not_allowed`, `range_not_satisfiable`, `query_timeout`, `database_unavailable`,
    /// `storage_unavailable`, `internal`.
    #[schema(example = "bad_parameter")]
    error: &'static str,
    /// What went wrong, for people.
    #[schema(example = "limit must be 1 to 200, not 1000000000")]
    message: String,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    #[error("{0}")]
    BadParameter(String),
    #[error("bad cursor: {0} (pass back the next_cursor of a previous page, unchanged)")]
    BadCursor(String),
    #[error("{0}")]
    BadQuery(String),
    #[error("send a token: Authorization: Bearer <token> (api token create makes one)")]
    NoToken,
    #[error("the token is unknown or revoked")]
    BadToken,
    #[error("no such voicemail")]
    NotFound,
    #[error("no such page")]
    NoRoute,
    #[error("method not allowed (allowed: {0})")]
    MethodNotAllowed(&'static str),
    #[error("the range is outside the file ({size} bytes)")]
    RangeNotSatisfiable { size: u64 },
    #[error("the query ran out of time; narrow it (filters, since/until)")]
    QueryTimeout(#[source] sqlx::Error),
    #[error("the database is unavailable; retry shortly")]
    DatabaseUnavailable(#[source] sqlx::Error),
    #[error("the database failed")]
    Database(#[source] sqlx::Error),
    #[error("the voicemail's file is not in storage")]
    FileMissing,
    #[error("storage is unavailable; retry shortly")]
    StorageUnavailable(#[source] StorageError),
    #[error("storage failed")]
    Storage(#[source] StorageError),
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        if is_timeout(&e) {
            ApiError::QueryTimeout(e)
        } else if is_transient(&e) {
            ApiError::DatabaseUnavailable(e)
        } else {
            ApiError::Database(e)
        }
    }
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::Unavailable { .. } => ApiError::StorageUnavailable(e),
            e => ApiError::Storage(e),
        }
    }
}

impl ApiError {
    pub(crate) fn code(&self) -> &'static str {
        match self {
            ApiError::BadParameter(_) => "bad_parameter",
            ApiError::BadCursor(_) => "bad_cursor",
            ApiError::BadQuery(_) => "bad_query",
            ApiError::NoToken | ApiError::BadToken => "unauthorized",
            ApiError::NotFound | ApiError::NoRoute => "not_found",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::RangeNotSatisfiable { .. } => "range_not_satisfiable",
            ApiError::QueryTimeout(_) => "query_timeout",
            ApiError::DatabaseUnavailable(_) => "database_unavailable",
            ApiError::StorageUnavailable(_) => "storage_unavailable",
            ApiError::Database(_) | ApiError::FileMissing | ApiError::Storage(_) => "internal",
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadParameter(_) | ApiError::BadCursor(_) | ApiError::BadQuery(_) => {
                StatusCode::BAD_REQUEST
            }
            ApiError::NoToken | ApiError::BadToken => StatusCode::UNAUTHORIZED,
            ApiError::NotFound | ApiError::NoRoute => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::RangeNotSatisfiable { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
            ApiError::QueryTimeout(_)
            | ApiError::DatabaseUnavailable(_)
            | ApiError::StorageUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Database(_) | ApiError::FileMissing | ApiError::Storage(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        response.insert_header((header::CACHE_CONTROL, "no-store"));
        match self {
            ApiError::NoToken | ApiError::BadToken => {
                response.insert_header((header::WWW_AUTHENTICATE, "Bearer realm=\"vmpipe\""));
            }
            ApiError::MethodNotAllowed(allow) => {
                response.insert_header((header::ALLOW, *allow));
            }
            ApiError::RangeNotSatisfiable { size } => {
                response.insert_header((header::CONTENT_RANGE, format!("bytes */{size}")));
            }
            ApiError::QueryTimeout(_)
            | ApiError::DatabaseUnavailable(_)
            | ApiError::StorageUnavailable(_) => {
                response.insert_header((header::RETRY_AFTER, "2"));
            }
            _ => {}
        }
        response.json(ErrorBody {
            error: self.code(),
            message: self.to_string(),
        })
    }
}

/// `error` and its causes, `: `-separated, for logs.
pub(crate) use vmpipe_common::logging::chain;
