//! The body as a bounded stream (size and silence limits), and the sink its file bytes go to.

use std::cell::Cell;
use std::rc::Rc;

use actix_web::error::PayloadError;
use bytes::Bytes;
use futures_util::{Stream, StreamExt, stream};
use vmpipe_common::ObjectWriter;

use super::Limits;
use crate::error::ApiError;

/// Counts and forwards the file's bytes to storage.
pub(super) struct FileSink {
    pub(super) writer: Box<dyn ObjectWriter>,
    pub(super) size: u64,
}

impl FileSink {
    pub(super) async fn put(&mut self, bytes: Bytes) -> Result<(), ApiError> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.size += bytes.len() as u64;
        self.writer.write(bytes).await?;
        Ok(())
    }
}

pub(super) type Body = std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, PayloadError>>>>;

/// Why [`limit_stream`] cut a body off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Cutoff {
    /// More than `max_body` bytes.
    TooLarge,
    /// Silent for `body_timeout`.
    Stalled,
    /// Still arriving at `upload_deadline`.
    Deadline,
}

/// Ends the stream with an error once more than `max_body` bytes arrived (chunked bodies have
/// no Content-Length to check up front), when the client stays silent for `body_timeout`, or
/// when the body is still arriving `upload_deadline` after it started (a slow or stuck client,
/// or one that trickles a byte now and then, must not hold an upload slot for ever). Why is
/// left in `cutoff`.
pub(super) fn limit_stream(
    payload: actix_web::web::Payload,
    limits: &Limits,
    cutoff: Rc<Cell<Option<Cutoff>>>,
) -> Body {
    let (max, silence) = (limits.max_body, limits.body_timeout);
    let deadline = tokio::time::Instant::now() + limits.upload_deadline;
    Box::pin(
        stream::unfold(
            (payload, 0u64, false),
            move |(mut payload, seen, failed)| {
                let cutoff = cutoff.clone();
                async move {
                    if failed {
                        return None;
                    }
                    let wait = (tokio::time::Instant::now() + silence).min(deadline);
                    let chunk = match tokio::time::timeout_at(wait, payload.next()).await {
                        Err(_) => {
                            let why = if wait == deadline {
                                Cutoff::Deadline
                            } else {
                                Cutoff::Stalled
                            };
                            cutoff.set(Some(why));
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
                        cutoff.set(Some(Cutoff::TooLarge));
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

pub(super) fn payload_error(e: PayloadError) -> ApiError {
    ApiError::Incomplete(e.to_string())
}
