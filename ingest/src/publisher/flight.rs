//! One publish, in a task of its own that outlives whoever waits for it in time (see
//! [`super::confirms`]).

use std::sync::Arc;

use lapin::BasicProperties;
use tokio::task::JoinHandle;
use tracing::{debug, warn};
use vmpipe_common::amqp::{PublishError, publish_confirmed};

use super::confirms::{Flight, Settled};
use super::telemetry::LATE_CONFIRMS_TOTAL;
use super::{Link, Publisher};
use crate::journal::Entry;

/// Why a publish did not go through.
#[derive(Debug, thiserror::Error)]
pub(super) enum PublishFailure {
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error("publish task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl Publisher {
    /// Publishes `payload` on `link` in a task of its own, which outlives any wait for it: a
    /// confirm that comes after the waiter has let go removes `entry` from the journal.
    pub(super) fn launch(
        &self,
        link: &Link,
        entry: Entry,
        payload: Arc<Vec<u8>>,
        properties: BasicProperties,
    ) -> (Flight, JoinHandle<Result<(), PublishError>>) {
        let flight = self.inner.confirms.begin(entry, link.generation);
        let this = self.clone();
        let channel = link.channel.clone();
        let task_flight = flight.clone();
        let task = tokio::spawn(async move {
            let result = publish_confirmed(&channel, &this.inner.queue, &payload, properties).await;
            match this.inner.confirms.settle(&task_flight, result.is_ok()) {
                Settled::LateAck => this.late_ack(task_flight.entry().clone()).await,
                Settled::LateFailure => {
                    debug!(entry = %task_flight.entry().path.display(),
                        "late publish failure; the job stays journaled");
                }
                Settled::ToWaiter | Settled::Forgotten => {}
            }
            result
        });
        (flight, task)
    }

    /// A journaled job's publish was confirmed after its waiter let go: its entry goes, so the
    /// drain does not publish it again.
    pub(super) async fn late_ack(&self, entry: Entry) {
        metrics::counter!(LATE_CONFIRMS_TOTAL).increment(1);
        debug!(entry = %entry.path.display(), "late confirm; the journal entry is removed");
        if let Err(e) = self.inner.journal.remove(vec![entry]).await {
            // The drain publishes it once more: a repeat, which the worker absorbs.
            warn!(error = %e, "could not remove a journal entry confirmed late");
        }
    }
}

/// A publish task's outcome; one that panicked or was cancelled is a failed publish.
pub(super) fn joined(
    outcome: Result<Result<(), PublishError>, tokio::task::JoinError>,
) -> Result<(), PublishFailure> {
    Ok(outcome??)
}
