//! Streaming the journal to RabbitMQ on one connection: records are read in chunks, published
//! with up to [`WINDOW`] confirms in flight, and each segment's confirmed offset is handed to
//! the journal as confirms come (they come in order on one channel). A failure ends the
//! stream; the next connection starts again from what was confirmed, so a job whose confirm
//! was lost with the connection is published again (a repeat the worker absorbs).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::stream::{FuturesOrdered, StreamExt};
use tracing::{debug, warn};
use vmpipe_common::amqp::{PublishError, job_properties_of, publish};

use super::telemetry::{JOURNALED_TOTAL, JournalReason, LATE_CONFIRMS_TOTAL};
use super::{Link, Publisher};
use crate::journal::{JournalError, Record, SegmentId, now_ms};

/// Confirms in flight at most. RabbitMQ's CPU per persistent message falls steeply with
/// many in flight (it confirms them in bulk).
pub(crate) const WINDOW: usize = 2048;
/// And at most this much of their payloads (lapin holds each until it is sent).
const WINDOW_BYTES: usize = 16 * 1024 * 1024;
/// About how much of the journal one read takes.
const READ_BYTES: usize = 1024 * 1024;
/// How often confirms overdue and the connection are looked at.
const TICK: Duration = Duration::from_millis(250);
/// How long the confirms in flight are waited for when ingest stops.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// Why a stream ended.
#[derive(Debug, thiserror::Error)]
pub(super) enum StreamError {
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("lost the RabbitMQ connection")]
    Lost,
    #[error("RabbitMQ took no message for {0:?} (flow control, an alarm?)")]
    Stalled(Duration),
}

/// A record published, its confirm awaited.
struct Flight {
    job_id: uuid::Uuid,
    segment: SegmentId,
    /// Where the record ends in its segment.
    end: u64,
    appended_ms: u64,
    /// Counted when it was journaled (the broker away or not confirming).
    held: bool,
    /// Counted since, its confirm not in time.
    late: bool,
    bytes: usize,
}

/// Confirmed offsets to hand to the journal, by segment.
#[derive(Default)]
struct Acks(HashMap<SegmentId, (u64, usize)>);

impl Acks {
    fn add(&mut self, flight: &Flight) {
        let entry = self.0.entry(flight.segment.clone()).or_default();
        entry.0 = entry.0.max(flight.end);
        entry.1 += 1;
    }
}

