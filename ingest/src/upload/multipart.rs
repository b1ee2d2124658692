//! `multipart/*` bodies: KAZOO's JSON document, then the file part (possibly base64), told
//! apart by position and content type; and the boundary-less `multipart/mixed` of KAZOO
//! 4.3.17-4.3.20.

use actix_web::error::PayloadError;
use actix_web::http::header::{self, HeaderMap, HeaderValue};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::{Bytes, BytesMut};
use futures_util::{StreamExt, stream};
use vmpipe_common::settings::Base64Mode;
use vmpipe_common::{ObjectWriter, UploadMode};

use super::base64::Base64Stream;
use super::document::{self, Document, Dropped};
use super::part_name::part_name;
use super::stream::{Body, FileSink, payload_error};
use super::{BodyInfo, Limits};
use crate::error::ApiError;

/// How much of a file part is looked at to recognise base64 (`Base64Mode::Auto`).
const BASE64_SNIFF_BYTES: usize = 64 * 1024;
/// How far into a boundary-less multipart body the first delimiter line must appear.
const MAX_PREAMBLE_BYTES: usize = 4096;

pub(super) async fn receive_multipart(
    content_type: &mime::Mime,
    body: Body,
    sink: &mut FileSink,
    limits: &Limits,
) -> Result<BodyInfo, ApiError> {
    let boundary = content_type
        .get_param(mime::BOUNDARY)
        .map(|b| b.as_str().to_owned());
    let (boundary, body) = match boundary {
        Some(boundary) => (boundary, body),
        // KAZOO 4.3.17-4.3.20: `multipart/mixed` with no boundary parameter. The boundary is
        // the first delimiter line of the body.
        None => sniff_boundary(body).await?,
    };
    // RFC 2046: 1 to 70 characters. KAZOO's are 64.
    if boundary.is_empty() || boundary.len() > 70 {
        return Err(ApiError::BadMultipart(format!(
            "boundary of {} characters (1 to 70 allowed)",
            boundary.len()
        )));
    }
    if boundary
        .bytes()
        .any(|b| !(b == b' ' || b.is_ascii_graphic()) || matches!(b, b'"' | b'\\'))
    {
        return Err(ApiError::BadMultipart(
            "boundary with a character RFC 2046 does not allow".into(),
        ));
    }
    // Always `multipart/mixed` to actix-multipart, which then needs no RFC 6266 disposition
    // per part: KAZOO's unquoted names (`name=a;b.mp3`) are not one. [`part_name`] reads them.
    let mut parser_headers = HeaderMap::new();
    parser_headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(&format!("multipart/mixed; boundary=\"{boundary}\""))
            .map_err(|_| ApiError::BadMultipart("unusable boundary".into()))?,
    );
    let mut multipart = actix_multipart::Multipart::new(&parser_headers, body);

    let mut document: Option<JsonPart> = None;
    let mut file: Option<(Option<String>, Option<String>, bool)> = None;
    while let Some(field) = multipart.next().await {
        let mut field = field.map_err(multipart_error)?;
        if file.is_some() {
            return Err(ApiError::BadMultipart(
                "more parts than a JSON document and one file".into(),
            ));
        }
        let part_type = field.content_type().map(|m| m.essence_str().to_owned());
        let part_name = part_name(field.headers());
        if document.is_none() && part_type.as_deref() == Some("application/json") {
            // Most likely KAZOO's document; it is the file only if no other part follows.
            document = Some(receive_json_part(&mut field, part_name, limits.max_document).await?);
            continue;
        }
        let base64 = receive_file_part(&mut field, sink, limits.base64).await?;
        file = Some((part_name, part_type, base64));
    }

    let (file_part_name, content_type, base64, kazoo_document, document_part_name) = match file {
        Some((name, part_type, base64)) => {
            let (kazoo_document, document_name) = match document {
                Some(part) => (Some(part.document()), part.name),
                None => (None, None),
            };
            (name, part_type, base64, kazoo_document, document_name)
        }
        // A lone JSON part is the file itself.
        None => match document {
            Some(JsonPart {
                json: Some(json),
                name,
            }) => {
                sink.put(json.freeze()).await?;
                (name, Some("application/json".into()), false, None, None)
            }
            Some(JsonPart { json: None, .. }) => {
                return Err(ApiError::BadMultipart(format!(
                    "a lone JSON part over {} bytes, and no file part",
                    limits.max_document
                )));
            }
            None => return Err(ApiError::BadMultipart("no file part".into())),
        },
    };
    Ok(BodyInfo {
        mode: if base64 {
            UploadMode::MultipartBase64
        } else {
            UploadMode::Multipart
        },
        content_type,
        file_part_name,
        document_part_name,
        kazoo_document,
    })
}

