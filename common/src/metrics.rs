//! Prometheus metrics: one process-wide recorder; each service renders it on `GET /metrics`.
//!
//! Every metric is declared once, here, in [`INGEST`], [`WORKER`] or [`API`]: its name, its HELP text,
//! its kind (a histogram with the buckets that fit what it measures) and the label values it
//! is known to take. A service calls [`register`] with its list at start-up: each metric gets
//! its HELP line, and every counter (each known label set of it), gauge and histogram is
//! exported from the start, at 0, so that `rate()` and `increase()` see the first event and a
//! dashboard shows 0 rather than "no data". A label value known only at run time (a hook's
//! name) is registered with [`register_series`].
//!
//! A new metric is one more entry in a list (and the code that updates it). The buckets are
//! the recorder's and are set when it is installed: that is why both services' lists live in
//! this crate (tests run both services in one process).

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// What a metric is.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    Counter,
    Gauge,
    /// A histogram with these buckets (upper bounds).
    Histogram(&'static [f64]),
}

/// One label set of a metric, e.g. `&[("outcome", "stored"), ("mode", "raw")]`.
pub type Labels = &'static [(&'static str, &'static str)];

/// A metric a service exports.
#[derive(Clone, Copy, Debug)]
pub struct Metric {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    /// The label sets exported from the start. Empty: the metric has no labels (or see
    /// `run_time_labels`).
    pub series: &'static [Labels],
    /// Its label values are known only at run time (a hook's name): exported once the service
    /// knows them ([`register_series`]), never without labels.
    pub run_time_labels: bool,
}

impl Metric {
    const fn new(name: &'static str, kind: Kind, help: &'static str) -> Self {
        Metric {
            name,
            help,
            kind,
            series: &[],
            run_time_labels: false,
        }
    }

    const fn with(self, series: &'static [Labels]) -> Self {
        Metric { series, ..self }
    }

    const fn labelled_at_run_time(self) -> Self {
        Metric {
            run_time_labels: true,
            ..self
        }
    }
}

/// Latencies of a request or one job, in seconds: 1 ms to 5 min.
pub const SECONDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0,
];
/// Long waits, in seconds: 10 ms to an hour (a queue's lag, a transcription).
pub const LONG_SECONDS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
    3600.0,
];
/// Rows per statement: 1 to 1000.
pub const ROWS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0];

const UPLOAD_SERIES: &[Labels] = &[
    &[("outcome", "stored"), ("mode", "raw")],
    &[("outcome", "stored"), ("mode", "multipart")],
    &[("outcome", "stored"), ("mode", "multipart_base64")],
    // A refused or failed upload is counted before its mode is known.
    &[("outcome", "rejected"), ("mode", "unknown")],
    &[("outcome", "failed"), ("mode", "unknown")],
    &[("outcome", "busy"), ("mode", "unknown")],
];

