//! A graceful stop in two steps, so that a restart costs no client a request.
//!
//! 1. **Draining** (for `VMPIPE_DRAIN_SECS`): `/readyz` answers 503 so that a load balancer
//!    (or KAZOO's operator) stops sending here, new connections are still accepted, and every
//!    answer says `Connection: close` (see [`close_when_draining`]), so each client learns
//!    on its next request, with a response, that the connection is going.
//! 2. **Closing**: each connection's gate closes it once it is idle, with no byte of a next
//!    request received (see `gate.rs`); requests in flight finish, and are answered with
//!    `Connection: close`. actix-server stops accepting and waits for the connections.
//!
//! An idle kept-alive connection is never closed during the drain: a client may be sending on
//! it at that moment, and a request that meets a close gets an error, not an answer (KAZOO does
//! not retry its API uploads).

use std::future::Future;
use std::pin::Pin;
use std::task::Context;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::ConnectionType;
use actix_web::middleware::Next;
use actix_web::web;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// The stop's state, shared by the app (readiness, answers) and every connection's gate.
#[derive(Clone, Default)]
pub(crate) struct Drain {
    draining: CancellationToken,
    closing: CancellationToken,
}

impl Drain {
    /// Step 1: `/readyz` is 503 and answers say `Connection: close`.
    pub(crate) fn start_draining(&self) {
        self.draining.cancel();
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.draining.is_cancelled()
    }

    /// Step 2: idle connections close (draining too, if it was not yet).
    pub(crate) fn close_idle(&self) {
        self.draining.cancel();
        self.closing.cancel();
    }

    /// What a gate waits on, between requests.
    pub(super) fn closing(&self) -> Closing {
        Closing {
            done: self.closing.is_cancelled(),
            wait: Box::pin(self.closing.clone().cancelled_owned()),
        }
    }
}

/// Ready once idle connections are to close.
pub(super) struct Closing {
    done: bool,
    wait: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl Closing {
    /// Whether idle connections are to close now; otherwise `cx` is woken when they are.
    pub(super) fn poll_now(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.done && self.wait.as_mut().poll(cx).is_ready() {
            self.done = true;
        }
        self.done
    }
}

/// Middleware: while draining, every answer closes its connection (`Connection: close`), the
/// answers to requests that started before the drain too.
pub(crate) async fn close_when_draining(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody + 'static>, actix_web::Error> {
    let drain = req.app_data::<web::Data<Drain>>().cloned();
    // Innermost: the handlers' errors are responses by now.
    let mut response = next.call(req).await?;
    if drain.is_some_and(|d| d.is_draining()) {
        response
            .response_mut()
            .head_mut()
            .set_connection_type(ConnectionType::Close);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closing_wakes_and_stays_set() {
        let drain = Drain::default();
        let mut closing = drain.closing();
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(!closing.poll_now(&mut cx));
        drain.start_draining();
        assert!(drain.is_draining());
        assert!(
            !closing.poll_now(&mut cx),
            "draining leaves idle connections open"
        );
        drain.close_idle();
        assert!(closing.poll_now(&mut cx));
        assert!(closing.poll_now(&mut cx));
        assert!(
            drain.closing().poll_now(&mut cx),
            "a gate made later closes too"
        );
    }
}