impl Publisher {
    /// Publishes what the journal holds on `link`, and what comes, until a failure (an error)
    /// or until ingest stops (`Ok`).
    pub(super) async fn stream(&self, link: &Link) -> Result<(), StreamError> {
        let journal = &self.inner.journal;
        // Confirms recorded by a previous stream are taken into account.
        journal.flush().await;
        let mut commits = journal.subscribe();
        let mut read: HashMap<SegmentId, u64> = HashMap::new();
        let mut ready: VecDeque<(SegmentId, Record, u64)> = VecDeque::new();
        let mut confirms = FuturesOrdered::new();
        let mut flights: VecDeque<Flight> = VecDeque::new();
        let mut tick = tokio::time::interval(TICK);
        let mut stopping: Option<Instant> = None;
        let mut in_flight_bytes = 0;
        // When the last group was sent: the next waits for `linger` to have passed.
        let mut last_group: Option<tokio::time::Instant> = None;
        let timeout_ms = self.inner.publish_timeout.as_millis() as u64;
        loop {
            // A group gathers for `linger` before it goes (the first after a pause goes at once).
            let mut may_send =
                last_group.is_none_or(|at| at + self.inner.linger <= tokio::time::Instant::now());
            // Nothing more in the journal: wait for the next commit (not the next group).
            let mut idle = false;
            let room = |confirms: usize, bytes: usize| confirms < WINDOW && bytes < WINDOW_BYTES;
            while stopping.is_none() && room(confirms.len(), in_flight_bytes) {
                if ready.is_empty() {
                    if !may_send {
                        break;
                    }
                    may_send = false;
                    commits.borrow_and_update();
                    if !self.fill(&mut read, &mut ready).await? {
                        last_group = None;
                        idle = true;
                        break;
                    }
                    last_group = Some(tokio::time::Instant::now());
                }
                let Some((segment, record, end)) = ready.pop_front() else {
                    break;
                };
                let properties =
                    job_properties_of(record.job_id, &record.request_id, record.received_secs);
                // A broker that stops reading (a memory or disk alarm) would hold this forever.
                let sent = tokio::time::timeout(
                    self.inner.publish_timeout,
                    publish(
                        &link.channel,
                        &self.inner.queue,
                        &record.payload,
                        properties,
                    ),
                );
                let pending = match sent.await {
                    Ok(pending) => pending?,
                    Err(_) => {
                        self.record(settle_ready(&mut confirms, &mut flights, self, timeout_ms));
                        return Err(StreamError::Stalled(self.inner.publish_timeout));
                    }
                };
                let late = !record.held
                    && now_ms().saturating_sub(record.appended_ms) > timeout_ms
                    && self.first_time_late(&segment, end, record.appended_ms);
                if late {
                    self.count_late(1);
                }
                in_flight_bytes += record.payload.len();
                flights.push_back(Flight {
                    job_id: record.job_id,
                    segment,
                    end,
                    appended_ms: record.appended_ms,
                    held: record.held,
                    late,
                    bytes: record.payload.len(),
                });
                confirms.push_back(pending.confirmed());
            }
            if stopping.is_some() && confirms.is_empty() {
                break;
            }
            tokio::select! {
                Some(outcome) = confirms.next() => {
                    let mut acks = Acks::default();
                    let mut outcome = Some(outcome);
                    // And every confirm already in, without waiting.
                    while let Some(confirmed) = outcome.take() {
                        let flight = flights.pop_front().expect("a flight per confirm");
                        in_flight_bytes -= flight.bytes;
                        if let Err(e) = confirmed {
                            self.record(acks);
                            return Err(e.into());
                        }
                        self.confirmed(&flight, timeout_ms);
                        acks.add(&flight);
                        outcome = confirms.next().now_or_never().flatten();
                    }
                    self.record(acks);
                }
                _ = commits.changed(), if stopping.is_none() && ready.is_empty() && idle => {}
                _ = tokio::time::sleep_until(
                    last_group.map_or_else(tokio::time::Instant::now, |at| at + self.inner.linger),
                ), if stopping.is_none() && ready.is_empty() && !idle
                    && room(confirms.len(), in_flight_bytes) => {}
                _ = tick.tick() => {
                    let late = overdue(&mut flights, timeout_ms, |f| {
                        self.first_time_late(&f.segment, f.end, f.appended_ms)
                    });
                    if late > 0 {
                        self.count_late(late);
                        warn!(jobs = late, timeout_ms,
                            "journaled jobs not confirmed in time; they stay journaled until \
                             RabbitMQ confirms them");
                    }
                    if !link.channel.status().connected() {
                        return Err(StreamError::Lost);
                    }
                    if self.inner.health.is_degraded() && confirms.is_empty() {
                        self.probe(link);
                    }
                    if stopping.is_some_and(|since| since.elapsed() >= STOP_GRACE) {
                        break;
                    }
                }
                _ = self.inner.stop.cancelled(), if stopping.is_none() => {
                    stopping = Some(Instant::now());
                }
            }
        }
        self.record(settle_ready(&mut confirms, &mut flights, self, timeout_ms));
        debug!(unconfirmed = confirms.len(), "publisher stopped");
        journal.flush().await;
        Ok(())
    }