/// A JSON part: its text, unless it was over the limit (then read to its end and dropped).
struct JsonPart {
    json: Option<BytesMut>,
    name: Option<String>,
}

impl JsonPart {
    /// KAZOO's document, or why it is dropped.
    fn document(&self) -> Result<Document, Dropped> {
        let json = self.json.as_ref().ok_or(Dropped::TooLarge)?;
        document::inspect(json)
    }
}

/// Reads a JSON part, holding at most `max` bytes of it.
async fn receive_json_part(
    field: &mut actix_multipart::Field,
    name: Option<String>,
    max: usize,
) -> Result<JsonPart, ApiError> {
    let mut json = Some(BytesMut::new());
    while let Some(chunk) = field.next().await {
        let chunk = chunk.map_err(multipart_error)?;
        if let Some(held) = &mut json {
            if held.len() + chunk.len() > max {
                json = None;
            } else {
                held.extend_from_slice(&chunk);
            }
        }
    }
    Ok(JsonPart { json, name })
}

fn multipart_error(e: actix_multipart::MultipartError) -> ApiError {
    match e {
        actix_multipart::MultipartError::Payload(p) => payload_error(p),
        actix_multipart::MultipartError::Incomplete => {
            ApiError::Incomplete("multipart body ended before its closing delimiter".into())
        }
        other => ApiError::BadMultipart(other.to_string()),
    }
}

/// Streams one file part into the sink, decoding base64 as configured. Returns whether it was
/// base64.
async fn receive_file_part(
    field: &mut actix_multipart::Field,
    sink: &mut FileSink,
    mode: Base64Mode,
) -> Result<bool, ApiError> {
    // A field must not be polled again once it has ended.
    let mut ended = false;
    let mut head = Bytes::new();
    let decode = match mode {
        Base64Mode::Never => false,
        Base64Mode::Always => true,
        Base64Mode::Auto => {
            // Look at the start of the part: base64 text uses 65 characters only, and audio
            // (or KAZOO's plain-text probe, which has spaces) never stays within them.
            let mut buffer = BytesMut::new();
            while buffer.len() < BASE64_SNIFF_BYTES {
                match field.next().await {
                    Some(chunk) => buffer.extend_from_slice(&chunk.map_err(multipart_error)?),
                    None => {
                        ended = true;
                        break;
                    }
                }
            }
            head = buffer.freeze();
            let looks_base64 = !head.is_empty() && head.iter().all(|&b| is_base64_byte(b));
            // A part seen whole must also decode; a longer one is judged by its start.
            looks_base64 && (!ended || STANDARD.decode(&head).is_ok())
        }
    };
    let mut decoder = decode.then(Base64Stream::default);
    let mut pending = Some(head);
    loop {
        let chunk = match pending.take() {
            Some(chunk) => chunk,
            None if ended => break,
            None => match field.next().await {
                Some(chunk) => chunk.map_err(multipart_error)?,
                None => break,
            },
        };
        let bytes = match decoder.as_mut() {
            Some(decoder) => decoder.feed(&chunk)?,
            None => chunk,
        };
        sink.put(bytes).await?;
    }
    if let Some(decoder) = decoder {
        decoder.finish()?;
    }
    Ok(decode)
}

