//! The dispatcher's loops: fan-out (events to deliveries) and one per sink (claim, deliver up
//! to the sink's concurrency, record the outcomes in batches).
//!
//! Each sink has its own loop and claims only its own deliveries: a sink that is down or slow
//! delays nobody else.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt as _;
use futures_util::stream::{FuturesUnordered, StreamExt as _};
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use vmpipe_common::backoff::{Backoff, exponential};
use vmpipe_common::settings::NotifySettings;

use super::outbox::{self, Claimed, Outcome, Status};
use super::{POLL, Sink};
use crate::hooks::runner::WorkerIdentity;

/// The longest wait between two attempts of a delivery.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(3600);
/// How long deliveries in progress may finish after shutdown; the rest are handed back.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// A lease outlasts the sink's timeout by this much.
const LEASE_MARGIN: Duration = Duration::from_secs(30);

/// Runs `op` until it succeeds, with backoff while the database is away; `None` at shutdown.
pub(super) async fn with_retries<T, F, Fut>(shutdown: &CancellationToken, mut op: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, sqlx::Error>>,
{
    let mut backoff = Backoff::reconnect();
    loop {
        match op().await {
            Ok(value) => return Some(value),
            Err(e) => {
                let wait = backoff.next_delay();
                warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "events: database error");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.cancelled() => return None,
                }
            }
        }
    }
}

