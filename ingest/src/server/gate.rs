//! The connection gate: every connection's bytes pass through it on their way to actix-http's
//! HTTP/1 dispatcher, one request at a time.
//!
//! actix-http times only the first request head of a connection (`client_request_timeout`); on
//! a keep-alive connection the next head has no deadline once its first byte has arrived, so a
//! client could hold a connection (and a file descriptor) for ever with one byte. The gate
//! times every head itself: from its first byte (from the accept for the first request) it has
//! [`HEAD_TIMEOUT`] to be complete, then the client gets a 408 and the connection closes. An
//! idle connection between requests is not timed here (actix's keep-alive closes it).
//!
//! To know where a head ends, the gate hands actix one request at a time: the head, and, once
//! the request has reached the app (its handle says so, see [`super::track`]), at most its
//! `Content-Length` of body. Bytes after that (a pipelined request) wait until the response is
//! done; they then start the next head's clock. It also escapes request-targets on the way
//! ([`super::head`]) and gives actix-http's own empty-bodied errors vmpipe's JSON body
//! ([`super::answers`]). When ingest stops, it closes its connection once idle between
//! requests, never with a request's byte received ([`super::drain`]).

use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker, ready};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use super::answers;
use super::drain::Closing;
use super::head::HeadScan;

/// How long a request head may take, from its first byte.
pub(crate) const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes read at a time while a head arrives.
const READ_CHUNK: usize = 8 * 1024;
/// The last bytes of a chunked body when it ended without trailers.
const CHUNKED_END: &[u8; 5] = b"0\r\n\r\n";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// A response is done: the next head's clock starts now if its bytes are already here.
    Between,
    /// A head is arriving; timed once `started`.
    Head { started: Option<Instant> },
    /// The head is with actix, and the request not yet with the app.
    HeadDone { started: Instant },
    /// The request is with the app: at most `left` more body bytes (unknown when chunked).
    Request { left: Option<u64> },
}

struct Shared {
    phase: Cell<Phase>,
    /// The read waiting for the phase to change.
    waker: Cell<Option<Waker>>,
    /// The app's last response may not be all written yet.
    draining: Cell<bool>,
    /// The request's body has not all been handed over (or did not end as it said it would).
    body_unfinished: Cell<bool>,
}

/// A connection's handle, kept in its extensions: how its requests report their progress.
#[derive(Clone)]
pub(crate) struct GateHandle(Rc<Shared>);

impl GateHandle {
    /// The request reached the app; its body is `body` bytes long (`None`: chunked).
    pub(crate) fn request_started(&self, body: Option<u64>) {
        self.0.body_unfinished.set(body != Some(0));
        self.0.phase.set(Phase::Request { left: body });
        self.wake();
    }

    /// The app's response is done (its body ended or was dropped).
    pub(crate) fn response_done(&self) {
        self.0.phase.set(Phase::Between);
        self.0.draining.set(true);
        self.wake();
    }

    fn wake(&self) {
        if let Some(waker) = self.0.waker.take() {
            waker.wake();
        }
    }
}

pub(crate) struct Gate<T> {
    io: T,
    shared: Rc<Shared>,
    /// Read from the client, not yet handed to actix.
    held: BytesMut,
    /// Head bytes ready for actix (escaped).
    ready: BytesMut,
    scan: HeadScan,
    timer: Option<Pin<Box<Sleep>>>,
    /// The last bytes of a chunked body.
    tail: Vec<u8>,
    /// actix has written bytes it has not flushed yet.
    unflushed: bool,
    /// The gate's own bytes, written before anything else.
    out: BytesMut,
    /// Ingest is stopping: an idle connection closes (see [`super::drain`]).
    closing: Closing,
}

impl<T> Gate<T> {
    pub(crate) fn new(io: T, closing: Closing) -> Self {
        let shared = Shared {
            phase: Cell::new(Phase::Head {
                started: Some(Instant::now()),
            }),
            waker: Cell::new(None),
            draining: Cell::new(false),
            body_unfinished: Cell::new(false),
        };
        Self {
            io,
            shared: Rc::new(shared),
            held: BytesMut::new(),
            ready: BytesMut::new(),
            scan: HeadScan::default(),
            timer: None,
            tail: Vec::new(),
            unflushed: false,
            out: BytesMut::new(),
            closing,
        }
    }

    pub(crate) fn handle(&self) -> GateHandle {
        GateHandle(self.shared.clone())
    }

    fn set_phase(&self, phase: Phase) {
        self.shared.phase.set(phase);
    }

    /// Hands over ready head bytes, if any.
    fn hand_over_ready(&mut self, buf: &mut ReadBuf<'_>) -> bool {
        if self.ready.is_empty() {
            return false;
        }
        let n = self.ready.len().min(buf.remaining());
        buf.put_slice(&self.ready[..n]);
        self.ready.advance(n);
        true
    }