/// ingest's metrics.
pub const INGEST: &[Metric] = &[
    Metric::new(
        "vmpipe_uploads_total",
        Kind::Counter,
        "Upload requests (PUT/POST) by outcome (stored; rejected 4xx; failed 5xx; busy 503) and \
         body mode. Counts requests: KAZOO storing the same key again counts again.",
    )
    .with(UPLOAD_SERIES),
    Metric::new(
        "vmpipe_upload_bytes_total",
        Kind::Counter,
        "Bytes of the files stored (uploads answered 201).",
    ),
    Metric::new(
        "vmpipe_upload_duration_seconds",
        Kind::Histogram(SECONDS),
        "Seconds from the start of an upload request to its 201 answer.",
    ),
    Metric::new(
        "vmpipe_jobs_published_total",
        Kind::Counter,
        "Jobs confirmed by RabbitMQ: via=confirm within the publish timeout of their upload, \
         via=journal later (they waited in the journal for the broker).",
    )
    .with(&[&[("via", "confirm")], &[("via", "journal")]]),
    Metric::new(
        "vmpipe_publish_failures_total",
        Kind::Counter,
        "Jobs whose confirm did not come within the publish timeout while connected (they \
         stay in the journal until confirmed). Not counted while no connection is up: see \
         vmpipe_jobs_journaled_total.",
    ),
    Metric::new(
        "vmpipe_journal_jobs",
        Kind::Gauge,
        "Jobs in the local journal that RabbitMQ has not confirmed yet (under load, the few \
         in flight; see vmpipe_journal_waiting_seconds).",
    ),
    Metric::new(
        "vmpipe_journal_waiting_seconds",
        Kind::Gauge,
        "Seconds the journal's jobs have waited without RabbitMQ confirming any (0 when the \
         journal is empty or confirms flow).",
    ),
    Metric::new(
        "vmpipe_jobs_journaled_total",
        Kind::Counter,
        "Jobs that waited in the local journal for RabbitMQ, by reason: disconnected or \
         degraded (when stored), timeout (no confirm within the publish timeout). One per \
         voicemail stored.",
    )
    .with(&[
        &[("reason", "disconnected")],
        &[("reason", "timeout")],
        &[("reason", "degraded")],
    ]),
    Metric::new(
        "vmpipe_publish_late_confirms_total",
        Kind::Counter,
        "Jobs whose confirm came after the publish timeout (counted in \
         vmpipe_publish_failures_total when it passed).",
    ),
    Metric::new(
        "vmpipe_publisher_degraded",
        Kind::Gauge,
        "1 while RabbitMQ is connected but not confirming in time \
         (VMPIPE_PUBLISH_DEGRADED_AFTER timeouts in a row): jobs wait in the journal, uploads \
         are still answered.",
    ),
    Metric::new(
        "vmpipe_journal_bad_entries_total",
        Kind::Counter,
        "Journal entries that could not be read back, moved to journal/bad/.",
    ),
    Metric::new(
        "vmpipe_documents_dropped_total",
        Kind::Counter,
        "KAZOO documents dropped from uploads (too_large, not_json); their voicemails were \
         stored without them.",
    )
    .with(&[&[("reason", "too_large")], &[("reason", "not_json")]]),
    Metric::new(
        "vmpipe_head_timeouts_total",
        Kind::Counter,
        "Connections closed because a request head was not complete within 5 s.",
    ),
    Metric::new(
        "vmpipe_fetches_total",
        Kind::Counter,
        "Fetch requests (GET/HEAD) by outcome: found or not_found.",
    )
    .with(&[&[("outcome", "found")], &[("outcome", "not_found")]]),
];

/// The outcomes of `vmpipe_hook_runs_total`, for each hook.
pub const HOOK_OUTCOMES: &[&str] = &["done", "retry", "failed"];

