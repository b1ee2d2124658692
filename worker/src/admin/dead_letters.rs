//! `worker dead-letters`: lists the dead-lettered jobs (all, or those matching a filter)
//! without taking them off their queue, or drops the matching ones.
//!
//! Both take every message of `{queue}.dead` without acking it. Dropping acks the matching
//! ones; closing the channel then hands every other one back, and RabbitMQ puts a message
//! handed back at its former place: the ones kept stay in their order.

use lapin::message::BasicGetMessage;
use lapin::options::{BasicAckOptions, BasicGetOptions};
use serde::Serialize;
use tracing::info;
use vmpipe_common::{Settings, VoicemailJob, amqp};

use super::open_channel;
use crate::WorkerError;

/// One dead-lettered job, as `worker dead-letters` lists it.
#[derive(Debug, Serialize)]
pub struct DeadLetter {
    pub job_id: Option<String>,
    pub storage_key: Option<String>,
    pub reason: Option<String>,
    pub failed_at: Option<String>,
}

/// Which dead letters a command is about: those matching every filter given (all when none).
#[derive(Debug, Clone, Default)]
pub struct DeadLetterFilter {
    /// Text the reason (the `x-vmpipe-error` header) contains.
    pub error: Option<String>,
    /// What the job's storage key starts with.
    pub key: Option<String>,
}

impl DeadLetterFilter {
    pub fn is_empty(&self) -> bool {
        self.error.is_none() && self.key.is_none()
    }

    fn matches(&self, dead: &DeadLetter) -> bool {
        let error = self.error.as_deref().is_none_or(|text| {
            dead.reason
                .as_deref()
                .is_some_and(|reason| reason.contains(text))
        });
        let key = self.key.as_deref().is_none_or(|prefix| {
            dead.storage_key
                .as_deref()
                .is_some_and(|key| key.starts_with(prefix))
        });
        error && key
    }
}

/// What `worker dead-letters --drop` did.
#[derive(Debug, Serialize)]
pub struct Dropped {
    pub dropped: u64,
    /// Dead letters left in the queue (not matching).
    pub kept: u64,
}

/// Lists the jobs in `{queue}.dead` that match `filter`, without taking them off it.
pub async fn dead_letters(
    settings: &Settings,
    filter: &DeadLetterFilter,
) -> Result<Vec<DeadLetter>, WorkerError> {
    let (connection, channel) = open_channel(settings).await?;
    let held = take_all(&channel, settings).await;
    let listed = held.map(|held| {
        held.iter()
            .map(describe)
            .filter(|dead| filter.matches(dead))
            .collect()
    });
    // Closing the channel hands every unacked message back to the dead-letter queue.
    let _ = channel.close(200, "listed".into()).await;
    let _ = connection.close(200, "listed".into()).await;
    listed
}

/// Removes the jobs in `{queue}.dead` that match `filter`; the others stay, in their order.
pub async fn drop_dead_letters(
    settings: &Settings,
    filter: &DeadLetterFilter,
) -> Result<Dropped, WorkerError> {
    let (connection, channel) = open_channel(settings).await?;
    let result = async {
        let held = take_all(&channel, settings).await?;
        let mut report = Dropped {
            dropped: 0,
            kept: 0,
        };
        for message in &held {
            let dead = describe(message);
            if filter.matches(&dead) {
                message.delivery.ack(BasicAckOptions::default()).await?;
                info!(
                    job_id = dead.job_id.as_deref().unwrap_or(""),
                    storage_key = dead.storage_key.as_deref().unwrap_or(""),
                    reason = dead.reason.as_deref().unwrap_or(""),
                    "dead letter dropped"
                );
                report.dropped += 1;
            } else {
                report.kept += 1;
            }
        }
        Ok(report)
    }
    .await;
    // The acks are confirmed by the close; the unacked ones go back.
    let _ = channel.close(200, "dropped".into()).await;
    let _ = connection.close(200, "dropped".into()).await;
    result
}

/// Every message now in `{queue}.dead`, taken without acking.
async fn take_all(
    channel: &amqp::ConfirmChannel,
    settings: &Settings,
) -> Result<Vec<BasicGetMessage>, WorkerError> {
    let dead = amqp::dead_letter_queue(&settings.queue);
    let mut held = Vec::new();
    while let Some(message) = channel
        .basic_get(dead.as_str().into(), BasicGetOptions::default())
        .await?
    {
        held.push(message);
    }
    Ok(held)
}

fn describe(message: &BasicGetMessage) -> DeadLetter {
    let properties = &message.delivery.properties;
    DeadLetter {
        job_id: properties.message_id().as_ref().map(|id| id.to_string()),
        storage_key: VoicemailJob::from_json(&message.delivery.data)
            .ok()
            .map(|job| job.storage_key),
        reason: amqp::header_text(properties, amqp::ERROR_HEADER),
        failed_at: amqp::header_text(properties, amqp::FAILED_AT_HEADER),
    }
}