    /// Body bytes handed over: what is left of the body, and how it ends.
    fn body_handed_over(&mut self, left: Option<u64>, bytes: &[u8]) {
        match left {
            Some(left) => {
                let left = left.saturating_sub(bytes.len() as u64);
                self.shared.body_unfinished.set(left > 0);
                self.set_phase(Phase::Request { left: Some(left) });
            }
            None => {
                let start = bytes.len().saturating_sub(CHUNKED_END.len());
                self.tail.extend_from_slice(&bytes[start..]);
                let keep = self.tail.len().saturating_sub(CHUNKED_END.len());
                self.tail.drain(..keep);
                self.shared.body_unfinished.set(self.tail != CHUNKED_END);
            }
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> Gate<T> {
    /// Reads what the client sent into `held`: the number of bytes (0 at its end).
    fn fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.held.capacity() - self.held.len() < READ_CHUNK {
            self.held.reserve(READ_CHUNK);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.held)
    }

    /// Waits for the client (already polled) or for the head's deadline.
    fn wait(&mut self, started: Option<Instant>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(started) = started else {
            return Poll::Pending;
        };
        let deadline = tokio::time::Instant::from_std(started + HEAD_TIMEOUT);
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        if timer.as_mut().poll(cx).is_ready() {
            return self.time_out(cx);
        }
        Poll::Pending
    }

    /// The head took too long: a 408 if nothing else is being written (one try, never a wait),
    /// and the connection ends.
    fn time_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        metrics::counter!("vmpipe_head_timeouts_total").increment(1);
        if !self.unflushed && self.out.is_empty() && !self.shared.draining.get() {
            let _ = Pin::new(&mut self.io).poll_write(cx, &answers::head_timeout());
            let _ = Pin::new(&mut self.io).poll_flush(cx);
        }
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "request head not complete in time",
        )))
    }

    /// Writes the gate's own bytes.
    fn write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.out.is_empty() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.out))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out.advance(n);
        }
        Poll::Ready(Ok(()))
    }

    /// Whether what actix writes now can only be an answer of its own.
    fn between_requests(&self) -> bool {
        !self.unflushed
            && !self.shared.draining.get()
            && !matches!(self.shared.phase.get(), Phase::Request { .. })
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for Gate<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            match this.shared.phase.get() {
                Phase::Between => {
                    let pending = !this.held.is_empty() || this.shared.body_unfinished.get();
                    // Idle connections keep no buffers.
                    if this.held.is_empty() {
                        this.held = BytesMut::new();
                    }
                    if this.ready.is_empty() {
                        this.ready = BytesMut::new();
                    }
                    this.scan = HeadScan::default();
                    this.shared.body_unfinished.set(false);
                    this.tail.clear();
                    this.set_phase(Phase::Head {
                        started: pending.then(Instant::now),
                    });
                }
                Phase::Head { started } => {
                    if this.hand_over_ready(buf) {
                        return Poll::Ready(Ok(()));
                    }
                    if started.is_some_and(|s| s.elapsed() >= HEAD_TIMEOUT) {
                        return this.time_out(cx);
                    }
                    if this.held.is_empty() {
                        match this.fill(cx) {
                            // Idle between requests, no byte of a next one here, and ingest
                            // is stopping: the connection ends (actix sees the end of input).
                            Poll::Pending if started.is_none() && this.closing.poll_now(cx) => {
                                return Poll::Ready(Ok(()));
                            }
                            Poll::Pending => return this.wait(started, cx),
                            Poll::Ready(Ok(0)) => return Poll::Ready(Ok(())),
                            Poll::Ready(Ok(_)) => {
                                let started = started.or_else(|| Some(Instant::now()));
                                this.set_phase(Phase::Head { started });
                            }
                            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        }
                        continue;
                    }
                    let (used, done) = this.scan.feed(&this.held, &mut this.ready);
                    this.held.advance(used);
                    if done {
                        let started = started.unwrap_or_else(Instant::now);
                        this.set_phase(Phase::HeadDone { started });
                    }
                }
                Phase::HeadDone { started } => {
                    if this.hand_over_ready(buf) {
                        return Poll::Ready(Ok(()));
                    }
                    if started.elapsed() >= HEAD_TIMEOUT {
                        return this.time_out(cx);
                    }
                    this.shared.waker.set(Some(cx.waker().clone()));
                    return this.wait(Some(started), cx);
                }
                Phase::Request { left } => {
                    if this.hand_over_ready(buf) {
                        return Poll::Ready(Ok(()));
                    }
                    if left == Some(0) {
                        // The body is all handed over: the rest waits for the response.
                        this.shared.waker.set(Some(cx.waker().clone()));
                        return Poll::Pending;
                    }
                    let room = buf.remaining();
                    let allowed = left.map_or(room, |l| room.min(l.try_into().unwrap_or(room)));
                    if !this.held.is_empty() {
                        let n = allowed.min(this.held.len());
                        let bytes = this.held.split_to(n);
                        buf.put_slice(&bytes);
                        this.body_handed_over(left, &bytes);
                        return Poll::Ready(Ok(()));
                    }
                    if allowed < room {
                        // Near the end of the body: read, and hand over only what is its own.
                        match ready!(this.fill(cx))? {
                            0 => return Poll::Ready(Ok(())),
                            _ => continue,
                        }
                    }
                    let before = buf.filled().len();
                    ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
                    this.body_handed_over(left, &buf.filled()[before..]);
                    return Poll::Ready(Ok(()));
                }
            }
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Gate<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.write_out(cx))?;
        if this.between_requests()
            && let Some((used, answer)) = answers::with_json_body(buf)
        {
            this.out.extend_from_slice(&answer);
            this.unflushed = true;
            if let Poll::Ready(Err(e)) = this.write_out(cx) {
                return Poll::Ready(Err(e));
            }
            return Poll::Ready(Ok(used));
        }
        this.unflushed = true;
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.write_out(cx))?;
        ready!(Pin::new(&mut this.io).poll_flush(cx))?;
        this.unflushed = false;
        if !matches!(this.shared.phase.get(), Phase::Request { .. }) {
            this.shared.draining.set(false);
        }
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.write_out(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}