    /// Reads the next records to publish into `ready`: from segments no longer taking appends
    /// first (adopted ones, older ones), then the one that is. False when there is nothing.
    async fn fill(
        &self,
        read: &mut HashMap<SegmentId, u64>,
        ready: &mut VecDeque<(SegmentId, Record, u64)>,
    ) -> Result<bool, StreamError> {
        let mut segments = self.inner.journal.segments();
        read.retain(|id, _| segments.iter().any(|(s, _)| s == id));
        if let Ok(mut counted) = self.inner.counted_late.lock() {
            counted.retain(|id, _| segments.iter().any(|(s, _)| s == id));
        }
        segments.sort_by_key(|(_, state)| !state.closed);
        for (id, state) in segments {
            let from = read.get(&id).copied().unwrap_or(state.ack).max(state.ack);
            if from >= state.end {
                continue;
            }
            let read_back = self
                .inner
                .journal
                .read(&id, from, state.end, READ_BYTES)
                .await;
            let (records, next) = match read_back {
                Ok((records, next)) if !records.is_empty() => (records, next),
                // Gone, or committed bytes that are not records: cannot be, short of damage
                // (or someone's hand). Set aside, not tried again and again.
                outcome => {
                    let error = outcome.err().map(|e| e.to_string());
                    tracing::error!(segment = %id.file_name(), offset = from, error,
                        "journal segment cannot be read back; set aside in journal/bad/");
                    self.inner.journal.forget(id.clone());
                    read.insert(id, state.end);
                    continue;
                }
            };
            read.insert(id.clone(), next);
            ready.extend(records.into_iter().map(|(r, end)| (id.clone(), r, end)));
            return Ok(true);
        }
        Ok(false)
    }

    fn confirmed(&self, flight: &Flight, timeout_ms: u64) {
        self.confirmed_to_upload(flight.job_id);
        let in_time = !flight.late && now_ms().saturating_sub(flight.appended_ms) <= timeout_ms;
        if in_time {
            self.inner.health.confirmed();
        }
        if flight.late {
            metrics::counter!(LATE_CONFIRMS_TOTAL).increment(1);
        }
        let via = if flight.held || flight.late {
            "journal"
        } else {
            "confirm"
        };
        metrics::counter!("vmpipe_jobs_published_total", "via" => via).increment(1);
    }

    fn record(&self, acks: Acks) {
        for (segment, (end, records)) in acks.0 {
            self.inner.journal.ack(segment, end, records);
        }
    }

    /// Whether the record ending at `end` of `segment` is counted late for the first time: not
    /// one counted before a reconnect, nor one journaled before this process started (an
    /// adopted one, counted by the process that journaled it).
    fn first_time_late(&self, segment: &SegmentId, end: u64, appended_ms: u64) -> bool {
        if appended_ms < self.inner.started_ms {
            return false;
        }
        let Ok(mut counted) = self.inner.counted_late.lock() else {
            return false;
        };
        let through = counted.entry(segment.clone()).or_default();
        if end <= *through {
            return false;
        }
        *through = end;
        true
    }

    /// `jobs` more were not confirmed in time.
    fn count_late(&self, jobs: usize) {
        metrics::counter!(JOURNALED_TOTAL, "reason" => JournalReason::Timeout.as_str())
            .increment(jobs as u64);
        metrics::counter!("vmpipe_publish_failures_total").increment(jobs as u64);
        for _ in 0..jobs {
            self.inner.health.timed_out();
        }
    }
}

/// Marks the flights whose confirm is overdue (and not counted already, `first`); how many.
fn overdue(
    flights: &mut VecDeque<Flight>,
    timeout_ms: u64,
    mut first: impl FnMut(&Flight) -> bool,
) -> usize {
    let now = now_ms();
    let mut late = 0;
    for flight in flights.iter_mut() {
        if now.saturating_sub(flight.appended_ms) <= timeout_ms {
            break;
        }
        if !flight.held && !flight.late && first(flight) {
            flight.late = true;
            late += 1;
        }
    }
    late
}

/// The confirms already in (without waiting), taken in order up to the first failure.
fn settle_ready<F>(
    confirms: &mut FuturesOrdered<F>,
    flights: &mut VecDeque<Flight>,
    publisher: &Publisher,
    timeout_ms: u64,
) -> Acks
where
    F: std::future::Future<Output = Result<(), PublishError>>,
{
    let mut acks = Acks::default();
    while let Some(Some(Ok(()))) = confirms.next().now_or_never() {
        let Some(flight) = flights.pop_front() else {
            break;
        };
        publisher.confirmed(&flight, timeout_ms);
        acks.add(&flight);
    }
    acks
}
