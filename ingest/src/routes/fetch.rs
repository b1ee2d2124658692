//! `GET|HEAD {prefix}/{key…}`: serving a stored file, whatever layout KAZOO asks for it with.
//!
//! KAZOO ≥ 4.3.106 asks for `{prefix}/{key}/{key'}?{meta}` (its URL segment twice, the second
//! copy from the current storage plan), older KAZOO for `{prefix}/{key}`: both resolve to the
//! stored key that starts the path ([`vmpipe_common::Storage::find_prefix`]). Through `.../?key=` the doubled
//! key has no `/` between its copies and is halved first ([`undouble`]). The query string is
//! informational and ignored. Only 200 counts as success to KAZOO.

use actix_web::body::SizedStream;
use actix_web::{HttpRequest, HttpResponse};
use vmpipe_common::KeyError;
use vmpipe_common::key::{decode_path, validate_segments};

use super::AppState;
use crate::error::ApiError;

pub(super) async fn fetch(
    req: &HttpRequest,
    raw_key: &str,
    state: &AppState,
) -> Result<HttpResponse, ApiError> {
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
    crate::request_span::note_key(req, key.as_str());
    let mut response = HttpResponse::Ok();
    // KAZOO ignores the response type (it kept the one it uploaded with); this is for people.
    response.content_type(key.content_type().unwrap_or("application/octet-stream"));
    if req.method() == actix_web::http::Method::HEAD {
        // The length only: no body is read (from a bucket, a HEAD rather than a GET).
        let info = state.store.stat(&key).await?.ok_or(ApiError::NotFound)?;
        crate::request_span::note_bytes(req, info.size);
        let nothing = futures_util::stream::empty::<Result<bytes::Bytes, std::io::Error>>();
        return Ok(response.body(SizedStream::new(info.size, nothing)));
    }
    let object = state.store.open(&key).await?.ok_or(ApiError::NotFound)?;
    crate::request_span::note_bytes(req, object.size);
    Ok(response.body(SizedStream::new(object.size, object.body)))
}

/// A fetch from KAZOO >= 4.3.106 through `.../?key=` glues its segment on twice with nothing
/// between the copies (`key=A/D/NA/D/N`), so the path resolution above cannot split it: the
/// key is its first half. (Applied to every `key=`, stores too, so that a key stored through a
/// doubled `key=` is the one fetched through it.)
pub(super) fn undouble(from_query: &str) -> &str {
    let half = from_query.len() / 2;
    if from_query.len().is_multiple_of(2)
        && half > 0
        && from_query.is_char_boundary(half)
        && from_query[..half] == from_query[half..]
    {
        &from_query[..half]
    } else {
        from_query
    }
}

#[cfg(test)]
mod tests {
    use super::undouble;

    #[test]
    fn a_doubled_query_key_is_halved() {
        assert_eq!(undouble("a/d/n.mp3a/d/n.mp3"), "a/d/n.mp3");
        assert_eq!(undouble("a/d/n.mp3"), "a/d/n.mp3");
        assert_eq!(undouble(""), "");
        assert_eq!(undouble("éé"), "é");
    }
}
