//! The endpoints, one file each, and what they share: the query-string check, the id check
//! and the JSON answer.

pub(crate) mod audio;
pub(crate) mod health;
pub(crate) mod inbox;
pub mod list;
pub(crate) mod model;
pub(crate) mod params;
pub(crate) mod search;
pub(crate) mod voicemail;

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::ApiError;

/// The longest query string looked at.
const MAX_QUERY_STRING: usize = 4096;

/// The routes, for the server and for the OpenAPI document's check.
pub(crate) fn configure(config: &mut web::ServiceConfig) {
    config
        .service(get("/", inbox::page))
        .service(get("/inbox.js", inbox::script))
        .service(get("/inbox.css", inbox::style))
        .service(get("/healthz", health::healthz))
        .service(get("/readyz", health::readyz))
        .service(get("/metrics", health::metrics))
        .service(get("/api/v1/openapi.json", crate::openapi::document))
        .service(get("/api/v1/voicemails", list::list))
        .service(get("/api/v1/voicemails/{id}", voicemail::get))
        .service(
            web::resource("/api/v1/voicemails/{id}/audio")
                .route(web::get().to(audio::audio))
                .route(web::head().to(audio::audio))
                .default_service(web::to(|| async {
                    Err::<HttpResponse, _>(ApiError::MethodNotAllowed("GET, HEAD"))
                })),
        );
}

/// A resource answering GET, and 405 to any other method.
fn get<F, Args>(path: &str, handler: F) -> actix_web::Resource
where
    F: actix_web::Handler<Args>,
    Args: actix_web::FromRequest + 'static,
    F::Output: actix_web::Responder + 'static,
{
    web::resource(path)
        .route(web::get().to(handler))
        .default_service(web::to(|| async {
            Err::<HttpResponse, _>(ApiError::MethodNotAllowed("GET"))
        }))
}

/// An endpoint that takes no parameters (so that a misspelt one is a 400, not ignored).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NoParams {}

/// The request's query string as `T`; an unknown or repeated parameter is a 400 that says so.
pub(crate) fn query_string<T: DeserializeOwned>(req: &HttpRequest) -> Result<T, ApiError> {
    let raw = req.query_string();
    if raw.len() > MAX_QUERY_STRING {
        return Err(ApiError::BadParameter(format!(
            "the query string is longer than {MAX_QUERY_STRING} bytes"
        )));
    }
    web::Query::<T>::from_query(raw)
        .map(web::Query::into_inner)
        .map_err(|e| {
            let why = match &e {
                actix_web::error::QueryPayloadError::Deserialize(inner) => inner.to_string(),
                other => other.to_string(),
            };
            ApiError::BadParameter(format!("bad query string: {why}"))
        })
}

/// A voicemail id from the path.
pub(crate) fn parse_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::try_parse(raw).map_err(|_| {
        ApiError::BadParameter(format!(
            "a voicemail id is a UUID (voicemails.id), not {:?}",
            raw.chars().take(64).collect::<String>()
        ))
    })
}

/// A JSON answer that no cache keeps (it is one tenant's data).
pub(crate) fn json<T: Serialize>(body: &T) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(body)
}

/// Any other path.
pub(crate) async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::NoRoute)
}
