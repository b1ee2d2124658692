//! Reading an upload body as KAZOO sends it and streaming the file into storage.
//!
//! - Any content type but `multipart/*`: the body is the file, stored byte for byte (never
//!   base64-decoded: KAZOO only base64-encodes inside multipart).
//! - `multipart/*` (KAZOO ≥ 4.3.21 sends `form-data`, 4.3.17-4.3.20 sent `mixed` without a
//!   boundary parameter): a JSON part with KAZOO's document, then the file part, possibly
//!   base64 (`base64_encode_data`, which adds no header saying so). Parts are told apart by
//!   position and content type, never by name.

use std::cell::Cell;
use std::rc::Rc;

use actix_web::HttpRequest;
use actix_web::error::PayloadError;
use actix_web::http::header::{self, HeaderMap, HeaderValue};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt, stream};
use tracing::warn;
use vmpipe_common::settings::Base64Mode;
use vmpipe_common::{ObjectWriter, UploadMode};

use crate::error::ApiError;

/// KAZOO's JSON document is a few KiB; anything far larger is not one.
const MAX_METADATA_BYTES: usize = 1024 * 1024;
/// How much of a file part is looked at to recognise base64 (`Base64Mode::Auto`).
const BASE64_SNIFF_BYTES: usize = 64 * 1024;
/// How far into a boundary-less multipart body the first delimiter line must appear.
const MAX_PREAMBLE_BYTES: usize = 4096;

/// What was received.
#[derive(Debug)]
pub struct Received {
    /// Size of the stored (decoded) file.
    pub size: u64,
    /// SHA-256 of the stored file, lower-case hex.
    pub info: BodyInfo,
}

/// What the body said about the file.
#[derive(Debug)]
pub struct BodyInfo {
    pub mode: UploadMode,
    pub content_type: Option<String>,
    /// The `name=` of the file part (KAZOO: the attachment name).
    pub file_part_name: Option<String>,
    /// The `name=` of the JSON part (KAZOO: the document id).
    pub document_part_name: Option<String>,
    pub kazoo_document: Option<serde_json::Value>,
}

pub struct Limits {
    pub max_body: u64,
    pub base64: Base64Mode,
    /// Longest silence between two pieces of a body.
    pub body_timeout: std::time::Duration,
}

/// Counts and forwards the file's bytes to storage.
struct FileSink {
    writer: Box<dyn ObjectWriter>,
    size: u64,
}

impl FileSink {
    async fn put(&mut self, bytes: Bytes) -> Result<(), ApiError> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.size += bytes.len() as u64;
        self.writer.write(bytes).await?;
        Ok(())
    }
}