/// The worker's metrics.
pub const WORKER: &[Metric] = &[
    Metric::new(
        "vmpipe_jobs_total",
        Kind::Counter,
        "Deliveries of jobs settled, by outcome: indexed (acked), retried, requeued (shutdown), \
         dead_lettered, abandoned (its channel was gone before it could be settled: RabbitMQ \
         delivers it again). Counts deliveries: a job delivered again counts again.",
    )
    .with(&[
        &[("outcome", "indexed")],
        &[("outcome", "retried")],
        &[("outcome", "requeued")],
        &[("outcome", "dead_lettered")],
        &[("outcome", "abandoned")],
    ]),
    Metric::new(
        "vmpipe_voicemails_indexed_total",
        Kind::Counter,
        "Voicemails indexed for the first time (new rows). Counts voicemails: a job delivered \
         again, or a newer upload of the same key, updates its row and does not count.",
    ),
    Metric::new(
        "vmpipe_index_duration_seconds",
        Kind::Histogram(SECONDS),
        "Seconds one delivery took to be indexed: reading, probe and upsert.",
    ),
    Metric::new(
        "vmpipe_index_batch_rows",
        Kind::Histogram(ROWS),
        "Rows per batched upsert statement.",
    ),
    Metric::new(
        "vmpipe_probe_duration_seconds",
        Kind::Histogram(SECONDS),
        "Seconds the duration probe of one voicemail took.",
    ),
    Metric::new(
        "vmpipe_job_lag_seconds",
        Kind::Histogram(LONG_SECONDS),
        "Seconds from the upload (received_at) to its row being written: the queue's lag. \
         Recorded per delivery.",
    ),
    Metric::new(
        "vmpipe_hook_runs_total",
        Kind::Counter,
        "Hook attempts by hook and outcome: done, retry (failed, will be retried), failed \
         (gave up). Counts attempts: a retried run counts each time.",
    )
    .labelled_at_run_time(),
    Metric::new(
        "vmpipe_hook_run_seconds",
        Kind::Histogram(LONG_SECONDS),
        "Seconds one hook attempt took, audio decoding included.",
    )
    .labelled_at_run_time(),
    Metric::new(
        "vmpipe_event_deliveries_total",
        Kind::Counter,
        "Event delivery attempts by sink and outcome: delivered, retry (failed, will be \
         retried), failed (gave up). Counts attempts: a retried delivery counts each time.",
    )
    .labelled_at_run_time(),
    Metric::new(
        "vmpipe_event_delivery_seconds",
        Kind::Histogram(SECONDS),
        "Seconds one event delivery attempt took (a publish's confirm, a webhook's answer, an \
         SMTP session), by sink.",
    )
    .labelled_at_run_time(),
    Metric::new(
        "vmpipe_event_lag_seconds",
        Kind::Histogram(LONG_SECONDS),
        "Seconds from an event's writing (occurred_at) to its delivery, by sink: how far \
         behind a sink is.",
    )
    .labelled_at_run_time(),
    Metric::new(
        "vmpipe_whisper_engine_starts_total",
        Kind::Counter,
        "Starts of the Whisper engine (VMPIPE_TRANSCRIBER=whisper): 1 per worker process, plus \
         one per restart after a crash or a transcription cut short.",
    ),
    Metric::new(
        "vmpipe_whisper_model_load_seconds",
        Kind::Gauge,
        "Seconds the Whisper engine's last start took to load its model.",
    ),
    Metric::new(
        "vmpipe_whisper_engine_rss_bytes",
        Kind::Gauge,
        "Resident memory of the Whisper engine process, as it last reported it.",
    ),
    Metric::new(
        "vmpipe_whisper_audio_seconds",
        Kind::Histogram(LONG_SECONDS),
        "Seconds of audio in each voicemail the Whisper engine transcribed. Its _sum divided \
         by vmpipe_whisper_transcribe_seconds_sum: the real-time factor.",
    ),
    Metric::new(
        "vmpipe_whisper_transcribe_seconds",
        Kind::Histogram(LONG_SECONDS),
        "Seconds the Whisper engine took to transcribe each voicemail (decoding by the worker \
         not included).",
    ),
];

const API_REQUEST_SERIES: &[Labels] = &[
    &[("route", "list"), ("status", "2xx")],
    &[("route", "list"), ("status", "3xx")],
    &[("route", "list"), ("status", "4xx")],
    &[("route", "list"), ("status", "5xx")],
    &[("route", "voicemail"), ("status", "2xx")],
    &[("route", "voicemail"), ("status", "3xx")],
    &[("route", "voicemail"), ("status", "4xx")],
    &[("route", "voicemail"), ("status", "5xx")],
    &[("route", "audio"), ("status", "2xx")],
    &[("route", "audio"), ("status", "3xx")],
    &[("route", "audio"), ("status", "4xx")],
    &[("route", "audio"), ("status", "5xx")],
    &[("route", "other"), ("status", "2xx")],
    &[("route", "other"), ("status", "3xx")],
    &[("route", "other"), ("status", "4xx")],
    &[("route", "other"), ("status", "5xx")],
];