fn is_base64_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=')
}

/// Reads up to the first delimiter line (`--BOUNDARY\r\n`, after an optional leading CRLF) and
/// returns the boundary and a stream that replays everything read.
async fn sniff_boundary(mut body: Body) -> Result<(String, Body), ApiError> {
    let mut head = BytesMut::new();
    loop {
        let text = head.strip_prefix(b"\r\n").unwrap_or(&head);
        if let Some(end) = text.windows(2).position(|w| w == b"\r\n") {
            let line = &text[..end];
            let boundary = line
                .strip_prefix(b"--")
                .filter(|b| {
                    !b.is_empty()
                        && b.len() <= 200
                        && b.iter()
                            .all(|c| c.is_ascii_graphic() && !matches!(c, b'"' | b'\\'))
                })
                .ok_or_else(|| {
                    ApiError::BadMultipart("no boundary parameter and no delimiter line".into())
                })?;
            let boundary = String::from_utf8_lossy(boundary).into_owned();
            let replay = stream::once(async move { Ok(head.freeze()) }).chain(body);
            return Ok((boundary, Box::pin(replay)));
        }
        if head.len() > MAX_PREAMBLE_BYTES {
            return Err(ApiError::BadMultipart(
                "no delimiter line at the start of the body".into(),
            ));
        }
        match body.next().await {
            Some(chunk) => head.extend_from_slice(&chunk.map_err(payload_error)?),
            None => {
                return Err(ApiError::BadMultipart(
                    "body ended before a delimiter line".into(),
                ));
            }
        }
    }
}

/// Entry point for the fuzzer: parses `body` as a multipart upload of `content_type`, the way
/// an upload is parsed, into a writer that only counts. Returns the stored size or the error.
#[doc(hidden)]
pub fn fuzz_multipart(content_type: &str, body: &[u8], base64: Base64Mode) -> Result<u64, String> {
    struct Counting;
    impl ObjectWriter for Counting {
        fn write(
            &mut self,
            _: Bytes,
        ) -> vmpipe_common::store::BoxFuture<'_, Result<(), vmpipe_common::StorageError>> {
            Box::pin(async { Ok(()) })
        }
        fn commit(
            self: Box<Self>,
        ) -> vmpipe_common::store::BoxFuture<
            'static,
            Result<Box<dyn vmpipe_common::Committed>, vmpipe_common::StorageError>,
        > {
            Box::pin(async { Err(vmpipe_common::StorageError::Conflict("never stored".into())) })
        }
    }
    let Ok(mime) = content_type.parse::<mime::Mime>() else {
        return Err("unparseable content type".into());
    };
    // Feed the body in uneven pieces, as a network would.
    let chunks: Vec<Result<Bytes, PayloadError>> = body
        .chunks(97)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let stream: Body = Box::pin(stream::iter(chunks));
    let limits = Limits {
        max_body: u64::MAX,
        base64,
        body_timeout: std::time::Duration::from_secs(1),
        upload_deadline: std::time::Duration::from_secs(10),
        max_document: 64 * 1024,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let mut sink = FileSink {
            writer: Box::new(Counting),
            size: 0,
        };
        receive_multipart(&mime, stream, &mut sink, &limits)
            .await
            .map(|_| sink.size)
            .map_err(|e| e.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fuzz_entry_parses_kazoo_multipart() {
        let body = b"\r\n--B\r\ncontent-disposition: form-data; name=d\r\ncontent-type: application/json\r\n\r\n{}\r\n--B\r\ncontent-disposition: form-data; name=a.mp3\r\ncontent-type: audio/mpeg\r\n\r\nxyz\r\n--B--";
        assert_eq!(
            fuzz_multipart("multipart/form-data; boundary=B", body, Base64Mode::Auto),
            Ok(3)
        );
        assert!(
            fuzz_multipart("multipart/form-data; boundary=B", b"junk", Base64Mode::Auto).is_err()
        );
    }
}