/// Turns new events into deliveries, and wakes the sinks that got some.
pub(super) async fn fan_out_loop(
    pool: PgPool,
    wake: Arc<Notify>,
    sink_wakers: Vec<Arc<Notify>>,
    shutdown: CancellationToken,
) {
    loop {
        let Some(taken) = with_retries(&shutdown, || outbox::fan_out(&pool)).await else {
            return;
        };
        if taken > 0 {
            for waker in &sink_wakers {
                waker.notify_one();
            }
            continue;
        }
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(POLL) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// One sink's deliveries.
pub(super) struct SinkLoop {
    pub pool: PgPool,
    pub settings: NotifySettings,
    pub sink: Arc<dyn Sink>,
    pub public_url: Option<String>,
    pub identity: WorkerIdentity,
    pub wake: Arc<Notify>,
}

impl SinkLoop {
    /// Claims, delivers and records until `shutdown`. Deliveries in flight are polled all the
    /// time, also while the database is away (claims and records then wait their backoff
    /// without holding them up).
    pub(super) async fn run(self, shutdown: CancellationToken) {
        let name = self.settings.name.clone();
        let concurrency = self.settings.concurrency();
        let lease = self.settings.timeout() + LEASE_MARGIN;
        let mut in_flight = FuturesUnordered::new();
        let mut done: Vec<Outcome> = Vec::new();
        let (mut claim_backoff, mut claim_after) = (Backoff::reconnect(), Instant::now());
        let (mut record_backoff, mut record_after) = (Backoff::reconnect(), Instant::now());
        let mut stop_by: Option<Instant> = None;
        info!(sink = %name, kind = self.settings.kind.as_str(), concurrency, "event sink started");
        loop {
            let now = Instant::now();
            if !done.is_empty() && now >= record_after {
                match outbox::record(&self.pool, &name, &done).await {
                    Ok(()) => {
                        done.clear();
                        record_backoff = Backoff::reconnect();
                    }
                    Err(e) => {
                        let wait = record_backoff.next_delay();
                        warn!(sink = %name, error = %e, deliveries = done.len(), retry_in_ms = wait.as_millis() as u64, "cannot record event deliveries");
                        record_after = Instant::now() + wait;
                    }
                }
            }
            let stopping = shutdown.is_cancelled();
            if stopping && stop_by.is_none() {
                stop_by = Some(Instant::now() + STOP_GRACE);
            }
            let mut more_due = false;
            if !stopping && now >= claim_after && in_flight.len() < concurrency {
                let free = concurrency - in_flight.len();
                match outbox::claim(&self.pool, &name, free, lease, &self.identity).await {
                    Ok(claims) => {
                        claim_backoff = Backoff::reconnect();
                        more_due = claims.len() == free;
                        for claim in claims {
                            in_flight.push(self.attempt(claim));
                        }
                    }
                    Err(e) => {
                        let wait = claim_backoff.next_delay();
                        warn!(sink = %name, error = %e, retry_in_ms = wait.as_millis() as u64, "cannot claim event deliveries");
                        claim_after = Instant::now() + wait;
                    }
                }
            }
            let past_grace = stop_by.is_some_and(|at| Instant::now() >= at);
            if stopping && in_flight.is_empty() && (done.is_empty() || past_grace) {
                if !done.is_empty() {
                    // The database is away: the leases bring these back later.
                    warn!(sink = %name, deliveries = done.len(), "stopping: outcomes not recorded");
                }
                break;
            }
            // How long to wait for news: not at all while more may be due and there is room,
            // until the next record or claim retry, at most a poll.
            let mut wait = if more_due && in_flight.len() < concurrency {
                Duration::ZERO
            } else {
                POLL
            };
            if !done.is_empty() {
                wait = wait.min(record_after.saturating_duration_since(Instant::now()));
            }
            if let Some(at) = stop_by {
                wait = wait.min(at.saturating_duration_since(Instant::now()));
            }
            tokio::select! {
                Some(outcome) = in_flight.next(), if !in_flight.is_empty() => {
                    done.push(outcome);
                    while let Some(Some(outcome)) = in_flight.next().now_or_never() {
                        done.push(outcome);
                    }
                }
                _ = self.wake.notified(), if !stopping => {}
                _ = shutdown.cancelled(), if !stopping => {}
                _ = tokio::time::sleep(wait) => {
                    if past_grace && !in_flight.is_empty() {
                        warn!(sink = %name, deliveries = in_flight.len(), "stopping: deliveries still in progress are handed back");
                        in_flight.clear();
                    }
                }
            }
        }
        if let Err(e) = outbox::release_mine(&self.pool, &name, &self.identity).await {
            warn!(sink = %name, error = %e, "could not hand the unfinished deliveries back; their leases will");
        }
    }

    /// One attempt at one delivery, and what to record.
    fn attempt(&self, claim: Claimed) -> impl Future<Output = Outcome> + Send + 'static {
        let sink = self.sink.clone();
        let name = self.settings.name.clone();
        let event = claim.event.to_event(self.public_url.as_deref());
        let timeout = self.settings.timeout() + Duration::from_secs(5);
        let max_attempts = self.settings.max_attempts;
        let retry_delay = self.settings.retry_delay();
        async move {
            let started = Instant::now();
            let result = match tokio::time::timeout(timeout, sink.deliver(&event)).await {
                Ok(result) => result,
                Err(_) => Err(super::DeliveryError::retry("the delivery timed out")),
            };
            let took = started.elapsed();
            metrics::histogram!("vmpipe_event_delivery_seconds", "sink" => name.clone())
                .record(took.as_secs_f64());
            let (status, error, retry_in) = match result {
                Ok(()) => {
                    let lag = (chrono::Utc::now() - event.occurred_at)
                        .num_milliseconds()
                        .max(0);
                    metrics::histogram!("vmpipe_event_lag_seconds", "sink" => name.clone())
                        .record(lag as f64 / 1000.0);
                    (Status::Delivered, None, Duration::ZERO)
                }
                Err(e) if e.retry && i64::from(claim.attempts) < i64::from(max_attempts) => {
                    let wait = exponential(
                        retry_delay,
                        MAX_RETRY_DELAY,
                        (claim.attempts - 1).max(0) as u32,
                    );
                    warn!(sink = %name, event_id = %event.event_id, attempt = claim.attempts, error = %e, retry_in_ms = wait.as_millis() as u64, "event delivery failed; will retry");
                    (Status::Pending, Some(e.message), wait)
                }
                Err(e) => {
                    warn!(sink = %name, event_id = %event.event_id, attempt = claim.attempts, error = %e, "event delivery failed for good");
                    (Status::Failed, Some(e.message), Duration::ZERO)
                }
            };
            let outcome = match status {
                Status::Delivered => "delivered",
                Status::Pending => "retry",
                Status::Failed => "failed",
            };
            metrics::counter!("vmpipe_event_deliveries_total", "sink" => name, "outcome" => outcome)
                .increment(1);
            Outcome {
                seq: claim.event.seq,
                attempt_id: claim.attempt_id,
                status,
                error,
                duration_ms: i32::try_from(took.as_millis()).unwrap_or(i32::MAX),
                retry_in,
            }
        }
    }
}