/// The api's metrics.
pub const API: &[Metric] = &[
    Metric::new(
        "vmpipe_api_requests_total",
        Kind::Counter,
        "Requests to the api by route (list, voicemail, audio; other: the inbox page, the \
         OpenAPI document, unknown paths) and status class. /healthz, /readyz and /metrics \
         are not counted.",
    )
    .with(API_REQUEST_SERIES),
    Metric::new(
        "vmpipe_api_request_duration_seconds",
        Kind::Histogram(SECONDS),
        "Seconds from the start of an api request to its answer's head (an audio body streams \
         on after it).",
    )
    .with(&[
        &[("route", "list")],
        &[("route", "voicemail")],
        &[("route", "audio")],
        &[("route", "other")],
    ]),
];

/// Installs the recorder on first use and returns the handle that renders it.
pub fn handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let mut builder = PrometheusBuilder::new();
            for metric in INGEST.iter().chain(WORKER).chain(API) {
                if let Kind::Histogram(buckets) = metric.kind {
                    builder = builder
                        .set_buckets_for_metric(Matcher::Full(metric.name.to_owned()), buckets)
                        .expect("static buckets are valid");
                }
            }
            builder
                // A histogram no list declares is still a histogram (not a summary).
                .set_buckets(SECONDS)
                .expect("static buckets are valid")
                .install_recorder()
                .expect("no other metrics recorder is installed")
        })
        .clone()
}

/// Installs the recorder and exports `metrics` from the start: HELP text, and every declared
/// series at 0. Returns the handle that renders them.
pub fn register(metrics: &[Metric]) -> PrometheusHandle {
    let handle = handle();
    for metric in metrics {
        describe(metric);
        if metric.series.is_empty() && !metric.run_time_labels {
            zero(metric, Vec::new());
        }
        for labels in metric.series {
            let labels = labels
                .iter()
                .map(|&(key, value)| metrics::Label::new(key, value))
                .collect();
            zero(metric, labels);
        }
    }
    handle
}

/// Exports the series of `name` with `labels` at 0 (label values known at run time, such as
/// a hook's name). Does nothing for a name no list declares.
pub fn register_series(name: &str, labels: &[(&'static str, String)]) {
    let Some(metric) = INGEST
        .iter()
        .chain(WORKER)
        .chain(API)
        .find(|m| m.name == name)
    else {
        return;
    };
    let labels = labels
        .iter()
        .map(|(key, value)| metrics::Label::new(*key, value.clone()))
        .collect();
    zero(metric, labels);
}

fn describe(metric: &Metric) {
    match metric.kind {
        Kind::Counter => metrics::describe_counter!(metric.name, metric.help),
        Kind::Gauge => metrics::describe_gauge!(metric.name, metric.help),
        Kind::Histogram(_) => metrics::describe_histogram!(metric.name, metric.help),
    }
}

/// Registers the series (an increment by 0 leaves a value that is already there alone).
fn zero(metric: &Metric, labels: Vec<metrics::Label>) {
    let name = metric.name;
    match metric.kind {
        Kind::Counter => metrics::counter!(name, labels).increment(0),
        Kind::Gauge => metrics::gauge!(name, labels).increment(0.0),
        Kind::Histogram(_) => drop(metrics::histogram!(name, labels)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_declared_once_with_help_and_sorted_buckets() {
        let all: Vec<&Metric> = INGEST.iter().chain(WORKER).collect();
        for (i, metric) in all.iter().enumerate() {
            assert!(metric.name.starts_with("vmpipe_"), "{}", metric.name);
            assert!(!metric.help.is_empty(), "{}", metric.name);
            assert!(
                all[i + 1..].iter().all(|other| other.name != metric.name),
                "{} declared twice",
                metric.name
            );
            if let Kind::Counter = metric.kind {
                assert!(metric.name.ends_with("_total"), "{}", metric.name);
            }
            if let Kind::Histogram(buckets) = metric.kind {
                assert!(buckets.windows(2).all(|w| w[0] < w[1]), "{}", metric.name);
            }
        }
    }
}