/// Reads the whole body into `writer` (not yet committed) and describes it.
pub async fn receive(
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
    let overflowed = Rc::new(Cell::new(false));
    let stalled = Rc::new(Cell::new(false));
    let body = limit_stream(payload, limits, overflowed.clone(), stalled.clone());
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
        Some(mime) => receive_multipart(req.headers(), &mime, body, &mut sink, limits).await,
    };
    let info = match result {
        Err(_) if overflowed.get() => {
            return Err(ApiError::TooLarge {
                limit: limits.max_body,
            });
        }
        Err(_) if stalled.get() => {
            return Err(ApiError::BodyTimeout(limits.body_timeout.as_secs()));
        }
        other => other?,
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

type Body = std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, PayloadError>>>>;

/// Ends the stream with an error once more than `max_body` bytes arrived (chunked bodies have
/// no Content-Length to check up front), or when the client stays silent for `body_timeout`
/// (a slow or stuck client must not hold an upload slot forever).
fn limit_stream(
    payload: actix_web::web::Payload,
    limits: &Limits,
    overflowed: Rc<Cell<bool>>,
    stalled: Rc<Cell<bool>>,
) -> Body {
    let (max, timeout) = (limits.max_body, limits.body_timeout);
    Box::pin(
        stream::unfold(
            (payload, 0u64, false),
            move |(mut payload, seen, failed)| {
                let (overflowed, stalled) = (overflowed.clone(), stalled.clone());
                async move {
                    if failed {
                        return None;
                    }
                    let chunk = match tokio::time::timeout(timeout, payload.next()).await {
                        Err(_) => {
                            stalled.set(true);
                            return Some((
                                Err(PayloadError::Incomplete(None)),
                                (payload, seen, true),
                            ));
                        }
                        Ok(None) => return None,
                        Ok(Some(chunk)) => chunk,
                    };
                    let chunk = match chunk {
                        Ok(chunk) => chunk,
                        Err(e) => return Some((Err(e), (payload, seen, true))),
                    };
                    let seen = seen + chunk.len() as u64;
                    if seen > max {
                        overflowed.set(true);
                        return Some((Err(PayloadError::Overflow), (payload, seen, true)));
                    }
                    Some((Ok(chunk), (payload, seen, false)))
                }
            },
        )
        // Multipart parsing polls again after the end: a fused stream keeps answering None.
        .fuse(),
    )
}

fn payload_error(e: PayloadError) -> ApiError {
    ApiError::Incomplete(e.to_string())
}

async fn receive_raw(mut body: Body, sink: &mut FileSink) -> Result<(), ApiError> {
    while let Some(chunk) = body.next().await {
        sink.put(chunk.map_err(payload_error)?).await?;
    }
    Ok(())
}

async fn receive_multipart(
    headers: &HeaderMap,
    content_type: &mime::Mime,
    body: Body,
    sink: &mut FileSink,
    limits: &Limits,
) -> Result<BodyInfo, ApiError> {
    let boundary = content_type
        .get_param(mime::BOUNDARY)
        .map(|b| b.as_str().to_owned());
    let mut multipart = if let Some(boundary) = boundary {
        // RFC 2046: 1 to 70 characters. KAZOO's are 64.
        if boundary.is_empty() || boundary.len() > 70 {
            return Err(ApiError::BadMultipart(format!(
                "boundary of {} characters (1 to 70 allowed)",
                boundary.len()
            )));
        }
        actix_multipart::Multipart::new(headers, body)
    } else {
        // KAZOO 4.3.17-4.3.20: `multipart/mixed` with no boundary parameter. The boundary is
        // the first delimiter line of the body.
        let (boundary, replay) = sniff_boundary(body).await?;
        let mut synthesised = HeaderMap::new();
        let value = format!(
            "{}/{}; boundary=\"{}\"",
            content_type.type_(),
            content_type.subtype(),
            boundary
        );
        synthesised.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_str(&value)
                .map_err(|_| ApiError::BadMultipart("unusable boundary".into()))?,
        );
        actix_multipart::Multipart::new(&synthesised, replay)
    };

    let mut document: Option<(Bytes, Option<String>)> = None;
    let mut file: Option<(Option<String>, Option<String>, bool)> = None;
    while let Some(field) = multipart.next().await {
        let mut field = field.map_err(multipart_error)?;
        if file.is_some() {
            return Err(ApiError::BadMultipart(
                "more parts than a JSON document and one file".into(),
            ));
        }
        let part_type = field.content_type().map(|m| m.essence_str().to_owned());
        let part_name = field.name().map(str::to_owned);
        if document.is_none() && part_type.as_deref() == Some("application/json") {
            // Most likely KAZOO's document; it is the file only if no other part follows.
            let mut json = BytesMut::new();
            while let Some(chunk) = field.next().await {
                let chunk = chunk.map_err(multipart_error)?;
                if json.len() + chunk.len() > MAX_METADATA_BYTES {
                    return Err(ApiError::BadMultipart(format!(
                        "JSON part larger than {MAX_METADATA_BYTES} bytes"
                    )));
                }
                json.extend_from_slice(&chunk);
            }
            document = Some((json.freeze(), part_name));
            continue;
        }
        let base64 = receive_file_part(&mut field, sink, limits.base64).await?;
        file = Some((part_name, part_type, base64));
    }

    let (file_part_name, content_type, base64, kazoo_document, document_part_name) = match file {
        Some((name, part_type, base64)) => {
            let (json, document_name) = document.unzip();
            (
                name,
                part_type,
                base64,
                json.and_then(|j| parse_document(&j)),
                document_name.flatten(),
            )
        }
        // A lone JSON part is the file itself.
        None => match document {
            Some((json, name)) => {
                sink.put(json).await?;
                (name, Some("application/json".into()), false, None, None)
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

fn parse_document(json: &[u8]) -> Option<serde_json::Value> {
    match serde_json::from_slice(json) {
        Ok(value) => Some(value),
        Err(e) => {
            // The audio matters more than its description: store it, index it without.
            warn!(error = %e, "JSON part is not valid JSON; storing the file without it");
            None
        }
    }
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

/// Incremental standard base64 (padded, no line breaks), as KAZOO's `base64:encode/1` writes.
#[derive(Default)]
struct Base64Stream {
    carry: Vec<u8>,
    padded: bool,
}

impl Base64Stream {
    fn feed(&mut self, input: &[u8]) -> Result<Bytes, ApiError> {
        if input.is_empty() {
            return Ok(Bytes::new());
        }
        if self.padded {
            return Err(ApiError::BadBase64("data after the padding".into()));
        }
        let mut data = std::mem::take(&mut self.carry);
        data.extend_from_slice(input);
        let whole = data.len() - data.len() % 4;
        self.carry = data.split_off(whole);
        if data.is_empty() {
            return Ok(Bytes::new());
        }
        self.padded = data.ends_with(b"=");
        let decoded = STANDARD
            .decode(&data)
            .map_err(|e| ApiError::BadBase64(e.to_string()))?;
        Ok(Bytes::from(decoded))
    }

    fn finish(self) -> Result<(), ApiError> {
        if self.carry.is_empty() {
            Ok(())
        } else {
            Err(ApiError::BadBase64("length is not a multiple of 4".into()))
        }
    }
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
                        && b.iter().all(|c| c.is_ascii_graphic() && *c != b'"')
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
        ) -> vmpipe_common::store::BoxFuture<'static, Result<(), vmpipe_common::StorageError>>
        {
            Box::pin(async { Ok(()) })
        }
    }
    let Ok(mime) = content_type.parse::<mime::Mime>() else {
        return Err("unparseable content type".into());
    };
    let mut headers = HeaderMap::new();
    let value = HeaderValue::from_str(content_type).map_err(|e| e.to_string())?;
    headers.insert(header::CONTENT_TYPE, value);
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
        receive_multipart(&headers, &mime, stream, &mut sink, &limits)
            .await
            .map(|_| sink.size)
            .map_err(|e| e.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_in_pieces(text: &[u8], piece: usize) -> Result<Vec<u8>, ApiError> {
        let mut decoder = Base64Stream::default();
        let mut out = Vec::new();
        for chunk in text.chunks(piece) {
            out.extend_from_slice(&decoder.feed(chunk)?);
        }
        decoder.finish()?;
        Ok(out)
    }

    #[test]
    fn base64_stream_matches_one_shot_decoding_at_any_chunking() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 256) as u8).collect();
        for len in [0, 1, 2, 3, 4, 5, 999, 1000] {
            let text = STANDARD.encode(&data[..len]);
            for piece in [1, 2, 3, 5, 7, 64, 4096] {
                assert_eq!(
                    decode_in_pieces(text.as_bytes(), piece).unwrap(),
                    &data[..len]
                );
            }
        }
    }

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

    #[test]
    fn base64_stream_rejects_garbage() {
        assert!(
            decode_in_pieces(b"QQ==QUFB", 4).is_err(),
            "data after padding"
        );
        assert!(decode_in_pieces(b"QUF", 4).is_err(), "truncated");
        assert!(decode_in_pieces(b"QU*B", 4).is_err(), "bad character");
    }
}
