//! `worker replay-dead`: puts the dead-lettered jobs back on the queue, after a fix.

use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use tracing::info;
use vmpipe_common::{Settings, amqp};

use super::open_channel;
use crate::WorkerError;

/// Moves the jobs now in `{queue}.dead` back to the queue (after a fix), once each.
pub async fn replay_dead(settings: &Settings) -> Result<u64, WorkerError> {
    let (connection, channel) = open_channel(settings).await?;
    let dead = amqp::dead_letter_queue(&settings.queue);
    // Only what is there now: a job that fails again must not loop through here forever.
    let waiting = channel
        .queue_declare(
            dead.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?
        .message_count();
    let mut replayed = 0u64;
    while replayed < u64::from(waiting) {
        let Some(message) = channel
            .basic_get(dead.as_str().into(), BasicGetOptions::default())
            .await?
        else {
            break;
        };
        let delivery = &message.delivery;
        let mut properties = amqp::message_properties();
        if let Some(id) = delivery.properties.message_id() {
            properties = properties.with_message_id(id.clone());
        }
        if let Some(id) = delivery.properties.correlation_id() {
            properties = properties.with_correlation_id(id.clone());
        }
        amqp::publish_confirmed(&channel, &settings.queue, &delivery.data, properties).await?;
        delivery.ack(BasicAckOptions::default()).await?;
        replayed += 1;
    }
    let _ = connection.close(200, "replay done".into()).await;
    info!(replayed, "dead-lettered jobs replayed");
    Ok(replayed)
}
