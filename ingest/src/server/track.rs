//! Tells a connection's gate ([`super::gate`]) when its request reached the app, how long its
//! body is, and when the response is done.

use std::pin::Pin;
use std::task::{Context, Poll};

use actix_web::body::{BodySize, BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderMap};
use actix_web::middleware::Next;
use bytes::Bytes;

use super::gate::GateHandle;

/// Middleware (outermost): reports the request to its gate.
pub(crate) async fn track(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<Tracked>, actix_web::Error> {
    let done = req.conn_data::<GateHandle>().cloned().map(|gate| {
        gate.request_started(body_length(req.headers()));
        Done(gate)
    });
    // An error ends the request too: `done` is dropped with it.
    let response = next.call(req).await?;
    Ok(response.map_body(|_, body| Tracked {
        body: body.boxed(),
        _done: done,
    }))
}

/// How many body bytes follow the head; `None` when chunked.
fn body_length(headers: &HeaderMap) -> Option<u64> {
    if headers.contains_key(header::TRANSFER_ENCODING) {
        return None;
    }
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok());
    Some(length.unwrap_or(0))
}

/// Tells the gate that the response is done when it is dropped.
struct Done(GateHandle);

impl Drop for Done {
    fn drop(&mut self) {
        self.0.response_done();
    }
}

/// A response body that reports its end (when actix drops it, after its last bytes).
pub(crate) struct Tracked {
    body: BoxBody,
    _done: Option<Done>,
}

impl MessageBody for Tracked {
    type Error = <BoxBody as MessageBody>::Error;

    fn size(&self) -> BodySize {
        self.body.size()
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_next(cx)
    }
}
