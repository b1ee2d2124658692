//! Events: what happened to voicemails (`voicemail.indexed`, `.updated`, `.transcribed`,
//! `.transcription_failed`, `.deleted`), told to the sinks of the `[[notify]]` tables.
//!
//! The statements that change a voicemail write its event to the `events` table in the same
//! commit (the outbox: `index::db`, the hook runner's queue, `admin::prune`). The
//! [`Dispatcher`] here delivers them, at least once, in each voicemail's order per sink:
//! `outbox` (the SQL) → `dispatch` (a loop per sink) → [`sink`] (RabbitMQ, webhooks, e-mail).

mod dispatch;
mod event;
pub(crate) mod outbox;
pub mod sink;

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use vmpipe_common::settings::NotifySettings;

pub(crate) use event::StoredEvent;
pub use event::{Event, SCHEMA_VERSION};
pub use sink::{DeliveryError, Sink};

use crate::hooks::runner::WorkerIdentity;

/// How often the outbox is looked at without being woken (events written by other workers and
/// by admin commands, retries coming due).
const POLL: Duration = Duration::from_secs(1);
/// How often delivered events older than the retention are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// Delivers the outbox's events to the configured sinks, until shutdown.
pub struct Dispatcher {
    pool: PgPool,
    sinks: Vec<(NotifySettings, Arc<dyn Sink>)>,
    public_url: Option<String>,
    retention: Duration,
    identity: WorkerIdentity,
    wake: Arc<Notify>,
}

impl Dispatcher {
    pub fn new(
        pool: PgPool,
        sinks: Vec<(NotifySettings, Arc<dyn Sink>)>,
        public_url: Option<String>,
        retention: Duration,
        identity: WorkerIdentity,
    ) -> Self {
        // Every sink's series exported (at 0) from the start.
        for (sink, _) in &sinks {
            register_metrics(&sink.name);
        }
        Self {
            pool,
            sinks,
            public_url,
            retention,
            identity,
            wake: Arc::default(),
        }
    }

    /// Notified by whoever wrote events in this process (indexing, the hook runner): the
    /// dispatcher looks at once instead of at its next poll.
    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Fans new events out to the sinks and delivers them until `shutdown`; deliveries in
    /// progress get a few seconds to finish, the rest are handed back.
    pub async fn run(self, shutdown: CancellationToken) {
        match dispatch::with_retries(&shutdown, || {
            outbox::hand_back_previous(&self.pool, &self.identity)
        })
        .await
        {
            Some(0) | None => {}
            Some(handed) => {
                info!(
                    deliveries = handed,
                    "handed back the deliveries a previous run of this worker left"
                )
            }
        }
        let settings: Vec<NotifySettings> = self.sinks.iter().map(|(s, _)| s.clone()).collect();
        // The sinks this worker runs, told before it hands out any event (so that its fan-out
        // makes their deliveries), and again at each pruning round.
        self.register(&settings, &shutdown).await;
        let sink_wakers: Vec<Arc<Notify>> = self.sinks.iter().map(|_| Arc::default()).collect();
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(dispatch::fan_out_loop(
            self.pool.clone(),
            self.wake.clone(),
            sink_wakers.clone(),
            shutdown.clone(),
        ));
        for ((settings, sink), wake) in self.sinks.into_iter().zip(sink_wakers) {
            tasks.spawn(
                dispatch::SinkLoop {
                    pool: self.pool.clone(),
                    settings,
                    sink,
                    public_url: self.public_url.clone(),
                    identity: self.identity.clone(),
                    wake,
                }
                .run(shutdown.clone()),
            );
        }
        let pool = self.pool.clone();
        let retention = self.retention;
        let stop = shutdown.clone();
        let identity = self.identity.clone();
        tasks.spawn(async move {
            loop {
                match outbox::prune(&pool, retention, &stop).await {
                    Ok(0) => {}
                    Ok(pruned) => info!(
                        events = pruned,
                        "pruned settled events past their retention"
                    ),
                    Err(e) => warn!(error = %e, "cannot prune the events"),
                }
                tokio::select! {
                    _ = tokio::time::sleep(PRUNE_EVERY) => {}
                    _ = stop.cancelled() => return,
                }
                // Still running these sinks (registered at the start, above).
                if let Err(e) = outbox::register_sinks(&pool, &settings, &identity).await {
                    warn!(error = %e, "cannot record this worker's event sinks");
                }
            }
        });
        while tasks.join_next().await.is_some() {}
    }

    /// Records this worker's sinks in `event_sinks`, retrying while the database is away, and
    /// warns of a sink another worker runs with other filters (the last one told wins).
    async fn register(&self, sinks: &[NotifySettings], shutdown: &CancellationToken) {
        let differing = dispatch::with_retries(shutdown, || {
            outbox::register_sinks(&self.pool, sinks, &self.identity)
        })
        .await
        .unwrap_or_default();
        for sink in differing {
            warn!(sink = %sink, "another worker runs this event sink with other settings: every worker should have the same [[notify]] tables");
        }
    }
}

/// Every series of a sink's metrics, at 0 from the start.
fn register_metrics(sink: &str) {
    let label = || ("sink", sink.to_owned());
    for outcome in ["delivered", "retry", "failed"] {
        vmpipe_common::metrics::register_series(
            "vmpipe_event_deliveries_total",
            &[label(), ("outcome", outcome.to_owned())],
        );
    }
    vmpipe_common::metrics::register_series("vmpipe_event_delivery_seconds", &[label()]);
    vmpipe_common::metrics::register_series("vmpipe_event_lag_seconds", &[label()]);
}
