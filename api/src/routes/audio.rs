//! `GET|HEAD /api/v1/voicemails/{id}/audio`: the stored file, with its type, `Range` (206)
//! so that a player can seek, and its SHA-256 as a strong `ETag` (`If-None-Match` → 304,
//! `If-Range`).

use actix_web::body::SizedStream;
use actix_web::http::{Method, StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, web};
use vmpipe_common::StorageKey;

use super::voicemail::{AudioRow, audio_row};
use super::{NoParams, parse_id, query_string};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::range::{Plan, plan};
use crate::server::State;

/// Get a voicemail's audio
///
/// The stored file. `Range: bytes=START-END` (one range) answers 206 with that part;
/// `If-None-Match` with the `ETag` answers 304.
#[utoipa::path(
    get,
    path = "/api/v1/voicemails/{id}/audio",
    tag = "voicemails",
    params(
        ("id" = Uuid, Path, description = "The voicemail's id"),
        ("Range" = Option<String>, Header, description = "One byte range, e.g. bytes=0-1023"),
        ("If-None-Match" = Option<String>, Header, description = "An ETag from an earlier answer"),
    ),
    responses(
        (status = 200, description = "The whole file: MP3 or WAV (as measured), else the type KAZOO declared",
         content(("audio/mpeg"), ("audio/wav"), ("application/octet-stream")),
         headers(("ETag" = String, description = "The file's SHA-256, quoted"), ("Accept-Ranges" = String))),
        (status = 206, description = "The requested range",
         content(("audio/mpeg"), ("audio/wav"), ("application/octet-stream")),
         headers(("Content-Range" = String), ("ETag" = String))),
        (status = 304, description = "Not modified (If-None-Match)"),
        (status = 400, description = "A bad id", body = crate::error::ErrorBody),
        (status = 401, description = "No token, or an unknown or revoked one", body = crate::error::ErrorBody),
        (status = 404, description = "No such voicemail (for this token)", body = crate::error::ErrorBody),
        (status = 416, description = "The range is outside the file", body = crate::error::ErrorBody),
        (status = 503, description = "The database or storage is unavailable", body = crate::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn audio(
    req: HttpRequest,
    caller: Caller,
    state: web::Data<State>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let _: NoParams = query_string(&req)?;
    let id = parse_id(&id)?;
    let row = audio_row(&state, &caller, id).await?;
    let etag = format!("\"{}\"", row.sha256);
    let mut response = HttpResponse::build(StatusCode::OK);
    response
        .insert_header((header::ETAG, etag.as_str()))
        .insert_header((header::CACHE_CONTROL, "private, no-cache"))
        .insert_header((header::ACCEPT_RANGES, "bytes"));
    if let Some(wanted) = req.headers().get(header::IF_NONE_MATCH)
        && matches_etag(wanted.to_str().unwrap_or(""), &etag)
    {
        return Ok(response.status(StatusCode::NOT_MODIFIED).finish());
    }
    let key = StorageKey::parse(&row.storage_key).map_err(|_| ApiError::FileMissing)?;
    let info = state.store.stat(&key).await?.ok_or(ApiError::FileMissing)?;
    let range = req
        .headers()
        .get(header::RANGE)
        .and_then(|r| r.to_str().ok())
        // If-Range: the range only while the file is still the one the client has part of.
        .filter(|_| {
            req.headers()
                .get(header::IF_RANGE)
                .is_none_or(|v| v.to_str().is_ok_and(|v| v == etag))
        });
    response.content_type(content_type(&row)).insert_header((
        header::CONTENT_DISPOSITION,
        format!(
            "inline; filename=\"{}\"",
            safe_filename(&row.attachment_name)
        ),
    ));
    let (start, end) = match plan(range, info.size) {
        Plan::Whole => (0, info.size),
        Plan::Part { start, end } => {
            response.status(StatusCode::PARTIAL_CONTENT).insert_header((
                header::CONTENT_RANGE,
                format!("bytes {start}-{end}/{}", info.size),
            ));
            (start, end + 1)
        }
        Plan::Unsatisfiable => return Err(ApiError::RangeNotSatisfiable { size: info.size }),
    };
    if req.method() == Method::HEAD || start == end {
        let nothing = futures_util::stream::empty::<Result<bytes::Bytes, std::io::Error>>();
        return Ok(response.body(SizedStream::new(end - start, nothing)));
    }
    let object = state
        .store
        .open_range(&key, start..end)
        .await?
        .ok_or(ApiError::FileMissing)?;
    Ok(response.body(SizedStream::new(end - start, object.body)))
}

/// Whether an `If-None-Match` list names `etag` (or is `*`); weak comparison, as RFC 9110 asks.
fn matches_etag(list: &str, etag: &str) -> bool {
    list.split(',').map(str::trim).any(|candidate| {
        candidate == "*" || candidate.strip_prefix("W/").unwrap_or(candidate) == etag
    })
}

/// The file's type: from what vmpipe measured, else what KAZOO declared.
fn content_type(row: &AudioRow) -> String {
    match row.codec.as_deref() {
        Some("mp3") => "audio/mpeg".into(),
        Some(codec) if codec.starts_with("pcm") || codec.contains("adpcm") => "audio/wav".into(),
        _ => row
            .content_type
            .as_deref()
            .filter(|t| t.parse::<mime::Mime>().is_ok())
            .unwrap_or("application/octet-stream")
            .into(),
    }
}

/// The attachment name with only characters safe in a quoted header parameter.
fn safe_filename(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(100)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_etag_matches_in_a_list_or_weakly() {
        assert!(matches_etag("\"abc\"", "\"abc\""));
        assert!(matches_etag("\"x\", W/\"abc\"", "\"abc\""));
        assert!(matches_etag("*", "\"abc\""));
        assert!(!matches_etag("\"abd\"", "\"abc\""));
    }

    #[test]
    fn a_filename_cannot_break_its_header() {
        assert_eq!(safe_filename("a\"b\r\n.mp3"), "a_b__.mp3");
    }
}
