//! `worker dead-letters`: lists the dead-lettered jobs without taking them off their queue.

use lapin::options::BasicGetOptions;
use serde::Serialize;
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

/// Lists the jobs in `{queue}.dead` without taking them off it.
pub async fn dead_letters(settings: &Settings) -> Result<Vec<DeadLetter>, WorkerError> {
    let (connection, channel) = open_channel(settings).await?;
    let dead = amqp::dead_letter_queue(&settings.queue);
    let mut held = Vec::new();
    while let Some(message) = channel
        .basic_get(dead.as_str().into(), BasicGetOptions::default())
        .await?
    {
        held.push(message);
    }
    let listed = held
        .iter()
        .map(|m| DeadLetter {
            job_id: m
                .delivery
                .properties
                .message_id()
                .as_ref()
                .map(|id| id.to_string()),
            storage_key: VoicemailJob::from_json(&m.delivery.data)
                .ok()
                .map(|job| job.storage_key),
            reason: amqp::header_text(&m.delivery.properties, amqp::ERROR_HEADER),
            failed_at: amqp::header_text(&m.delivery.properties, amqp::FAILED_AT_HEADER),
        })
        .collect();
    // Closing the channel hands every unacked message back to the dead-letter queue.
    let _ = channel.close(200, "listed".into()).await;
    let _ = connection.close(200, "listed".into()).await;
    Ok(listed)
}
